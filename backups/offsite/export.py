"""An off-site copy as an uncompressed tar stream whose exact length is known before the first byte,
with its members under `<backup id>/` like the download of a local folder. Pure: the caller gives the
members and how to open each one (a decrypting stream of the store's object, the README's text, ...).

A member whose stream delivers other bytes than promised (the store's object does not match its sha256,
a read fails) ends the stream with the exception: the client's Content-Length check then fails, rather
than a tar that looks whole holding a damaged file.
"""

from __future__ import annotations

import contextlib
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

_BLOCK = 512
_END = b"\0" * (2 * _BLOCK)
FILE_MODE = 0o644
DIR_MODE = 0o755


@dataclass(frozen=True)
class Member:
    """One file of the archive: its path below the top folder, its exact size, how to open it."""

    path: str
    size: int
    open: Callable[[], BinaryIO]


@dataclass(frozen=True)
class _Planned:
    header: bytes
    member: Member | None  # None for a directory

    @property
    def length(self) -> int:
        size = self.member.size if self.member else 0
        return len(self.header) + size + (-size % _BLOCK)


@dataclass(frozen=True)
class TarPlan:
    top: str
    entries: tuple[_Planned, ...]
    content_length: int


def header(name: str, *, size: int, mtime: int, is_dir: bool) -> bytes:
    """The same header the local download writes: PAX, plain permission bits, no owner names."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = DIR_MODE if is_dir else FILE_MODE
    info.mtime = int(mtime)
    info.size = 0 if is_dir else size
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def plan_tar(top: str, members: Iterable[Member], *, mtime: int) -> TarPlan:
    """Directories first (each parent before what it holds), then every member, all under `top/`."""
    files = sorted(members, key=lambda member: tuple(member.path.split("/")))
    folders = sorted(
        {
            "/".join(parts[:depth])
            for parts in (m.path.split("/") for m in files)
            for depth in range(1, len(parts))
        },
        key=lambda path: tuple(path.split("/")),
    )
    entries = [_Planned(header(f"{top}/", size=0, mtime=mtime, is_dir=True), None)]
    ordered: list[tuple[tuple[str, ...], int, _Planned]] = []
    for folder in folders:
        planned = _Planned(header(f"{top}/{folder}/", size=0, mtime=mtime, is_dir=True), None)
        ordered.append((tuple(folder.split("/")), 0, planned))
    for member in files:
        planned = _Planned(
            header(f"{top}/{member.path}", size=member.size, mtime=mtime, is_dir=False), member
        )
        ordered.append((tuple(member.path.split("/")), 1, planned))
    entries += [planned for _, _, planned in sorted(ordered, key=lambda item: (item[0], item[1]))]
    length = sum(entry.length for entry in entries) + len(_END)
    return TarPlan(top=top, entries=tuple(entries), content_length=length)


def iter_tar_chunks(plan: TarPlan, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Exactly `plan.content_length` bytes in chunks of `chunk_size` (the last may be shorter), or an
    exception from a member's stream (after which nothing more is sent)."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    buffer = bytearray()
    for entry in plan.entries:
        buffer += entry.header
        if entry.member is not None and entry.member.size:
            member = entry.member
            remaining = member.size
            stream = member.open()
            with contextlib.closing(stream):
                while remaining:
                    data = stream.read(min(remaining, chunk_size))
                    if not data:
                        raise OSError(f"{member.path} ended {remaining} bytes early")
                    remaining -= len(data)
                    buffer += data
                    # The stream's own check (size, sha256) runs when it is read to its end: done before
                    # the member's last bytes leave, so a bad file never arrives whole.
                    if not remaining and stream.read(1):
                        raise OSError(f"{member.path} is longer than its {member.size} bytes")
                    while len(buffer) >= chunk_size:
                        yield bytes(buffer[:chunk_size])
                        del buffer[:chunk_size]
            buffer += bytes(-member.size % _BLOCK)
        while len(buffer) >= chunk_size:
            yield bytes(buffer[:chunk_size])
            del buffer[:chunk_size]
    buffer += _END
    while buffer:
        yield bytes(buffer[:chunk_size])
        del buffer[:chunk_size]
