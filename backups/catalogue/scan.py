"""Walking the backup root: which folders exist, their change signatures, their files and sizes.

Pure (no Django). Iterative walks holding one descriptor at a time; symlinks and special files are never
followed or listed."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backups.catalogue.paths import (
    CatalogueError,
    Gone,
    is_gone,
    is_valid_id,
    not_found,
    open_dir,
    resolve,
)

# The script names folders with `date +%Y%m%d_%H%M%S` in the machine's local time zone.
_NAME_TIME_PATTERN = re.compile(r"^backup-(\d{8}_\d{6})\Z")


@dataclass(frozen=True)
class FolderStat:
    name: str
    mtime_ns: int
    signature: str


@dataclass(frozen=True)
class FileEntry:
    path: str
    size_bytes: int
    mtime: float


@dataclass(frozen=True)
class ScannedBackup:
    name: str
    created_at: datetime
    files: tuple[FileEntry, ...]
    size_bytes: int
    signature: str
    newest_mtime: float


def _list_dir(path: Path, expected: os.stat_result | None) -> list[tuple[str, os.stat_result]]:
    """(name, lstat) of every entry of one directory, read through a no-follow directory fd."""
    fd, _ = open_dir(path, expected)
    entries: list[tuple[str, os.stat_result]] = []
    try:
        # scandir(fd) stats entries relative to the fd (fstatat), never through a re-resolved path.
        with os.scandir(fd) as it:
            for entry in it:
                try:
                    entries.append((entry.name, entry.stat(follow_symlinks=False)))
                except FileNotFoundError:
                    continue  # vanished between readdir and stat
    except OSError as exc:
        if is_gone(exc):
            raise Gone() from None
        raise CatalogueError("backup not readable") from None
    finally:
        os.close(fd)
    return entries


@dataclass(frozen=True)
class _Node:
    rel: str  # posix path relative to the backup folder
    st: os.stat_result
    is_dir: bool


def walk(folder: Path, top: os.stat_result) -> list[_Node]:
    """Every real directory and regular file below `folder`, sorted by relative path.

    Iterative (a hostile, very deep tree must not hit the recursion limit) and holding one fd at a time.
    Symlinks, fifos, sockets and devices are skipped. Subdirectories that vanish or get replaced are skipped.
    """
    nodes: list[_Node] = []
    stack: list[tuple[str, os.stat_result]] = [("", top)]
    while stack:
        rel_dir, expected = stack.pop()
        try:
            entries = _list_dir(folder / rel_dir if rel_dir else folder, expected)
        except Gone:
            if not rel_dir:
                raise not_found() from None
            continue
        for name, st in entries:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if stat.S_ISDIR(st.st_mode):
                nodes.append(_Node(rel, st, True))
                stack.append((rel, st))
            elif stat.S_ISREG(st.st_mode):
                nodes.append(_Node(rel, st, False))
    nodes.sort(key=lambda n: n.rel)
    return nodes


def _signature(path: Path) -> tuple[os.stat_result, str]:
    """The folder's own stat and its cheap change signature (one scandir, no recursion).

    Adding/removing a top-level entry changes the folder's mtime; adding/removing a file in a direct
    subdirectory (configs/, system-info/) changes that subdirectory's mtime, which is hashed in. The hash
    keeps the signature short (<= 80 chars) whatever the number or length of subdirectory names.
    """
    fd, st = open_dir(path)
    parts: list[bytes] = []
    try:
        with os.scandir(fd) as it:
            for entry in it:
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    sub = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                name = os.fsencode(entry.name)
                parts.append(b"%s\0%d:%d" % (name, sub.st_mtime_ns, sub.st_ino))
    except OSError as exc:
        if is_gone(exc):
            raise Gone() from None
        raise CatalogueError("backup not readable") from None
    finally:
        os.close(fd)
    digest = hashlib.blake2b(b"\n".join(sorted(parts)), digest_size=16).hexdigest()
    return st, f"{st.st_mtime_ns}:{st.st_ino}:{digest}"


def list_folders(root: Path) -> list[FolderStat]:
    root = Path(root)
    try:
        it = os.scandir(root)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError:
        # Not "[]": a sync would take an unreadable root for an empty one and drop the whole catalogue.
        raise CatalogueError("backup root not readable") from None
    result: list[FolderStat] = []
    with it:
        for entry in it:
            # is_valid_id already rejects "latest", SERVICE_DIR, dot-names and our temporary names.
            if not is_valid_id(entry.name):
                continue
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue  # files, symlinks (even to directories), fifos, sockets
                st, signature = _signature(root / entry.name)
            except Gone:
                continue  # deleted or swapped while listing
            except (CatalogueError, OSError):
                # Unreadable folder: still list it (it exists and uses space); scan_backup will report it.
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                signature = f"{st.st_mtime_ns}:{st.st_ino}:unreadable"
            if not stat.S_ISDIR(st.st_mode):
                continue
            result.append(FolderStat(name=entry.name, mtime_ns=st.st_mtime_ns, signature=signature))
    result.sort(key=lambda f: f.name)
    return result


def _created_at(name: str, folder_mtime: float) -> datetime:
    match = _NAME_TIME_PATTERN.match(name)
    if match:
        try:
            naive = datetime.strptime(match.group(1), "%Y%m%d_%H%M%S")
            # A naive datetime's astimezone() interprets it in the machine's local zone, as `date` did.
            return naive.astimezone(UTC)
        except (ValueError, OverflowError, OSError):
            pass  # e.g. backup-20241340_000000: fall back to the folder's mtime
    try:
        return datetime.fromtimestamp(folder_mtime, tz=UTC)
    except (ValueError, OverflowError, OSError):
        # Some filesystems allow mtimes beyond datetime's range (year 1..9999); don't fail the scan.
        return datetime.fromtimestamp(0, tz=UTC)


def file_entries(nodes: list[_Node]) -> tuple[FileEntry, ...]:
    return tuple(
        FileEntry(path=n.rel, size_bytes=n.st.st_size, mtime=n.st.st_mtime) for n in nodes if not n.is_dir
    )


def scan_backup(root: Path, backup_id: str) -> ScannedBackup:
    folder = resolve(root, backup_id)
    try:
        # Signature first: if the folder changes while we walk, the stored signature is the older one and
        # the next sync notices the difference and scans again.
        top, signature = _signature(folder)
    except Gone:
        raise not_found() from None
    nodes = walk(folder, top)
    files = file_entries(nodes)
    newest = max([top.st_mtime, *(n.st.st_mtime for n in nodes)])
    return ScannedBackup(
        name=backup_id,
        created_at=_created_at(backup_id, top.st_mtime),
        files=files,
        size_bytes=sum(f.size_bytes for f in files),
        signature=signature,
        newest_mtime=newest,
    )
