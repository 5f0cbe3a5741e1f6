"""Walking the backup root: which folders exist, their change signatures, their files and sizes.

Pure (no Django). Every directory is opened relative to its parent's descriptor, never by path, so a
tree deeper than PATH_MAX is walked like any other. Symlinks and special files are never followed or
listed. What cannot be read (a folder without permission, a tree nested too deep) does not fail the
walk: it is reported in `problems`, and the rest is listed."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from backups.catalogue.paths import (
    DIR_FLAGS,
    CatalogueError,
    Gone,
    is_gone,
    is_valid_id,
    not_found,
    open_dir_at,
    open_root,
    same_inode,
)

# The script names folders with `date +%Y%m%d_%H%M%S` in the machine's local time zone.
_NAME_TIME_PATTERN = re.compile(r"^backup-(\d{8}_\d{6})\Z")

# Descriptors one walk may hold at once. A parent is closed as soon as its last subfolder is opened, so
# a straight chain of any depth holds two; only a tree that branches more than this many levels down is
# cut off (and reported), which no backup script produces.
MAX_OPEN_DIRS = 128

# A problem names a path inside the backup; a hostile tree must not make the list itself huge.
MAX_PROBLEMS = 20
_MAX_PROBLEM_PATH = 300


class FolderStat(NamedTuple):  # a tuple: one per folder of every sync
    name: str
    mtime_ns: int
    signature: str


class FileEntry(NamedTuple):  # a tuple: a walk of 10,000 folders makes 50,000 of them
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
    # Empty when the folder was read completely.
    problems: tuple[str, ...] = ()


class Node(NamedTuple):
    rel: str  # posix path relative to the backup folder
    st: os.stat_result
    is_dir: bool


@dataclass
class Walk:
    nodes: list[Node] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    def problem(self, rel: str, what: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{printable(rel or '.', _MAX_PROBLEM_PATH)}: {what}")

    def problem_list(self) -> tuple[str, ...]:
        extra = self.problem_count - len(self.problems)
        return (*self.problems, f"… and {extra} more") if extra > 0 else tuple(self.problems)


def printable(path: str, limit: int | None = None) -> str:
    """A name that is not UTF-8 (kept by the walk as surrogate escapes) shown with \\x escapes, control
    characters escaped too: problems and file lists are shown to people and stored as JSON."""
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    if limit is not None and len(text) > limit:
        return "…" + text[-(limit - 1) :]
    return text


class _ListError(CatalogueError):
    def __init__(self, message: str, *, gone: bool) -> None:
        super().__init__(message)
        self.gone = gone


def _list_fd(fd: int) -> list[tuple[str, os.stat_result]]:
    """(name, lstat) of every entry of one open directory. CatalogueError when it cannot be read."""
    try:
        # scandir(fd) stats entries relative to the fd (fstatat), never through a re-resolved path.
        with os.scandir(fd) as it:
            listed = list(it)
        try:
            return [(entry.name, entry.stat(follow_symlinks=False)) for entry in listed]
        except FileNotFoundError:
            pass  # one vanished between readdir and stat: the others, one by one (stats are cached)
        entries: list[tuple[str, os.stat_result]] = []
        for entry in listed:
            try:
                entries.append((entry.name, entry.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue
        return entries
    except OSError as exc:
        raise _ListError((exc.strerror or "not readable").lower(), gone=is_gone(exc)) from None


@dataclass
class _Frame:
    fd: int
    rel: str
    subdirs: list[tuple[str, str, os.stat_result]]


def walk(
    folder_fd: int,
    *,
    check_readable: bool = False,
    max_open: int | None = None,
    top: list[tuple[str, os.stat_result]] | None = None,
    own: bool = False,
) -> Walk:
    """Every real directory and regular file below the open folder `folder_fd`, sorted by path.

    Iterative (a hostile, very deep tree must not hit the recursion limit). Symlinks, fifos, sockets and
    devices are skipped; subdirectories that vanish or get replaced are skipped. Unreadable directories
    (and, with `check_readable`, unreadable files) are listed in `problems`. `folder_fd` stays open.
    `top` is the folder's own listing when the caller already read it (`_list_fd`): not read again.
    With `own`, the walk takes `folder_fd` over and closes it (whatever happens) instead of a copy."""
    result = Walk()
    nodes = result.nodes
    stack: list[_Frame] = []
    max_open = max_open or MAX_OPEN_DIRS
    is_dir, is_reg = stat.S_ISDIR, stat.S_ISREG

    def enter(fd: int, rel: str, entries: list[tuple[str, os.stat_result]] | None = None) -> None:
        if entries is None:
            try:
                entries = _list_fd(fd)
            except CatalogueError as error:
                result.problem(rel, f"not readable ({error})")
                entries = []
        subdirs: list[tuple[str, str, os.stat_result]] = []
        prefix = f"{rel}/" if rel else ""
        for name, st in entries:
            mode = st.st_mode
            if is_dir(mode):
                child = prefix + name
                nodes.append(Node(child, st, True))
                subdirs.append((name, child, st))
            elif is_reg(mode):
                child = prefix + name
                nodes.append(Node(child, st, False))
                if check_readable and not _readable(fd, name):
                    result.problem(child, "not readable (permission denied)")
        # Popped in name order: the walk (and what a too-deep tree loses) is the same on every run.
        subdirs.sort(reverse=True)
        stack.append(_Frame(fd, rel, subdirs))

    enter(folder_fd if own else os.dup(folder_fd), "", top)
    try:
        while stack:
            frame = stack[-1]
            if not frame.subdirs:
                os.close(frame.fd)
                stack.pop()
                continue
            name, rel, st = frame.subdirs.pop()
            last_child = not frame.subdirs
            if not last_child and len(stack) >= max_open:
                result.problem(rel, "nested too deep to be read")
                continue
            try:
                child_fd = open_dir_at(frame.fd, name, st)
            except Gone:
                continue
            except CatalogueError as error:
                result.problem(rel, f"not readable ({error})")
                continue
            if last_child:
                # Nothing more to open from the parent: let it go, so a deep chain holds two descriptors.
                os.close(frame.fd)
                stack.pop()
            enter(child_fd, rel)
    finally:
        for frame in stack:
            os.close(frame.fd)
    nodes.sort(key=_rel)
    return result


def _rel(node: Node) -> str:
    return node.rel


def _readable(dir_fd: int, name: str) -> bool:
    try:
        return os.access(name, os.R_OK, dir_fd=dir_fd, follow_symlinks=False)
    except (OSError, NotImplementedError):
        return True  # cannot tell in advance: the read itself will say


def _signature_from(st: os.stat_result, entries: list[tuple[str, os.stat_result]]) -> str:
    """A folder's cheap change signature from its fstat and its listing (`_list_fd`), one level deep.

    Adding/removing a top-level entry changes the folder's mtime; adding/removing a file in a direct
    subdirectory (configs/, system-info/) changes that subdirectory's mtime, which is hashed in. The hash
    keeps the signature short (<= 80 chars) whatever the number or length of subdirectory names."""
    parts = [
        b"%s\0%d:%d" % (os.fsencode(name), sub.st_mtime_ns, sub.st_ino)
        for name, sub in entries
        if stat.S_ISDIR(sub.st_mode)
    ]
    digest = hashlib.blake2b(b"\n".join(sorted(parts)), digest_size=16).hexdigest()
    return f"{st.st_mtime_ns}:{st.st_ino}:{digest}"


def _list_top(fd: int) -> tuple[os.stat_result, list[tuple[str, os.stat_result]]]:
    """An open backup folder's fstat and listing: Gone when it vanished meanwhile,
    CatalogueError("backup not readable") when it cannot be read."""
    try:
        st = os.fstat(fd)
    except OSError:
        raise CatalogueError("backup not readable") from None
    try:
        entries = _list_fd(fd)
    except _ListError as error:
        if error.gone:
            raise Gone() from None
        raise CatalogueError("backup not readable") from None
    return st, entries


def _unreadable_signature(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns}:{st.st_ino}:unreadable"


def list_names(root: Path) -> dict[str, FolderStat]:
    """The backup folders of the root from one listing of it, without opening any of them: what a
    request's freshness check needs to see folders added and removed. Their signatures are left for
    the full sync (`list_folders`); each FolderStat's is the folder's own stat only."""
    try:
        root_fd = open_root(Path(root))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    found: dict[str, FolderStat] = {}
    try:
        # An unreadable root raises CatalogueError, never "{}": the sync would drop the whole catalogue.
        with os.scandir(root_fd) as it:
            for entry in it:
                if not is_valid_id(entry.name):
                    continue
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    lstat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while listing
                found[entry.name] = FolderStat(entry.name, lstat.st_mtime_ns, _unreadable_signature(lstat))
    except OSError:
        raise CatalogueError("backup root not readable") from None
    finally:
        os.close(root_fd)
    return found


def list_folders(root: Path) -> list[FolderStat]:
    return list_and_scan(root)[0]


# A folder's entries are trusted to be the ones last listed only when its own timestamps were older
# than this at that listing: an entry added in the same clock tick as the listing leaves them unchanged.
RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class _Seen:
    """What the last listing of a folder found: its own lstat and its first-level subfolders."""

    ident: tuple[int, int, int, int]  # mtime_ns, ctime_ns, ino, dev
    subdirs: tuple[tuple[str, int, int], ...]  # name, mtime_ns, ino
    signature: str


# The last full listing's folders, for the root it listed: (root dev, root ino), {name: _Seen}.
_seen: tuple[tuple[int, int], dict[str, _Seen]] = ((-1, -1), {})


def forget_seen() -> None:
    """Make the next `list_and_scan` read every folder (tests, a process that wants a full re-read)."""
    global _seen
    _seen = ((-1, -1), {})


def _ident(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _still(root_fd: int, name: str, lstat: os.stat_result, seen: _Seen) -> bool:
    """True when the folder is as `seen` left it, known without listing it: its own lstat is unchanged
    (so are its entries: adding, removing or renaming one moves its mtime and ctime, utime its ctime)
    and so are its first-level subfolders, each one stat relative to the folder's descriptor."""
    if _ident(lstat) != seen.ident:
        return False
    if not seen.subdirs:
        return True
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=root_fd)
    except OSError:
        return False
    try:
        if _ident(os.fstat(fd)) != seen.ident:
            return False
        for sub, mtime_ns, ino in seen.subdirs:
            st = os.stat(sub, dir_fd=fd, follow_symlinks=False)
            if st.st_mtime_ns != mtime_ns or st.st_ino != ino or not stat.S_ISDIR(st.st_mode):
                return False
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def list_and_scan(
    root: Path, wanted: Callable[[str, str], bool] | None = None
) -> tuple[list[FolderStat], dict[str, ScannedBackup]]:
    """Every backup folder of the root with its change signature, and the walk of those `wanted(name,
    signature)` picks, made while the folder is open for its signature: the root is opened once and
    each folder once, and a folder's one listing gives both its signature and the walk's first level.

    A folder this process listed before (in an earlier call) whose own stat and first-level subfolders'
    stats are unchanged keeps the signature it had, without being listed again: no descriptor at all
    for a folder without subfolders, one for the others."""
    global _seen
    try:
        root_fd = open_root(Path(root))
    except (FileNotFoundError, NotADirectoryError):
        return [], {}
    # An unreadable root raises CatalogueError, never "[]": a sync would take it for an empty one and
    # drop the whole catalogue.
    result: list[FolderStat] = []
    scanned: dict[str, ScannedBackup] = {}
    try:
        root_st = os.fstat(root_fd)
        root_key = (root_st.st_dev, root_st.st_ino)
        previous = _seen[1] if _seen[0] == root_key else {}
        seen: dict[str, _Seen] = {}
        try:
            with os.scandir(root_fd) as it:
                candidates = [
                    (entry.name, entry.stat(follow_symlinks=False))
                    for entry in it
                    # is_valid_id already rejects "latest", SERVICE_DIR, dot-names and our temporary names.
                    if is_valid_id(entry.name) and entry.is_dir(follow_symlinks=False)
                ]
        except FileNotFoundError:
            candidates = []
        except OSError:
            raise CatalogueError("backup root not readable") from None

        def list_unreadable(name: str, lstat: os.stat_result, error: CatalogueError) -> None:
            """Still listed (it exists and uses space), with what was wrong."""
            folder = FolderStat(name, lstat.st_mtime_ns, _unreadable_signature(lstat))
            result.append(folder)
            if wanted is not None and wanted(name, folder.signature):
                scanned[name] = _unreadable(name, lstat, f"the folder is not readable ({error})")

        for name, lstat in candidates:
            before = previous.get(name)
            if (
                before is not None
                and not (wanted is not None and wanted(name, before.signature))
                and _still(root_fd, name, lstat, before)
            ):
                result.append(FolderStat(name=name, mtime_ns=lstat.st_mtime_ns, signature=before.signature))
                seen[name] = before
                continue
            listed_at = time.time_ns()
            try:
                fd = open_dir_at(root_fd, name)
            except Gone:
                continue  # deleted or swapped while listing
            except CatalogueError as error:
                list_unreadable(name, lstat, error)
                continue
            try:
                try:
                    st, entries = _list_top(fd)
                    if not same_inode(st, lstat):
                        continue  # swapped for another folder while listing
                except Gone:
                    continue
                except CatalogueError as error:
                    list_unreadable(name, lstat, error)
                    continue
                signature = _signature_from(st, entries)
                result.append(FolderStat(name=name, mtime_ns=st.st_mtime_ns, signature=signature))
                if max(st.st_mtime_ns, st.st_ctime_ns) < listed_at - RACY_NS:
                    subdirs = tuple(
                        (sub, sub_st.st_mtime_ns, sub_st.st_ino)
                        for sub, sub_st in entries
                        if stat.S_ISDIR(sub_st.st_mode)
                    )
                    seen[name] = _Seen(_ident(st), subdirs, signature)
                if wanted is not None and wanted(name, signature):
                    # Signature first, then the walk: if the folder changes meanwhile, the stored
                    # signature is the older one and the next sync walks it again.
                    walk_fd, fd = fd, -1  # the walk closes it
                    try:
                        scanned[name] = _scanned(name, st, signature, walk(walk_fd, top=entries, own=True))
                    except OSError as error:  # e.g. out of descriptors: this folder only
                        why = (error.strerror or type(error).__name__).lower()
                        scanned[name] = _unreadable(name, lstat, f"the folder could not be read ({why})")
            finally:
                if fd >= 0:
                    os.close(fd)
        _seen = (root_key, seen)
    finally:
        os.close(root_fd)
    result.sort()  # by name: names are unique, so the other fields never decide
    return result, scanned


