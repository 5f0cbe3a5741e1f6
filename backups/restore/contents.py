"""What a backup holds, for the restore screens: its database dumps and archives (from the folder's
listing), and an archive's members listed by streaming it, page by page, never extracting.

Pure (no Django); the caller's opener gives safe access to the files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from backups.verification import dumps
from backups.verification.streams import (
    ByteStream,
    Compression,
    SourceReader,
    StopCheck,
    StreamError,
    compression_of,
    decompressed,
)
from backups.verification.tar import TarError, iter_tar

MAX_PAGE = 1000


@dataclass(frozen=True)
class DumpInfo:
    path: str
    size_bytes: int
    format: str  # "plain", "custom"; "unknown" when the first bytes could not be read
    database: str
    compression: Compression
    demo: bool = False

    def to_document(self) -> dict[str, object]:
        return {
            "path": self.path,
            "size_bytes": self.size_bytes,
            "format": self.format,
            "database": self.database,
            "demo": self.demo,
        }


@dataclass(frozen=True)
class ArchiveInfo:
    path: str
    size_bytes: int
    compression: Compression

    def to_document(self) -> dict[str, object]:
        return {"path": self.path, "size_bytes": self.size_bytes}


@dataclass
class Contents:
    dumps: list[DumpInfo] = field(default_factory=list)
    archives: list[ArchiveInfo] = field(default_factory=list)

    def to_document(self) -> dict[str, object]:
        """`GET /contents` (CONTRACT §6); dumps also say their database and whether they are demo dumps."""
        return {
            "dumps": [dump.to_document() for dump in self.dumps],
            "archives": [archive.to_document() for archive in self.archives],
        }

    def dump(self, path: str) -> DumpInfo | None:
        return next((dump for dump in self.dumps if dump.path == path), None)

    def archive(self, path: str) -> ArchiveInfo | None:
        return next((archive for archive in self.archives if archive.path == path), None)


def backup_contents(
    listing: Iterable[tuple[str, int]], open_file: Callable[[str], BinaryIO] | None = None
) -> Contents:
    """Dumps and archives at the top of the folder (where the script writes them), by name.

    With `open_file`, each dump's first bytes (one 1 MiB read, decompressed for `.sql.gz`) tell its real
    format, a custom dump's database name from its header, and the demo label; without it the format
    comes from the name (`.sql` = plain, `.dump` = custom)."""
    contents = Contents()
    for path, size in sorted(listing):
        if "/" in path:
            continue
        compression = compression_of(path)
        if compression is not None:
            contents.archives.append(ArchiveInfo(path, size, compression))
            continue
        name = dumps.dump_name(path)
        if name is None:
            continue
        guess = name.expected or ("custom" if path.lower().endswith((".dump", ".pgdump")) else "plain")
        info = DumpInfo(path, size, guess, name.database, name.compression)
        if open_file is not None:
            info = _sniff(info, open_file)
        contents.dumps.append(info)
    return contents


def _sniff(info: DumpInfo, open_file: Callable[[str], BinaryIO]) -> DumpInfo:
    try:
        with open_file(info.path) as handle:
            reader = SourceReader(handle)
            chunks = reader.chunks()
            head = next(decompressed(chunks, info.compression) if info.compression != "none" else chunks, b"")
    except (OSError, StreamError):
        return DumpInfo(info.path, info.size_bytes, "unknown", info.database, info.compression)
    except Exception:  # the catalogue's opener raises its own error types
        return DumpInfo(info.path, info.size_bytes, "unknown", info.database, info.compression)
    fmt = dumps.sniff_format(head)
    database = info.database
    if fmt == "custom":
        header = dumps.read_custom_header(head)
        if header is not None and header.database:
            database = header.database
    demo = fmt == "plain" and head.startswith(dumps.DEMO_MARK)
    return DumpInfo(info.path, info.size_bytes, fmt, database, info.compression, demo)


@dataclass(frozen=True)
class Member:
    path: str
    size_bytes: int
    type: str  # file, dir, symlink, hardlink, char, block, fifo, sparse, other
    link_target: str | None = None

    def to_document(self) -> dict[str, object]:
        document: dict[str, object] = {"path": self.path, "size_bytes": self.size_bytes, "type": self.type}
        if self.link_target is not None:
            document["link_target"] = self.link_target
        return document


@dataclass
class MembersPage:
    members: list[Member]
    offset: int
    limit: int
    has_more: bool
    total: int | None = None  # counted only when asked (it means reading the whole archive)
    error: str | None = None  # the archive is damaged at or before the end of this page

    def to_document(self) -> dict[str, object]:
        return {
            "members": [member.to_document() for member in self.members],
            "offset": self.offset,
            "limit": self.limit,
            "has_more": self.has_more,
            "total": self.total,
            "error": self.error,
        }


def archive_members(
    fileobj: BinaryIO,
    compression: Compression,
    offset: int = 0,
    limit: int = 100,
    *,
    with_total: bool = False,
    should_stop: StopCheck | None = None,
) -> MembersPage:
    """Members `offset` … `offset + limit - 1` of a tar archive, read as a stream (the data of earlier
    members is decompressed and skipped, never stored). Reading stops just after the page unless
    `with_total`. Raises Cancelled."""
    if offset < 0 or not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"offset must be >= 0 and limit within 1..{MAX_PAGE}")
    members: list[Member] = []
    index = 0
    has_more = False
    error = None
    reader = SourceReader(fileobj, should_stop=should_stop)
    walker = iter_tar(ByteStream(decompressed(reader.chunks(), compression)))
    try:
        for member, data in walker:
            if index >= offset:
                if len(members) == limit:
                    has_more = True
                    if not with_total:
                        break
                else:
                    link = member.linkname if member.type in ("symlink", "hardlink") else None
                    members.append(Member(member.path, member.size, member.type, link))
            index += 1
            data.skip()
    except (StreamError, TarError) as exc:
        error = f"corrupt archive: {exc}"
    finally:
        walker.close()
    total = index if with_total and error is None else None
    return MembersPage(members, offset, limit, has_more, total, error)
