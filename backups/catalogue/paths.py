"""Safe access beneath the backup root: ids, descriptor-relative opens, disk usage.

The backup script writes ``BACKUP_ROOT/backup-YYYYmmdd_HHMMSS/`` folders and a relative symlink
``BACKUP_ROOT/latest``. The catalogue modules list, size, stream (as tar) and delete them. They are pure
Python (no Django, no ORM) so that they can be tested against real, deliberately hostile trees.

Safety rules applied throughout:

* A backup id is a folder *name*. It must pass :func:`is_valid_id` and be a real directory directly
  inside the root; anything else (symlinks, files, ``..``, absolute paths, encoded slashes, NULs, ...) is
  :class:`BackupNotFound` with a fixed message that never echoes a path.
* Nothing beneath the root is ever opened by its full path. Every open starts from a directory file
  descriptor and resolves one component at a time with ``O_NOFOLLOW`` (``O_DIRECTORY`` for folders), or
  with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` where the kernel has it. Checking a path with
  ``lstat`` and then opening it by name cannot be made safe: a component swapped for a symlink between
  the two redirects the open outside the root. Resolving from descriptors also removes the PATH_MAX
  limit, so a tree of any depth can be listed, streamed and deleted.
* The root itself is taken as given (the operator may configure it as a symlink).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import platform
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

LATEST_LINK = "latest"


SERVICE_DIR = ".backup-service"


# Unanchored form, usable inside a larger regex (e.g. a Django path converter). It does not exclude
# "latest" or "..": always confirm with is_valid_id().
ID_REGEX = r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,199}"


# \Z rather than $: "$" would also match before a trailing newline ("backup-1\n").
ID_PATTERN: re.Pattern[str] = re.compile(rf"^(?!{re.escape(LATEST_LINK)}\Z)(?!.*\.\.){ID_REGEX}\Z")


# Far beyond PATH_MAX on purpose: descriptor-relative opens have no length limit, and a backup may hold
# a tree deeper than PATH_MAX that must still be downloadable file by file.
MAX_MEMBER_PATH = 32 * 1024


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# O_NONBLOCK: if a fifo was swapped in place of a planned file, opening it must not hang the thread
# waiting for a writer (it has no effect on regular files).
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


# errno values meaning "the thing is not (or no longer) what we expected": vanished, replaced by a
# symlink (ELOOP from O_NOFOLLOW) or by a non-directory; EXDEV is openat2's "would leave the tree".
_GONE_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV}


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


# --- descriptors -----------------------------------------------------------------------------------


def open_root(root: Path) -> int:
    """A descriptor of the root itself (followed if the operator made it a symlink).

    FileNotFoundError / NotADirectoryError when it is missing; CatalogueError when it cannot be read."""
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError:
        raise CatalogueError("backup root not readable") from None


def open_dir_at(parent_fd: int, name: str, expected: os.stat_result | None = None) -> int:
    """Open the directory `name` (one component) of `parent_fd` without following a symlink.

    Gone if it vanished, is not a directory, is a symlink, or is not the directory `expected` describes;
    CatalogueError if it cannot be read (permissions, I/O, too many open files)."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if is_gone(exc):
            raise Gone() from None
        raise CatalogueError(_reason(exc)) from None
    if expected is not None:
        try:
            st = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise CatalogueError(_reason(exc)) from None
        if not same_inode(st, expected):
            os.close(fd)
            raise Gone()
    return fd


def _reason(exc: OSError) -> str:
    return (exc.strerror or "not readable").lower()


def open_backup(root: Path, backup_id: str) -> int:
    """A no-follow descriptor of the backup folder `backup_id`; the caller closes it.

    BackupNotFound for a bad id, a missing folder, a symlink or anything that is not a directory;
    CatalogueError when the root or the folder cannot be read."""
    if not is_valid_id(backup_id):
        raise not_found()
    try:
        root_fd = open_root(root)
    except (FileNotFoundError, NotADirectoryError):
        raise not_found() from None
    try:
        return open_dir_at(root_fd, backup_id)
    except Gone:
        raise not_found() from None
    finally:
        os.close(root_fd)