def folder_created_at(name: str, folder_mtime: float) -> datetime:
    match = _NAME_TIME_PATTERN.match(name)
    if match:
        digits = match.group(1)  # eight and six digits: the fields of "%Y%m%d_%H%M%S" by position
        try:
            naive = datetime(
                int(digits[0:4]),
                int(digits[4:6]),
                int(digits[6:8]),
                int(digits[9:11]),
                int(digits[11:13]),
                int(digits[13:15]),
            )
            # A naive datetime's astimezone() interprets it in the machine's local zone, as `date` did.
            return naive.astimezone(UTC)
        except (ValueError, OverflowError, OSError):
            pass  # e.g. backup-20241340_000000: fall back to the folder's mtime
    try:
        return datetime.fromtimestamp(folder_mtime, tz=UTC)
    except (ValueError, OverflowError, OSError):
        # Some filesystems allow mtimes beyond datetime's range (year 1..9999); don't fail the scan.
        return datetime.fromtimestamp(0, tz=UTC)


def file_entries(nodes: list[Node]) -> tuple[FileEntry, ...]:
    return tuple(
        FileEntry(path=n.rel, size_bytes=n.st.st_size, mtime=n.st.st_mtime) for n in nodes if not n.is_dir
    )


def scan_backup(root: Path, backup_id: str) -> ScannedBackup:
    """A folder's files, sizes and signature. BackupNotFound if it is not a real folder inside the root;
    a folder that cannot be read (completely) is still returned, with what was read and its problems."""
    if not is_valid_id(backup_id):
        raise not_found()
    try:
        root_fd = open_root(Path(root))
    except (FileNotFoundError, NotADirectoryError):
        raise not_found() from None
    try:
        try:
            lstat = os.stat(backup_id, dir_fd=root_fd, follow_symlinks=False)
        except OSError:
            raise not_found() from None
        if not stat.S_ISDIR(lstat.st_mode):
            raise not_found()
        try:
            fd = open_dir_at(root_fd, backup_id, lstat)
        except Gone:
            raise not_found() from None
        except CatalogueError as error:
            return _unreadable(backup_id, lstat, f"the folder is not readable ({error})")
    finally:
        os.close(root_fd)
    try:
        # Signature first: if the folder changes while we walk, the stored signature is the older one and
        # the next sync notices the difference and scans again.
        try:
            top, entries = _list_top(fd)
        except Gone:
            raise not_found() from None
        except CatalogueError as error:
            return _unreadable(backup_id, lstat, f"the folder is not readable ({error})")
        signature = _signature_from(top, entries)
        walked = walk(fd, top=entries)
    finally:
        os.close(fd)
    return _scanned(backup_id, top, signature, walked)


def _scanned(backup_id: str, top: os.stat_result, signature: str, walked: Walk) -> ScannedBackup:
    files: list[FileEntry] = []
    size = 0
    newest = top.st_mtime
    for node in walked.nodes:  # file_entries(), their sum and the newest mtime in one pass
        st = node.st
        mtime = st.st_mtime
        if mtime > newest:
            newest = mtime
        if not node.is_dir:
            files.append(FileEntry(node.rel, st.st_size, mtime))
            size += st.st_size
    return ScannedBackup(
        name=backup_id,
        created_at=folder_created_at(backup_id, top.st_mtime),
        files=tuple(files),
        size_bytes=size,
        signature=signature,
        newest_mtime=newest,
        problems=walked.problem_list(),
    )


def _unreadable(backup_id: str, st: os.stat_result, why: str) -> ScannedBackup:
    return ScannedBackup(
        name=backup_id,
        created_at=folder_created_at(backup_id, st.st_mtime),
        files=(),
        size_bytes=0,
        signature=_unreadable_signature(st),
        newest_mtime=st.st_mtime,
        problems=(why,),
    )
