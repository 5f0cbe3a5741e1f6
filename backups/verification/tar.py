"""A streaming tar reader that says when an archive is broken.

`tarfile` in stream mode ends its iteration silently at a truncated header, a bad checksum or a
missing end-of-archive marker, which is exactly what a verification must report. This walker reads
ustar, GNU (long names, base-256 sizes) and pax headers over a :class:`ByteStream`, hands each
member's data out as chunks, skips what the consumer did not read, and raises :class:`TarError` for
any structural damage. It never touches the filesystem.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from backups.verification.streams import ByteStream

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
# Long names and pax records are held in memory: cap them so a hostile header cannot.
_MAX_META_BYTES = 1 << 20

_TYPES = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
    tarfile.GNUTYPE_SPARSE: "sparse",
}
# Members whose data blocks follow the header (tarfile's rule: regular files and unknown types).
_NO_DATA = {"dir", "symlink", "hardlink", "char", "block", "fifo"}


class TarError(Exception):
    """The archive's structure is damaged; the message says where (by member name)."""


@dataclass(frozen=True)
class TarMember:
    path: str  # as stored (pax path / GNU long name / ustar prefix + name), trailing "/" removed
    type: str  # file, dir, symlink, hardlink, char, block, fifo, sparse, other
    size: int  # bytes of data stored in the archive for this member
    mode: int
    mtime: float
    linkname: str
    typeflag: bytes


class MemberData:
    """The data of the current member; iterate `chunks()` once, or leave it to be skipped."""

    def __init__(self, stream: ByteStream, member: TarMember) -> None:
        self._stream = stream
        self._member = member
        self.remaining = member.size if member.type not in _NO_DATA else 0

    def chunks(self) -> Iterator[bytes]:
        while self.remaining:
            got = 0
            for piece in self._stream.iter_exact(self.remaining):
                got += len(piece)
                self.remaining -= len(piece)
                yield piece
            if self.remaining and not got:
                raise TarError(f"archive truncated inside member {self._member.path!r}")

    def skip(self) -> None:
        if self.remaining:
            skipped = self._stream.skip(self.remaining)
            self.remaining -= skipped
            if self.remaining:
                raise TarError(f"archive truncated inside member {self._member.path!r}")


def iter_tar(stream: ByteStream) -> Iterator[tuple[TarMember, MemberData]]:
    """Each member with its data; raises TarError on a damaged archive, also at the very end when
    the end-of-archive marker is missing. The stream is left just after the marker."""
    previous = "the start of the archive"
    long_name: str | None = None
    long_link: str | None = None
    pax: dict[str, str] = {}
    global_pax: dict[str, str] = {}
    while True:
        header = stream.read_exact(BLOCK)
        if not header:
            raise TarError(f"archive ends without its end-of-archive marker after {previous}")
        if len(header) < BLOCK:
            raise TarError(f"archive truncated in the header after {previous}")
        if header == _ZERO_BLOCK:
            return
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            raise TarError(f"corrupt tar header after {previous}") from None
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            text = _meta_data(stream, info.size, previous).split(b"\0", 1)[0]
            value = text.decode("utf-8", "surrogateescape")
            if info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = value
            else:
                long_link = value
            continue
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
            records = _parse_pax(_meta_data(stream, info.size, previous), previous)
            (global_pax if info.type == tarfile.XGLTYPE else pax).update(records)
            continue
        fields = {**global_pax, **pax}
        path = fields.get("path", long_name if long_name is not None else info.name)
        linkname = fields.get("linkpath", long_link if long_link is not None else info.linkname)
        size = info.size
        if "size" in fields:
            try:
                size = int(fields["size"])
            except ValueError:
                raise TarError(f"corrupt pax size after {previous}") from None
        mtime: float = info.mtime
        if "mtime" in fields:
            try:
                mtime = float(fields["mtime"])
            except ValueError:
                raise TarError(f"corrupt pax mtime after {previous}") from None
        long_name = long_link = None
        pax = {}
        kind = _TYPES.get(info.type, "other")
        if kind == "file" and path.endswith("/"):
            kind = "dir"  # old tars mark directories only by the trailing slash
        member = TarMember(
            path=path.rstrip("/") if path != "/" else path,
            type=kind,
            size=max(size, 0) if kind not in _NO_DATA else 0,
            mode=info.mode,
            mtime=mtime,
            linkname=linkname,
            typeflag=info.type,
        )
        data = MemberData(stream, member)
        yield member, data
        data.skip()
        padding = -member.size % BLOCK if kind not in _NO_DATA else 0
        if padding and stream.skip(padding) != padding:
            raise TarError(f"archive truncated after member {member.path!r}")
        previous = f"member {member.path!r}"


def _meta_data(stream: ByteStream, size: int, previous: str) -> bytes:
    if size > _MAX_META_BYTES:
        raise TarError(f"oversized extended header after {previous}")
    padded = size + (-size % BLOCK)
    data = stream.read_exact(padded)
    if len(data) != padded:
        raise TarError(f"archive truncated in an extended header after {previous}")
    return data[:size]


def _parse_pax(data: bytes, previous: str) -> dict[str, str]:
    # Records are "<length> <key>=<value>\n", the length counting the whole record.
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos:].strip(b"\0") == b"":
            break
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise TarError(f"corrupt pax header after {previous}") from None
        record = data[space + 1 : pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise TarError(f"corrupt pax header after {previous}")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records
