"""A backup folder as an uncompressed tar stream whose exact length is known before the first byte."""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from backups.catalogue.paths import (
    CatalogueError,
    Gone,
    not_found,
    open_dir,
    open_regular,
    resolve,
)
from backups.catalogue.scan import FileEntry, file_entries, walk

_TAR_BLOCK = 512


_TAR_END = b"\0" * (2 * _TAR_BLOCK)


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
    except Gone:
        raise not_found() from None
    nodes = walk(folder, top)
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
    return TarPlan(members=tuple(members), content_length=length, files=file_entries(nodes))


def _dir_stat(path: Path) -> os.stat_result:
    fd, st = open_dir(path)
    os.close(fd)
    return st


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
            fh = open_regular(member.path, member.dev, member.ino)
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
