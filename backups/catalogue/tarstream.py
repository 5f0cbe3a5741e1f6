"""A backup folder as an uncompressed tar stream whose exact length is known before the first byte.

The folder is opened once, when the stream is planned, and every file is opened relative to that
descriptor (one component at a time, no symlink followed). A file that is not, while it is sent, exactly
the file that was planned (vanished, replaced, shrunk, grown, rewritten) ends the stream with
`TarChanged`: the length announced in advance cannot be kept honestly, and padding with zeros or
cutting would deliver a corrupt archive that looks complete. The caller aborts the transfer, so the
client sees a failed download instead.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from backups.catalogue.paths import (
    CatalogueError,
    DirChain,
    open_backup,
)
from backups.catalogue.scan import FileEntry, file_entries, walk

_TAR_BLOCK = 512


_TAR_END = b"\0" * (2 * _TAR_BLOCK)


class TarChanged(CatalogueError):
    """A file changed while the archive was being sent; the stream cannot stay truthful."""


@dataclass(frozen=True)
class TarMember:
    header: bytes
    rel: str | None  # None for directories
    size: int
    padding: int
    # What the file was when planned: the data is only sent if the file opened at stream time is that
    # same inode, with that size and that modification time.
    dev: int = 0
    ino: int = 0
    mtime_ns: int = 0


@dataclass
class TarPlan:
    """Owns a descriptor of the backup folder until the stream ends or `close()` is called."""

    members: tuple[TarMember, ...]
    content_length: int
    files: tuple[FileEntry, ...]
    folder_fd: int = -1
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.folder_fd >= 0:
                os.close(self.folder_fd)

    def __enter__(self) -> TarPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    """BackupNotFound for a bad or missing backup; CatalogueError when any part of it cannot be read (an
    archive that silently misses files is worse than none), before any byte is sent."""
    fd = open_backup(root, backup_id)
    try:
        top = os.fstat(fd)
        walked = walk(fd, check_readable=True)
        if walked.problems:
            raise CatalogueError("backup not readable")
        members: list[TarMember] = [TarMember(_tar_header(f"{backup_id}/", top, is_dir=True), None, 0, 0)]
        for node in walked.nodes:
            name = f"{backup_id}/{node.rel}"
            if node.is_dir:
                members.append(TarMember(_tar_header(name, node.st, is_dir=True), None, 0, 0))
                continue
            size = node.st.st_size
            members.append(
                TarMember(
                    header=_tar_header(name, node.st, is_dir=False),
                    rel=node.rel,
                    size=size,
                    padding=_padding(size),
                    dev=node.st.st_dev,
                    ino=node.st.st_ino,
                    mtime_ns=node.st.st_mtime_ns,
                )
            )
    except BaseException:
        os.close(fd)
        raise
    length = sum(len(m.header) + m.size + m.padding for m in members) + len(_TAR_END)
    return TarPlan(
        members=tuple(members), content_length=length, files=file_entries(walked.nodes), folder_fd=fd
    )


def _open_planned(chain: DirChain, member: TarMember) -> int:
    assert member.rel is not None
    parts = member.rel.split("/")
    try:
        parent = chain.dir_fd(parts[:-1])
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent)
    except Exception:
        raise TarChanged("a file of the backup vanished while it was being sent") from None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise TarChanged("a file of the backup could not be read") from None
    if not stat.S_ISREG(st.st_mode) or not _unchanged(member, st):
        os.close(fd)
        raise TarChanged("a file of the backup was replaced or changed while it was being sent")
    return fd


def _unchanged(member: TarMember, st: os.stat_result) -> bool:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (
        member.dev,
        member.ino,
        member.size,
        member.mtime_ns,
    )


def iter_tar_chunks(plan: TarPlan, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Yields exactly plan.content_length bytes, in chunks of chunk_size (the last one may be shorter),
    or raises TarChanged / CatalogueError before the chunk that would have been untrue.

    Small pieces are accumulated so chunks stay large. Each file is checked against its plan when it is
    opened and again after each read (fstat), so a file that shrank, grew, was rewritten in place or
    replaced is never sent as if it were complete. Closes the plan's folder when it ends or is closed.
    """
    if chunk_size <= 0:
        plan.close()
        raise ValueError("chunk_size must be positive")
    buf = bytearray()
    chain = DirChain(plan.folder_fd)
    try:
        for member in plan.members:
            buf += member.header
            while len(buf) >= chunk_size:
                yield bytes(buf[:chunk_size])
                del buf[:chunk_size]
            if member.rel is not None and member.size:
                yield from _file_chunks(chain, member, buf, chunk_size)
            buf += bytes(member.padding)
            while len(buf) >= chunk_size:
                yield bytes(buf[:chunk_size])
                del buf[:chunk_size]

        buf += _TAR_END
        while buf:
            yield bytes(buf[:chunk_size])
            del buf[:chunk_size]
    finally:
        chain.close()
        plan.close()


def _file_chunks(chain: DirChain, member: TarMember, buf: bytearray, chunk_size: int) -> Iterator[bytes]:
    fd = _open_planned(chain, member)
    try:
        remaining = member.size
        while remaining:
            want = min(remaining, chunk_size - len(buf))
            try:
                data = os.read(fd, want)
                after = os.fstat(fd)
            except OSError:
                raise CatalogueError("file not readable") from None
            if not data or not _unchanged(member, after):
                raise TarChanged("a file of the backup changed while it was being sent")
            remaining -= len(data)
            if not buf and len(data) == chunk_size:
                yield data  # big file, aligned: no copy through the buffer
                continue
            buf += data
            if len(buf) >= chunk_size:
                yield bytes(buf)
                buf.clear()
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
