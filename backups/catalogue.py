"""Everything that touches backup folders on disk.

The backup script writes ``BACKUP_ROOT/backup-YYYYmmdd_HHMMSS/`` folders and a relative symlink
``BACKUP_ROOT/latest``. This module lists, sizes, streams (as tar) and deletes them. It is pure Python
(no Django, no ORM) so that it can be tested against real, deliberately hostile directory trees.

Safety rules applied throughout:

* A backup id is a folder *name*. It must pass :func:`is_valid_id` and ``lstat`` must say it is a real
  directory directly inside the root; anything else (symlinks, files, ``..``, absolute paths, encoded
  slashes, NULs, ...) is :class:`BackupNotFound` with a fixed message that never echoes a path.
* Symlinks are never followed below the root: directories are opened with ``O_NOFOLLOW`` and their
  identity (st_dev, st_ino) is re-checked against what the parent listing said, so a directory or file
  swapped for a symlink between listing and use is treated as vanished instead of being read.
* The root itself is taken as given (the operator may configure it as a symlink); callers should resolve
  it once with ``os.path.realpath``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import stat
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LATEST_LINK = "latest"
SERVICE_DIR = ".backup-service"

# Unanchored form, usable inside a larger regex (e.g. a Django path converter). It does not exclude
# "latest" or "..": always confirm with is_valid_id().
ID_REGEX = r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,199}"
# \Z rather than $: "$" would also match before a trailing newline ("backup-1\n").
ID_PATTERN: re.Pattern[str] = re.compile(rf"^(?!{re.escape(LATEST_LINK)}\Z)(?!.*\.\.){ID_REGEX}\Z")

# The script names folders with `date +%Y%m%d_%H%M%S` in the machine's local time zone.
_NAME_TIME_PATTERN = re.compile(r"^backup-(\d{8}_\d{6})\Z")

# Prefixes of the service's own temporary names. All start with "." so they can never be a backup id.
_DELETING_PREFIX = ".deleting-"
_LATEST_TMP_PREFIX = ".latest.tmp-"
_METADATA_TMP_MARKER = ".json.tmp-"

_MAX_METADATA_BYTES = 1 << 20
_MAX_MEMBER_PATH = 4096

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: if a fifo was swapped in place of a planned file, opening it must not hang the thread
# waiting for a writer (it has no effect on regular files).
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# errno values meaning "the thing is not (or no longer) what we expected": vanished, replaced by a
# symlink (ELOOP from O_NOFOLLOW) or by a non-directory.
_GONE_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP}

_TAR_BLOCK = 512
_TAR_END = b"\0" * (2 * _TAR_BLOCK)


class CatalogueError(Exception):
    """Something on disk prevents the operation (not readable, not a symlink where one is needed, ...)."""


class BackupNotFound(CatalogueError):
    """Unsafe or missing backup id / member path. The message never contains a path."""


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


@dataclass(frozen=True)
class TarMember:
    header: bytes
    path: Path | None
    size: int
    padding: int
    # Identity of the file seen during planning (extra fields, defaulted). The data is only sent if the
    # file opened at stream time is that same inode, so a path component swapped for a symlink cannot
    # redirect the read outside the root.
    dev: int = 0
    ino: int = 0


@dataclass(frozen=True)
class TarPlan:
    members: tuple[TarMember, ...]
    content_length: int
    files: tuple[FileEntry, ...]


class _Gone(Exception):
    """Internal: a directory vanished or was replaced while we were looking at it."""


def _not_found() -> BackupNotFound:
    return BackupNotFound("backup not found")


def _file_not_found() -> BackupNotFound:
    return BackupNotFound("file not found")


def _is_gone(exc: OSError) -> bool:
    return exc.errno in _GONE_ERRNOS


def _same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# --------------------------------------------------------------------------------------------- ids


def is_valid_id(backup_id: str) -> bool:
    return isinstance(backup_id, str) and ID_PATTERN.match(backup_id) is not None


def resolve(root: Path, backup_id: str) -> Path:
    if not is_valid_id(backup_id):
        raise _not_found()
    path = Path(root) / backup_id
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        raise _not_found() from None
    if not stat.S_ISDIR(st.st_mode):  # lstat: a symlink to a directory is S_ISLNK, refused here
        raise _not_found()
    return path


# ------------------------------------------------------------------------------------- walking


def _open_dir(path: Path, expected: os.stat_result | None = None) -> tuple[int, os.stat_result]:
    """Open a directory without following a symlink in its last component; verify its identity.

    Raises _Gone if it vanished or is not the directory `expected` describes, CatalogueError if it cannot
    be read (permissions, I/O, path too long).
    """
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        if _is_gone(exc):
            raise _Gone() from None
        raise CatalogueError("backup not readable") from None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise CatalogueError("backup not readable") from None
    if expected is not None and not _same_inode(st, expected):
        os.close(fd)
        raise _Gone()
    return fd, st


def _list_dir(path: Path, expected: os.stat_result | None) -> list[tuple[str, os.stat_result]]:
    """(name, lstat) of every entry of one directory, read through a no-follow directory fd."""
    fd, _ = _open_dir(path, expected)
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
        if _is_gone(exc):
            raise _Gone() from None
        raise CatalogueError("backup not readable") from None
    finally:
        os.close(fd)
    return entries


@dataclass(frozen=True)
class _Node:
    rel: str  # posix path relative to the backup folder
    st: os.stat_result
    is_dir: bool


def _walk(folder: Path, top: os.stat_result) -> list[_Node]:
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
        except _Gone:
            if not rel_dir:
                raise _not_found() from None
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
    fd, st = _open_dir(path)
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
        if _is_gone(exc):
            raise _Gone() from None
        raise CatalogueError("backup not readable") from None
    finally:
        os.close(fd)
    digest = hashlib.blake2b(b"\n".join(sorted(parts)), digest_size=16).hexdigest()
    return st, f"{st.st_mtime_ns}:{st.st_ino}:{digest}"


# ------------------------------------------------------------------------------------- listing


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
            except _Gone:
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


def _file_entries(nodes: list[_Node]) -> tuple[FileEntry, ...]:
    return tuple(
        FileEntry(path=n.rel, size_bytes=n.st.st_size, mtime=n.st.st_mtime) for n in nodes if not n.is_dir
    )


def scan_backup(root: Path, backup_id: str) -> ScannedBackup:
    folder = resolve(root, backup_id)
    try:
        # Signature first: if the folder changes while we walk, the stored signature is the older one and
        # the next sync notices the difference and scans again.
        top, signature = _signature(folder)
    except _Gone:
        raise _not_found() from None
    nodes = _walk(folder, top)
    files = _file_entries(nodes)
    newest = max([top.st_mtime, *(n.st.st_mtime for n in nodes)])
    return ScannedBackup(
        name=backup_id,
        created_at=_created_at(backup_id, top.st_mtime),
        files=files,
        size_bytes=sum(f.size_bytes for f in files),
        signature=signature,
        newest_mtime=newest,
    )


# -------------------------------------------------------------------------------------- latest


def read_latest(root: Path) -> str | None:
    root = Path(root)
    try:
        target = os.readlink(root / LATEST_LINK)  # EINVAL when `latest` is not a symlink
    except (OSError, ValueError):
        return None
    target = target.rstrip("/")
    if not target or ".." in target.split("/"):
        return None
    if os.path.isabs(target):
        head, name = os.path.split(target)
        allowed = {os.path.normpath(str(root)), os.path.realpath(root)}
        if os.path.normpath(head) not in allowed:
            return None
    else:
        name = os.path.normpath(target)  # "./backup-X" -> "backup-X"; "a/b" stays multi-component
        if "/" in name:
            return None
    try:
        resolve(root, name)
    except BackupNotFound:
        return None
    return name


def set_latest(root: Path, backup_id: str | None) -> None:
    root = Path(root)
    link = root / LATEST_LINK
    if backup_id is not None:
        resolve(root, backup_id)
    try:
        current = os.lstat(link)
    except FileNotFoundError:
        current = None
    if current is not None and not stat.S_ISLNK(current.st_mode):
        raise CatalogueError("'latest' exists and is not a symlink; refusing to replace it")
    if backup_id is None:
        if current is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
        return
    tmp = root / f"{_LATEST_TMP_PREFIX}{secrets.token_hex(8)}"
    os.symlink(backup_id, tmp)  # relative target, exactly like the script's `ln -s`
    try:
        # rename(2) replaces the old link atomically: readers see the old or the new target, never none.
        os.replace(tmp, link)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise CatalogueError("could not update 'latest'") from None


# -------------------------------------------------------------------------------------- delete


def _remove_tree_or_link(path: Path) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)  # fd-based on Linux (avoids_symlink_attacks): never follows links inside
    else:
        os.unlink(path)  # a symlink is removed itself, its target untouched


def delete_backup(root: Path, backup_id: str) -> None:
    root = Path(root)
    folder = resolve(root, backup_id)
    doomed = root / f"{_DELETING_PREFIX}{backup_id}-{secrets.token_hex(6)}"
    try:
        # rename(2) never follows symlinks: even if the folder were swapped for a link after resolve(),
        # only the link moves. From here on the backup is gone from every listing.
        os.rename(folder, doomed)
    except FileNotFoundError:
        raise _not_found() from None
    except OSError:
        raise CatalogueError("could not delete backup") from None
    _remove_metadata(root, backup_id)
    try:
        _remove_tree_or_link(doomed)
    except OSError:
        # Logically deleted already; purge_leftovers() retries the physical removal.
        logger.warning("incomplete delete of backup %s; leftover will be purged later", backup_id)


def purge_leftovers(root: Path) -> list[str]:
    """Remove what an interrupted operation may leave directly in root (and in SERVICE_DIR).

    `.deleting-*` (trees are removed with rmtree, symlinks only unlinked), `.latest.tmp-*` symlinks, and
    metadata temp files. Returns the names removed (SERVICE_DIR ones as "SERVICE_DIR/name").
    """
    root = Path(root)
    removed: list[str] = []
    try:
        with os.scandir(root) as it:
            names = [e.name for e in it]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError:
        raise CatalogueError("backup root not readable") from None
    for name in sorted(names):
        path = root / name
        try:
            if name.startswith(_DELETING_PREFIX):
                _remove_tree_or_link(path)
            elif name.startswith(_LATEST_TMP_PREFIX):
                if not stat.S_ISLNK(os.lstat(path).st_mode):
                    continue  # not something we created
                os.unlink(path)
            else:
                continue
        except FileNotFoundError:
            continue
        except OSError:
            logger.warning("could not purge leftover %s", name)
            continue
        removed.append(name)
    try:
        fd = _service_dir_fd(root, create=False)
    except CatalogueError:
        return removed
    if fd is None:
        return removed
    try:
        with os.scandir(fd) as it:
            tmp_names = [e.name for e in it if e.name.startswith(".") and _METADATA_TMP_MARKER in e.name]
        for name in sorted(tmp_names):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd)
                removed.append(f"{SERVICE_DIR}/{name}")
    finally:
        os.close(fd)
    return removed


# ------------------------------------------------------------------------------------ metadata


def _service_dir_fd(root: Path, *, create: bool) -> int | None:
    """fd of root/SERVICE_DIR opened without following symlinks (None if missing and not created).

    All metadata file operations are relative to this fd, so a SERVICE_DIR replaced by a symlink can
    never make us read, write or unlink outside the root.
    """
    path = Path(root) / SERVICE_DIR
    if create:
        try:
            os.mkdir(path, 0o750)
        except FileExistsError:
            pass
        except OSError:
            raise CatalogueError("cannot create service directory") from None
    try:
        return os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        if create:
            raise CatalogueError("cannot open service directory") from None
        return None
    except OSError:
        raise CatalogueError("service directory is not a real directory") from None


def _remove_metadata(root: Path, backup_id: str) -> None:
    try:
        fd = _service_dir_fd(root, create=False)
    except CatalogueError:
        return
    if fd is None:
        return
    try:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(f"{backup_id}.json", dir_fd=fd)
    finally:
        os.close(fd)


def write_metadata(root: Path, backup_id: str, data: Mapping[str, Any]) -> None:
    """Values that JSON cannot encode (datetime, UUID, Decimal, ...) are stored as str()."""
    if not is_valid_id(backup_id):
        raise _not_found()
    payload = json.dumps(dict(data), default=str, sort_keys=True).encode("utf-8")
    fd = _service_dir_fd(root, create=True)
    assert fd is not None
    final = f"{backup_id}.json"
    tmp = f".{backup_id}{_METADATA_TMP_MARKER}{secrets.token_hex(6)}"
    try:
        try:
            out = os.open(tmp, _NEW_FILE_FLAGS, 0o640, dir_fd=fd)
        except OSError:
            raise CatalogueError("cannot write metadata") from None
        try:
            with open(out, "wb", closefd=True) as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            # Atomic: readers see the previous JSON or the new one, never a partial file.
            os.replace(tmp, final, src_dir_fd=fd, dst_dir_fd=fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise CatalogueError("cannot write metadata") from None
    finally:
        os.close(fd)


def read_metadata(root: Path, backup_id: str) -> dict[str, Any]:
    if not is_valid_id(backup_id):
        raise _not_found()
    try:
        fd = _service_dir_fd(root, create=False)
    except CatalogueError:
        return {}
    if fd is None:
        return {}
    try:
        try:
            f = os.open(f"{backup_id}.json", _FILE_FLAGS, dir_fd=fd)
        except OSError:
            return {}
        with open(f, "rb", closefd=True) as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_METADATA_BYTES:
                return {}
            raw = fh.read(_MAX_METADATA_BYTES + 1)
        value = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return {}
    finally:
        os.close(fd)
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------------------------------- disk


def disk_usage(root: Path) -> tuple[int, int]:
    """(total_bytes, free_bytes); free is what an unprivileged user may still use (f_bavail)."""
    path = Path(os.path.abspath(root))
    while True:
        try:
            vfs = os.statvfs(path)
            break
        except (FileNotFoundError, NotADirectoryError):
            if path.parent == path:
                raise CatalogueError("no existing parent for backup root") from None
            path = path.parent
    return vfs.f_blocks * vfs.f_frsize, vfs.f_bavail * vfs.f_frsize


# ----------------------------------------------------------------------------------------- tar


def _tar_header(name: str, st: os.stat_result, *, is_dir: bool) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    # Plain permission bits only: no setuid/setgid/sticky in files users will extract.
    info.mode = stat.S_IMODE(st.st_mode) & 0o777
    info.mtime = int(st.st_mtime)
    info.size = 0 if is_dir else st.st_size
    # Don't leak local users/groups.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    # PAX stores long names / big sizes / non-ASCII names in an extended header; names that are not valid
    # UTF-8 (surrogate-escaped by os.fsdecode) are written raw with hdrcharset=BINARY.
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def _padding(size: int) -> int:
    return -size % _TAR_BLOCK


def plan_tar(root: Path, backup_id: str) -> TarPlan:
    """Also checks every file is readable (os.access), so a permission problem is a CatalogueError here,
    before any byte is sent, instead of a broken stream."""
    folder = resolve(root, backup_id)
    try:
        top = _dir_stat(folder)
    except _Gone:
        raise _not_found() from None
    nodes = _walk(folder, top)
    members: list[TarMember] = [TarMember(_tar_header(f"{backup_id}/", top, is_dir=True), None, 0, 0)]
    for node in nodes:
        name = f"{backup_id}/{node.rel}"
        if node.is_dir:
            members.append(TarMember(_tar_header(name, node.st, is_dir=True), None, 0, 0))
            continue
        path = folder / node.rel
        if not os.access(path, os.R_OK):
            raise CatalogueError("backup not readable")
        size = node.st.st_size
        members.append(
            TarMember(
                header=_tar_header(name, node.st, is_dir=False),
                path=path,
                size=size,
                padding=_padding(size),
                dev=node.st.st_dev,
                ino=node.st.st_ino,
            )
        )
    length = sum(len(m.header) + m.size + m.padding for m in members) + len(_TAR_END)
    return TarPlan(members=tuple(members), content_length=length, files=_file_entries(nodes))


def _dir_stat(path: Path) -> os.stat_result:
    fd, st = _open_dir(path)
    os.close(fd)
    return st


def _nofollow_opener(path: str, flags: int) -> int:
    return os.open(path, flags | _FILE_FLAGS)


def _open_regular(path: Path, dev: int, ino: int) -> io.FileIO | None:
    """Open `path` for reading if it is still the regular file (dev, ino); None if it vanished/was replaced.

    O_NOFOLLOW refuses a symlink in the last component; the identity check catches a symlink swapped
    into any earlier component (it would lead to a different inode).
    """
    try:
        fh = open(path, "rb", buffering=0, opener=_nofollow_opener)  # noqa: SIM115 - handed to the caller
    except OSError as exc:
        if _is_gone(exc):
            return None
        raise CatalogueError("file not readable") from None
    try:
        st = os.fstat(fh.fileno())
    except OSError:
        fh.close()
        raise CatalogueError("file not readable") from None
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (dev, ino):
        fh.close()
        return None
    return fh


def open_verified(path: Path, expected: os.stat_result) -> io.FileIO:
    """Open a file returned by open_member() for reading (unbuffered binary file object).

    BackupNotFound("file not found") if it is no longer the regular file `expected` describes (vanished,
    replaced, or a path component swapped for a symlink since the check); CatalogueError if unreadable.
    """
    fh = _open_regular(path, expected.st_dev, expected.st_ino)
    if fh is None:
        raise _file_not_found()
    return fh


MANIFEST_NAME = "MANIFEST.sha256"
MANIFEST_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def verify_manifest(root: Path, backup_id: str) -> bool | None:
    """Check a backup against the `sha256sum` manifest its script wrote beside the files.

    None when the backup has no manifest (nothing to verify against); False when the manifest is
    unreadable or empty, names a file that is missing or unsafe, or a digest differs; True otherwise.
    Every listed path goes through open_member, so a manifest cannot make this read outside the root.
    """
    try:
        manifest_path, manifest_stat = open_member(root, backup_id, MANIFEST_NAME)
    except BackupNotFound:
        return None
    try:
        with open_verified(manifest_path, manifest_stat) as handle:
            lines = handle.read(16 << 20).decode("utf-8").splitlines()
    except (BackupNotFound, CatalogueError, OSError, UnicodeDecodeError):
        return False
    entries = [MANIFEST_LINE.match(line) for line in lines if line.strip()]
    if not entries or any(match is None for match in entries):
        return False
    for match in entries:
        expected, rel_path = match.group(1).lower(), match.group(2).removeprefix("./")
        digest = hashlib.sha256()
        try:
            path, file_stat = open_member(root, backup_id, rel_path)
            with open_verified(path, file_stat) as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        except (BackupNotFound, CatalogueError, OSError):
            return False
        if digest.hexdigest() != expected:
            return False
    return True


def iter_tar_chunks(plan: TarPlan, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Yields exactly plan.content_length bytes, in chunks of chunk_size (the last one may be shorter).

    Small pieces are accumulated so chunks stay large. A file that shrank/vanished/was replaced since
    planning is padded with zeros to its promised size; a file that grew is cut at that size. A read
    error (EIO, EACCES) raises CatalogueError mid-stream: the short body then fails the client's
    Content-Length check rather than silently delivering a corrupt archive.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    buf = bytearray()

    for member in plan.members:
        buf += member.header
        while len(buf) >= chunk_size:
            yield bytes(buf[:chunk_size])
            del buf[:chunk_size]
        if member.path is not None and member.size:
            remaining = member.size
            fh = _open_regular(member.path, member.dev, member.ino)
            try:
                while remaining:
                    want = min(remaining, chunk_size - len(buf))
                    data = b""
                    if fh is not None:
                        try:
                            data = fh.read(want)
                        except OSError:
                            raise CatalogueError("file not readable") from None
                        if not data:  # shrank: zeros from here on
                            fh.close()
                            fh = None
                    if not data:
                        data = bytes(want)
                    remaining -= len(data)
                    if not buf and len(data) == chunk_size:
                        yield data  # big file, aligned: no copy through the buffer
                        continue
                    buf += data
                    if len(buf) >= chunk_size:
                        yield bytes(buf)
                        buf.clear()
            finally:
                if fh is not None:
                    fh.close()
        buf += bytes(member.padding)
        while len(buf) >= chunk_size:
            yield bytes(buf[:chunk_size])
            del buf[:chunk_size]

    buf += _TAR_END
    while buf:
        yield bytes(buf[:chunk_size])
        del buf[:chunk_size]


# ------------------------------------------------------------------------------ single member


def _validate_member_path(rel_path: str) -> list[str]:
    if not isinstance(rel_path, str) or not rel_path or len(rel_path) > _MAX_MEMBER_PATH:
        raise _file_not_found()
    if "\x00" in rel_path or "\\" in rel_path or rel_path.startswith("/"):
        raise _file_not_found()
    parts = rel_path.split("/")
    # Empty components ("a//b", "a/"), "." and ".." are refused rather than normalized: only the one
    # canonical spelling of a member path is accepted.
    if any(part in ("", ".", "..") for part in parts):
        raise _file_not_found()
    return parts


def open_member(root: Path, backup_id: str, rel_path: str) -> tuple[Path, os.stat_result]:
    """Returns the path and its lstat. Open it with open_verified(path, st) so that a swap between this
    check and the open cannot redirect the read."""
    folder = resolve(root, backup_id)
    parts = _validate_member_path(rel_path)
    current = folder
    for index, part in enumerate(parts):
        current = current / part
        try:
            st = os.lstat(current)
        except (OSError, ValueError):
            raise _file_not_found() from None
        last = index == len(parts) - 1
        if stat.S_ISLNK(st.st_mode):
            raise _file_not_found()
        if last and not stat.S_ISREG(st.st_mode):
            raise _file_not_found()
        if not last and not stat.S_ISDIR(st.st_mode):
            raise _file_not_found()
    return current, st