@contextlib.contextmanager
def backup_dir(root: Path, backup_id: str) -> Iterator[int]:
    fd = open_backup(root, backup_id)
    try:
        yield fd
    finally:
        os.close(fd)


def check_backup(root: Path, backup_id: str) -> os.stat_result:
    """The folder's lstat if `backup_id` is a real directory directly inside the root, else BackupNotFound.

    An existence check only: read what is inside through open_backup()/open_member(), never by path."""
    if not is_valid_id(backup_id):
        raise not_found()
    try:
        st = os.lstat(Path(root) / backup_id)
    except (OSError, ValueError):
        raise not_found() from None
    if not stat.S_ISDIR(st.st_mode):  # lstat: a symlink to a directory is S_ISLNK, refused here
        raise not_found()
    return st


def list_entry_names(root: Path, backup_id: str) -> list[str]:
    """Names directly inside a backup folder (any type), read through its descriptor."""
    with backup_dir(root, backup_id) as fd:
        try:
            return os.listdir(fd)
        except OSError as exc:
            raise CatalogueError(_reason(exc)) from None


# --- openat2 ---------------------------------------------------------------------------------------

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
# The syscall is numbered 437 on every architecture that uses the generic table and on x86_64.
_OPENAT2_SYSCALLS = {"x86_64": 437, "aarch64": 437, "arm64": 437}
_PATH_MAX = 4096


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Openat2:
    """openat2(2) through ctypes, when the kernel and the architecture have it; None otherwise."""

    def __init__(self) -> None:
        self.enabled = True
        self._syscall: Callable[..., int] | None = None
        self._number = _OPENAT2_SYSCALLS.get(platform.machine())
        if self._number is None:
            self.enabled = False
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._syscall = libc.syscall
        except (OSError, AttributeError):
            self.enabled = False

    def open(self, dir_fd: int, rel_path: str, flags: int) -> int | None:
        """A descriptor, None when openat2 is not available here, or OSError."""
        if not self.enabled or self._syscall is None:
            return None
        encoded = os.fsencode(rel_path)
        if len(encoded) >= _PATH_MAX:
            return None  # ENAMETOOLONG: the component walk has no such limit
        how = _OpenHow(
            flags=flags, mode=0, resolve=_RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
        )
        fd = self._syscall(
            ctypes.c_long(self._number),
            ctypes.c_int(dir_fd),
            ctypes.c_char_p(encoded),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EPERM, errno.E2BIG, errno.EINVAL):
            # No openat2 (old kernel, seccomp filter) or a flag it does not know: walk from now on.
            self.enabled = False
            return None
        raise OSError(code, os.strerror(code))


OPENAT2 = _Openat2()


# --- members ---------------------------------------------------------------------------------------


def member_parts(rel_path: str) -> list[str]:
    """The components of a member path in its one canonical spelling, else BackupNotFound."""
    if not isinstance(rel_path, str) or not rel_path or len(rel_path) > MAX_MEMBER_PATH:
        raise file_not_found()
    if "\x00" in rel_path or "\\" in rel_path or rel_path.startswith("/"):
        raise file_not_found()
    parts = rel_path.split("/")
    # Empty components ("a//b", "a/"), "." and ".." are refused rather than normalized: only the one
    # canonical spelling of a member path is accepted.
    if any(part in ("", ".", "..") for part in parts):
        raise file_not_found()
    return parts


