"""Reading a backup file exactly once: hashing, counting, cancelling and decompressing as it streams.

Pure (no Django). Every consumer (manifest check, archive walk, dump check, restore) pulls from one
:class:`SourceReader`, so the SHA-256 of a file is computed from the same bytes the deeper checks look
at, and a file is never opened twice. Decompression is bounded: each step yields at most
:data:`CHUNK` bytes, so a decompression bomb costs time, never memory.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO, Literal

from backports import zstd

CHUNK = 1 << 20

Compression = Literal["gzip", "zstd", "none"]

ProgressCallback = Callable[[int, str], None]
StopCheck = Callable[[], bool]


class Cancelled(Exception):
    """should_stop() said so between two chunks."""


class StreamError(Exception):
    """The bytes are not what their name says (corrupt, truncated); the message names no path."""


def throttled(should_stop: StopCheck | None, seconds: float = 0.25) -> StopCheck | None:
    """should_stop() asked at most every `seconds`: the readers ask between 1 MiB chunks, which can be
    a thousand times a second, and a caller's check may be a database query. Once True, stays True."""
    if should_stop is None:
        return None
    last = 0.0
    stopped = False

    def check() -> bool:
        nonlocal last, stopped
        now = time.monotonic()
        if not stopped and now - last >= seconds:
            last = now
            stopped = bool(should_stop())
        return stopped

    return check


class SourceReader:
    """One pass over a binary file in CHUNK-sized reads, hashing everything that goes through.

    `on_bytes(n)` is called after each chunk (the caller turns bytes into percent); `should_stop()` is
    checked before each read and raises Cancelled. `read(n)` serves pull consumers (tar, decompressors)
    from the same chunks; `drain()` reads what a consumer left so the digest always covers the file.
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        *,
        on_bytes: Callable[[int], None] | None = None,
        should_stop: StopCheck | None = None,
        hash_name: str = "sha256",
    ) -> None:
        self._file = fileobj
        self._on_bytes = on_bytes
        self._should_stop = should_stop
        self._digest = hashlib.new(hash_name)
        self._pending = b""
        self.bytes_read = 0
        self.eof = False

    def _next_chunk(self) -> bytes:
        if self.eof:
            return b""
        if self._should_stop is not None and self._should_stop():
            raise Cancelled()
        chunk = self._file.read(CHUNK)
        if not chunk:
            self.eof = True
            return b""
        self._digest.update(chunk)
        self.bytes_read += len(chunk)
        if self._on_bytes is not None:
            self._on_bytes(len(chunk))
        return chunk

    def chunks(self) -> Iterator[bytes]:
        if self._pending:
            pending, self._pending = self._pending, b""
            yield pending
        while chunk := self._next_chunk():
            yield chunk

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            return b"".join(self.chunks())
        if not self._pending:
            self._pending = self._next_chunk()
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def drain(self) -> None:
        for _ in self.chunks():
            pass

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def compression_of(name: str) -> Compression | None:
    """The compression of a tar archive by its name, None when the name is not an archive's."""
    lower = name.lower()
    if lower.endswith((".tar.gz", ".tgz")):
        return "gzip"
    if lower.endswith((".tar.zst", ".tzst", ".tar.zstd")):
        return "zstd"
    if lower.endswith(".tar"):
        return "none"
    return None


def decompressed(chunks: Iterator[bytes], compression: Compression) -> Iterator[bytes]:
    """The decompressed bytes of `chunks`, at most CHUNK at a time; StreamError when the stream is
    corrupt (CRC or checksum mismatch), truncated, or followed by garbage."""
    if compression == "gzip":
        return _gunzip(chunks)
    if compression == "zstd":
        return _unzstd(chunks)
    return _plain(chunks)


