"""`sha256sum` manifests: reading the one a script wrote, writing one for a backup that has none.

The format is GNU coreutils': `<64 hex> <space or *><path>` per line, `*` marking binary mode, and a
leading backslash when the path had a backslash or a newline escaped. BSD-style `SHA256 (path) = <hex>`
lines (`sha256sum --tag`) are read too. Paths are relative to the backup folder; a leading `./` (as
`find .` writes them) is dropped. Anything else is a malformed line: the whole manifest is refused, since
a manifest that cannot be read exactly cannot vouch for anything.

Pure: the caller opens files (see checks.py); nothing here touches a path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO

from backups.verification.streams import Cancelled, ProgressCallback, SourceReader, StopCheck

MANIFEST_NAME = "MANIFEST.sha256"
MAX_MANIFEST_BYTES = 16 << 20

_GNU_LINE = re.compile(r"^(\\?)([0-9a-fA-F]{64}) [ *](.+)$")
_BSD_LINE = re.compile(r"^(\\?)SHA256 \((.+)\) = ([0-9a-fA-F]{64})$")


class ManifestError(ValueError):
    """The manifest cannot be read exactly; `line` is 1-based (0 when the problem is the whole file)."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"{MANIFEST_NAME} line {line}: {reason}" if line else f"{MANIFEST_NAME}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class ManifestEntry:
    path: str  # as listed, minus a leading "./"; may be unsafe (checks.py decides)
    sha256: str  # lower-case hex
    line: int


def parse_manifest(data: bytes | str) -> list[ManifestEntry]:
    """Entries in file order; ManifestError for a malformed line, a path listed twice, or no entries."""
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    entries: list[ManifestEntry] = []
    seen: dict[str, int] = {}
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip():
            continue  # blank lines carry nothing; sha256sum -c skips them with a warning
        gnu = _GNU_LINE.match(line)
        if gnu:
            escaped, digest, path = gnu.group(1), gnu.group(2), gnu.group(3)
        else:
            bsd = _BSD_LINE.match(line)
            if not bsd:
                raise ManifestError(number, "not a sha256sum line")
            escaped, path, digest = bsd.group(1), bsd.group(2), bsd.group(3)
        if escaped:
            path = _unescape(path, number)
        path = path.removeprefix("./")
        if not path:
            raise ManifestError(number, "empty path")
        if path in seen:
            raise ManifestError(number, f"{path!r} is listed twice (first on line {seen[path]})")
        seen[path] = number
        entries.append(ManifestEntry(path=path, sha256=digest.lower(), line=number))
    if not entries:
        raise ManifestError(0, "lists no files")
    return entries


def read_manifest(fileobj: BinaryIO) -> list[ManifestEntry]:
    data = fileobj.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(0, f"larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    return parse_manifest(data)


def _unescape(path: str, number: int) -> str:
    out: list[str] = []
    index = 0
    while index < len(path):
        char = path[index]
        if char == "\\":
            follower = path[index + 1 : index + 2]
            if follower == "\\":
                out.append("\\")
            elif follower == "n":
                out.append("\n")
            elif follower == "r":
                out.append("\r")
            else:
                raise ManifestError(number, "bad escape in path")
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def manifest_line(path: str, sha256: str) -> str:
    """One line as `sha256sum` writes it (text mode, escaped when the path needs it)."""
    if "\\" in path or "\n" in path or "\r" in path:
        escaped = path.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{sha256}  {escaped}\n"
    return f"{sha256}  {path}\n"


def format_manifest(entries: Iterable[tuple[str, str]]) -> str:
    """A manifest text for (path, sha256) pairs, sorted by path bytes like `sort -z` in the C locale."""
    ordered = sorted(entries, key=lambda item: item[0].encode("utf-8", "surrogateescape"))
    return "".join(manifest_line(path, digest) for path, digest in ordered)


def build_manifest(
    listing: Iterable[tuple[str, int]],
    open_file: Callable[[str], BinaryIO],
    *,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> str:
    """The manifest the script would have written for these files (its own MANIFEST.sha256 excluded).

    For a backup whose script wrote none: the service stores the text in its own metadata folder, never
    in the backup folder. Raises Cancelled; an opener error propagates (the listing was just made).
    """
    files = sorted(
        ((path, size) for path, size in listing if path != MANIFEST_NAME),
        key=lambda item: item[0].encode("utf-8", "surrogateescape"),
    )
    total = sum(size for _, size in files) or 1
    done = 0
    last_percent = -1

    def advance(count: int) -> None:
        nonlocal done, last_percent
        done += count
        percent = min(99, done * 100 // total)
        if on_progress is not None and percent != last_percent:
            last_percent = percent
            on_progress(percent, "building manifest")

    digests: list[tuple[str, str]] = []
    for path, _size in files:
        if should_stop is not None and should_stop():
            raise Cancelled()
        with open_file(path) as handle:
            reader = SourceReader(handle, on_bytes=advance, should_stop=should_stop)
            reader.drain()
        digests.append((path, reader.hexdigest()))
    if on_progress is not None:
        on_progress(100, "manifest built")
    return format_manifest(digests)