class DirChain:
    """Descriptors of the directories along one path below a folder, kept while consecutive opens stay
    in the same place (a sorted listing walks siblings in a row), and capped so a very deep tree never
    holds more than `max_open` descriptors: the oldest ancestors are closed first, and opened again from
    the folder if a later path needs them.
    """

    def __init__(self, base_fd: int, max_open: int = 64) -> None:
        self.base_fd = base_fd
        self.max_open = max(2, max_open)
        self.names: list[str] = []
        self.fds: list[int | None] = []
        # fds[:first_held] are closed, fds[first_held:] are open: closing always starts at the oldest.
        self.first_held = 0

    def dir_fd(self, parts: list[str]) -> int:
        """The descriptor of the directory base/parts[0]/.../parts[-1]. Gone / CatalogueError."""
        common = 0
        while common < min(len(parts), len(self.names)) and self.names[common] == parts[common]:
            common += 1
        self._truncate(common)
        if self.first_held >= len(self.fds):
            self._truncate(0)  # nothing of the common part is still open: walk again from the folder
        for index in range(len(self.fds), len(parts)):
            parent = self.base_fd if index == 0 else self.fds[index - 1]
            assert parent is not None
            self.fds.append(open_dir_at(parent, parts[index]))
            self.names.append(parts[index])
            self._cap()
        if not parts:
            return self.base_fd
        last = self.fds[-1]
        assert last is not None
        return last

    def _cap(self) -> None:
        while len(self.fds) - self.first_held > self.max_open:
            fd = self.fds[self.first_held]
            if fd is not None:
                os.close(fd)
            self.fds[self.first_held] = None
            self.first_held += 1

    def _truncate(self, keep: int) -> None:
        while len(self.fds) > keep:
            fd = self.fds.pop()
            self.names.pop()
            if fd is not None:
                os.close(fd)
        self.first_held = min(self.first_held, len(self.fds))

    def close(self) -> None:
        self._truncate(0)


def open_file_at(dir_fd: int, rel_path: str, chain: DirChain | None = None) -> int:
    """A descriptor of the file at `rel_path` beneath the directory `dir_fd`, no symlink followed on
    the way. OSError (ENOENT, ELOOP, ENOTDIR, EXDEV ... see is_gone()) when it is not there."""
    parts = member_parts(rel_path)
    if chain is None:
        fd = OPENAT2.open(dir_fd, rel_path, FILE_FLAGS)
        if fd is not None:
            return fd
    own = chain is None
    walker = chain or DirChain(dir_fd)
    try:
        try:
            parent = walker.dir_fd(parts[:-1])
        except Gone:
            raise OSError(errno.ENOENT, "gone") from None
        except CatalogueError as error:
            raise OSError(errno.EACCES, str(error)) from None
        return os.open(parts[-1], FILE_FLAGS, dir_fd=parent)
    finally:
        if own:
            walker.close()


@dataclass
class Member:
    """An open regular file of a backup, and what fstat said when it was opened."""

    file: io.FileIO
    stat: os.stat_result

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Member:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_member_at(dir_fd: int, rel_path: str, chain: DirChain | None = None) -> Member:
    """The regular file `rel_path` beneath `dir_fd`, opened; BackupNotFound("file not found") for
    anything else (missing, a symlink anywhere on the way, a directory, a fifo, a socket ...)."""
    parts = member_parts(rel_path)
    try:
        fd = open_file_at(dir_fd, "/".join(parts), chain)
    except OSError as exc:
        # ENXIO: a socket (or a fifo without a writer) where a file was expected.
        if is_gone(exc) or exc.errno in (errno.ENAMETOOLONG, errno.EISDIR, errno.ENXIO):
            raise file_not_found() from None
        raise CatalogueError("file not readable") from None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise CatalogueError("file not readable") from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise file_not_found()
    # O_NONBLOCK was only there for fifos swapped in; regular file reads ignore it, but clear it anyway.
    os.set_blocking(fd, True)
    return Member(file=io.FileIO(fd, "rb", closefd=True), stat=st)


def open_member(root: Path, backup_id: str, rel_path: str) -> Member:
    """One regular file of a backup, open for reading, with its fstat.

    BackupNotFound("backup not found") for a bad or missing backup, ("file not found") for a bad, missing
    or non-regular member; CatalogueError when it exists but cannot be read. Whatever is swapped into
    the tree afterwards, the open file stays the one that was found inside the root."""
    with backup_dir(root, backup_id) as fd:
        return open_member_at(fd, rel_path)


@contextlib.contextmanager
def member_opener(root: Path, backup_id: str) -> Iterator[Callable[[str], BinaryIO]]:
    """`open_file(rel_path) -> BinaryIO` over one backup, for the cores that read its files (checks,
    uploads, restores). The folder is held open for the duration, so renaming it does not matter."""
    with backup_dir(root, backup_id) as fd:
        chain = DirChain(fd)
        try:

            def open_file(rel_path: str) -> BinaryIO:
                member = open_member_at(fd, rel_path, chain)
                return member.file  # type: ignore[return-value]

            yield open_file
        finally:
            chain.close()


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
