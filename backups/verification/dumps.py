"""Database dumps in a backup: which files are dumps, and whether a dump is complete.

Only files at the top of a backup folder are taken as dumps: that is where the script writes them, and
files further down are copies of the platform's own trees (a `configs/schema.sql` is not a dump, and
judging it by pg_dump's rules would report problems the backup does not have).

A plain dump is complete when pg_dump's completion trailer (`-- PostgreSQL database dump complete`)
ends it and, when it opened with `\\restrict <key>` (pg_dump 15.14+ / 16.10+ / 17.6+), the matching
`\\unrestrict <key>` follows. The reference script writes a labelled demo dump (first line
`-- DEMO DUMP:`) when it could not reach PostgreSQL; see checks.py for why that is a problem.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Literal

from backups.verification.streams import Compression

DumpFormat = Literal["plain", "custom"]

CUSTOM_MAGIC = b"PGDMP"
DEMO_MARK = b"-- DEMO DUMP:"
TRAILERS = (b"-- PostgreSQL database dump complete", b"-- PostgreSQL database cluster dump complete")
HEADERS = (b"-- PostgreSQL database dump", b"-- PostgreSQL database cluster dump")
_HEAD_BYTES = 64 << 10
_TAIL_BYTES = 8 << 10
_RESTRICT = re.compile(rb"^\\restrict ([0-9A-Za-z]+)\s*$", re.MULTILINE)
_UNRESTRICT = re.compile(rb"^\\unrestrict ([0-9A-Za-z]+)\s*$", re.MULTILINE)

# name suffix -> (compression of the file, expected format; None = decided by the first bytes)
_SUFFIXES: tuple[tuple[str, Compression, DumpFormat | None], ...] = (
    (".sql.gz", "gzip", "plain"),
    (".sql.zst", "zstd", "plain"),
    (".sql", "none", None),
    (".dump", "none", None),
    (".pgdump", "none", None),
)


@dataclass(frozen=True)
class DumpName:
    path: str
    database: str  # the file name without its suffix: the script names dumps <db>.sql
    compression: Compression
    expected: DumpFormat | None


def dump_name(path: str) -> DumpName | None:
    if "/" in path:
        return None
    lower = path.lower()
    for suffix, compression, expected in _SUFFIXES:
        if lower.endswith(suffix) and len(path) > len(suffix):
            return DumpName(path, path[: -len(suffix)], compression, expected)
    return None


def sniff_format(head: bytes) -> DumpFormat:
    return "custom" if head.startswith(CUSTOM_MAGIC) else "plain"


@dataclass(frozen=True)
class PlainFacts:
    demo: bool
    demo_note: str  # the demo label's first line, for the report
    pg_dump_header: bool
    complete: bool
    problem: str | None  # why it is not complete, None when it is

    def details(self) -> dict[str, object]:
        return {"format": "plain", "demo": self.demo, "complete": self.complete}


class PlainDumpCheck:
    """Fed a plain dump chunk by chunk; keeps only its head and its tail."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._tail = b""
        self.size = 0

    def update(self, chunk: bytes) -> None:
        if len(self._head) < _HEAD_BYTES:
            self._head += chunk[: _HEAD_BYTES - len(self._head)]
        self._tail = (self._tail + chunk)[-_TAIL_BYTES:] if len(chunk) < _TAIL_BYTES else chunk[-_TAIL_BYTES:]
        self.size += len(chunk)

    @property
    def head(self) -> bytes:
        return bytes(self._head)

    def facts(self) -> PlainFacts:
        head = bytes(self._head)
        first_line = head.split(b"\n", 1)[0]
        if first_line.startswith(DEMO_MARK):
            note = first_line.decode("utf-8", "replace").removeprefix("-- ").strip()
            return PlainFacts(True, note[:300], False, True, None)
        header = any(mark in head[:4096] for mark in HEADERS)
        tail_lines = [line.strip() for line in self._tail.splitlines()]
        trailer = any(line in TRAILERS for line in tail_lines)
        problem = None
        if self.size == 0:
            problem = "empty file"
        elif not header and not trailer:
            problem = "not a pg_dump file (no pg_dump header or completion trailer)"
        elif not trailer:
            problem = "incomplete: pg_dump's completion trailer is missing (truncated?)"
        else:
            opened = _RESTRICT.search(head)
            if opened is not None:
                closed = _UNRESTRICT.findall(self._tail)
                if opened.group(1) not in closed:
                    problem = "incomplete: the \\unrestrict line matching its \\restrict is missing"
        return PlainFacts(False, "", header, problem is None, problem)


@dataclass(frozen=True)
class CustomHeader:
    version: str
    database: str | None
    compression: str


def read_custom_header(head: bytes) -> CustomHeader | None:
    """The database name and format version from a custom-format dump's header (pg_backup_archiver.c
    ReadHead), or None when the bytes do not parse; it never raises."""
    try:
        return _parse_custom_header(head)
    except (IndexError, ValueError, struct.error, UnicodeDecodeError):
        return None


def _parse_custom_header(head: bytes) -> CustomHeader | None:
    if not head.startswith(CUSTOM_MAGIC):
        return None
    vmaj, vmin, vrev, int_size, _off_size, fmt = head[5:11]
    if fmt != 1 or not 1 <= int_size <= 8:
        return None
    version = (vmaj, vmin, vrev)
    pos = 11

    def read_int() -> int:
        nonlocal pos
        sign = head[pos]
        raw = head[pos + 1 : pos + 1 + int_size]
        if len(raw) != int_size:
            raise IndexError
        pos += 1 + int_size
        value = int.from_bytes(raw, "little")
        return -value if sign else value

    def read_str() -> str | None:
        nonlocal pos
        length = read_int()
        if length < 0:
            return None
        if length > 4096 or pos + length > len(head):
            raise ValueError
        text = head[pos : pos + length].decode("utf-8")
        pos += length
        return text

    if version >= (1, 15, 0):
        algorithm = head[pos]
        pos += 1
        compression = {0: "none", 1: "gzip", 2: "lz4", 3: "zstd"}.get(algorithm, str(algorithm))
    else:
        level = read_int()
        compression = "none" if level == 0 else f"gzip level {level}" if level > 0 else "default"
    if version >= (1, 4, 0):
        for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
            read_int()
    database = read_str()
    return CustomHeader(
        version=".".join(str(part) for part in version), database=database, compression=compression
    )
