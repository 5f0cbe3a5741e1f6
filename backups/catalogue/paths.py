"""Safe access to backup folders: ids, no-follow opens of folders and single members, disk usage.

The backup script writes ``BACKUP_ROOT/backup-YYYYmmdd_HHMMSS/`` folders and a relative symlink
``BACKUP_ROOT/latest``. The catalogue modules list, size, stream (as tar) and delete them. They are pure
Python (no Django, no ORM) so that they can be tested against real, deliberately hostile trees.

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

import errno
import io
import os
import re
import stat
from pathlib import Path

LATEST_LINK = "latest"


SERVICE_DIR = ".backup-service"


# Unanchored form, usable inside a larger regex (e.g. a Django path converter). It does not exclude
# "latest" or "..": always confirm with is_valid_id().
ID_REGEX = r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,199}"


# \Z rather than $: "$" would also match before a trailing newline ("backup-1\n").
ID_PATTERN: re.Pattern[str] = re.compile(rf"^(?!{re.escape(LATEST_LINK)}\Z)(?!.*\.\.){ID_REGEX}\Z")


_MAX_MEMBER_PATH = 4096


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# O_NONBLOCK: if a fifo was swapped in place of a planned file, opening it must not hang the thread
# waiting for a writer (it has no effect on regular files).
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


# errno values meaning "the thing is not (or no longer) what we expected": vanished, replaced by a
# symlink (ELOOP from O_NOFOLLOW) or by a non-directory.
_GONE_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP}


class CatalogueError(Exception):
    """Something on disk prevents the operation (not readable, not a symlink where one is needed, ...)."""


class BackupNotFound(CatalogueError):
    """Unsafe or missing backup id / member path. The message never contains a path."""


class Gone(Exception):
    """Internal: a directory vanished or was replaced while we were looking at it."""


def not_found() -> BackupNotFound:
    return BackupNotFound("backup not found")


def file_not_found() -> BackupNotFound:
    return BackupNotFound("file not found")


def is_gone(exc: OSError) -> bool:
    return exc.errno in _GONE_ERRNOS


def same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def is_valid_id(backup_id: str) -> bool:
    return isinstance(backup_id, str) and ID_PATTERN.match(backup_id) is not None


def resolve(root: Path, backup_id: str) -> Path:
    if not is_valid_id(backup_id):
        raise not_found()
    path = Path(root) / backup_id
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        raise not_found() from None
    if not stat.S_ISDIR(st.st_mode):  # lstat: a symlink to a directory is S_ISLNK, refused here
        raise not_found()
    return path


def open_dir(path: Path, expected: os.stat_result | None = None) -> tuple[int, os.stat_result]:
    """Open a directory without following a symlink in its last component; verify its identity.

    Raises Gone if it vanished or is not the directory `expected` describes, CatalogueError if it cannot
    be read (permissions, I/O, path too long).
    """
    try:
        fd = os.open(path, DIR_FLAGS)
    except OSError as exc:
        if is_gone(exc):
            raise Gone() from None
        raise CatalogueError("backup not readable") from None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise CatalogueError("backup not readable") from None
    if expected is not None and not same_inode(st, expected):
        os.close(fd)
        raise Gone()
    return fd, st


def _nofollow_opener(path: str, flags: int) -> int:
    return os.open(path, flags | FILE_FLAGS)


def open_regular(path: Path, dev: int, ino: int) -> io.FileIO | None:
    """Open `path` for reading if it is still the regular file (dev, ino); None if it vanished/was replaced.

    O_NOFOLLOW refuses a symlink in the last component; the identity check catches a symlink swapped
    into any earlier component (it would lead to a different inode).
    """
    try:
        fh = open(path, "rb", buffering=0, opener=_nofollow_opener)  # noqa: SIM115 - handed to the caller
    except OSError as exc:
        if is_gone(exc):
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
    fh = open_regular(path, expected.st_dev, expected.st_ino)
    if fh is None:
        raise file_not_found()
    return fh


def _validate_member_path(rel_path: str) -> list[str]:
    if not isinstance(rel_path, str) or not rel_path or len(rel_path) > _MAX_MEMBER_PATH:
        raise file_not_found()
    if "\x00" in rel_path or "\\" in rel_path or rel_path.startswith("/"):
        raise file_not_found()
    parts = rel_path.split("/")
    # Empty components ("a//b", "a/"), "." and ".." are refused rather than normalized: only the one
    # canonical spelling of a member path is accepted.
    if any(part in ("", ".", "..") for part in parts):
        raise file_not_found()
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
            raise file_not_found() from None
        last = index == len(parts) - 1
        if stat.S_ISLNK(st.st_mode):
            raise file_not_found()
        if last and not stat.S_ISREG(st.st_mode):
            raise file_not_found()
        if not last and not stat.S_ISDIR(st.st_mode):
            raise file_not_found()
    return current, st


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