def _plain(chunks: Iterator[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        for start in range(0, len(chunk), CHUNK):
            yield chunk[start : start + CHUNK]


def _gunzip(chunks: Iterator[bytes]) -> Iterator[bytes]:
    # wbits=31: gzip container; zlib checks each member's CRC-32 and ISIZE trailer itself. A file may
    # hold several members (pigz, concatenation); NUL padding after the last one is accepted, as gzip(1)
    # does, and anything else after it must itself be a gzip member.
    decoder = zlib.decompressobj(31)
    fed = False  # the current member has received bytes, so ending now would be a truncation
    members = 0
    try:
        for chunk in chunks:
            data = chunk
            while data:
                if not fed and members and not data.strip(b"\0"):
                    break
                fed = True
                out = decoder.decompress(data, CHUNK)
                while True:
                    if out:
                        yield out
                    # A full output buffer can leave output pending inside zlib with no input left.
                    if decoder.eof or (not decoder.unconsumed_tail and len(out) < CHUNK):
                        break
                    out = decoder.decompress(decoder.unconsumed_tail, CHUNK)
                if not decoder.eof:
                    break
                members += 1
                data = decoder.unused_data
                decoder = zlib.decompressobj(31)
                fed = False
    except zlib.error as exc:
        raise StreamError(f"corrupt gzip data ({_zlib_reason(exc)})") from None
    if fed or not members:
        raise StreamError("truncated gzip stream" if fed else "empty file, not a gzip stream")


def _zlib_reason(exc: zlib.error) -> str:
    text = str(exc)
    return text.split(": ", 1)[-1] if ": " in text else text


def _unzstd(chunks: Iterator[bytes]) -> Iterator[bytes]:
    # One decompressor per frame (a .tar.zst may hold several); max_length bounds each output, and
    # the frame checksum, when the writer put one (zstd(1) does by default), is checked at its end.
    decoder = zstd.ZstdDecompressor()
    fed = False
    frames = 0
    try:
        for chunk in chunks:
            data = chunk
            while data:
                fed = True
                out = decoder.decompress(data, CHUNK)
                while True:
                    if out:
                        yield out
                    if decoder.eof or decoder.needs_input:
                        break
                    out = decoder.decompress(b"", CHUNK)
                if not decoder.eof:
                    break
                frames += 1
                data = decoder.unused_data
                decoder = zstd.ZstdDecompressor()
                fed = False
    except zstd.ZstdError as exc:
        raise StreamError(f"corrupt zstd data ({exc})") from None
    if fed or not frames:
        raise StreamError("truncated zstd stream" if fed else "empty file, not a zstd stream")


class ByteStream:
    """Exact-size reads over an iterator of chunks (the tar walker's view of a decompressed stream)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._pos = 0
        self.position = 0  # bytes handed out so far

    def _fill(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._buf, self._pos = chunk, 0
                return True
        return False

    def read_exact(self, size: int) -> bytes:
        """`size` bytes, or fewer only at the end of the stream."""
        parts: list[bytes] = []
        want = size
        while want:
            if self._pos >= len(self._buf) and not self._fill():
                break
            piece = self._buf[self._pos : self._pos + want]
            self._pos += len(piece)
            want -= len(piece)
            parts.append(piece)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.position += len(data)
        return data

    def iter_exact(self, size: int) -> Iterator[bytes]:
        """Up to `size` bytes in pieces (fewer only at the end of the stream), without joining them."""
        want = size
        while want:
            if self._pos >= len(self._buf) and not self._fill():
                return
            if self._pos == 0 and len(self._buf) <= want:
                piece = self._buf
            else:
                piece = self._buf[self._pos : self._pos + want]
            self._pos += len(piece)
            want -= len(piece)
            self.position += len(piece)
            yield piece

    def skip(self, size: int) -> int:
        return sum(len(piece) for piece in self.iter_exact(size))

    def drain(self) -> int:
        skipped = len(self._buf) - self._pos
        self._buf, self._pos = b"", 0
        for chunk in self._chunks:
            skipped += len(chunk)
        self.position += skipped
        return skipped
