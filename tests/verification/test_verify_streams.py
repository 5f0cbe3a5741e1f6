"""The one-pass reader and the bounded decompressors, against files made by the real gzip and zstd tools."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from pathlib import Path

import pytest

from backups.verification.streams import CHUNK, Cancelled, SourceReader, StreamError, decompressed


def _tool(args: list[str], data: bytes) -> bytes:
    return subprocess.run(args, input=data, capture_output=True, check=True).stdout


def _inflate(data: bytes, compression: str) -> bytes:
    return b"".join(decompressed(SourceReader(io.BytesIO(data)).chunks(), compression))


PAYLOAD = os.urandom(3 * CHUNK + 12345) + b"text " * 100_000


def test_reader_hash_covers_every_byte_even_when_consumer_stops_early() -> None:
    reader = SourceReader(io.BytesIO(PAYLOAD))
    assert len(reader.read(10)) == 10
    reader.drain()
    assert reader.hexdigest() == hashlib.sha256(PAYLOAD).hexdigest()
    assert reader.bytes_read == len(PAYLOAD)


def test_reader_checks_should_stop_between_chunks() -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    reader = SourceReader(io.BytesIO(PAYLOAD), should_stop=stop)
    with pytest.raises(Cancelled):
        reader.drain()
    assert reader.bytes_read == 2 * CHUNK


@pytest.mark.parametrize("tool", [["gzip", "-c"], ["zstd", "-q", "-c"]])
def test_real_tool_output_decompresses_exactly(tool: list[str]) -> None:
    compression = "gzip" if tool[0] == "gzip" else "zstd"
    assert _inflate(_tool(tool, PAYLOAD), compression) == PAYLOAD


def test_multi_member_gzip_and_nul_padding_are_accepted() -> None:
    data = _tool(["gzip", "-c"], b"first ") + _tool(["gzip", "-c"], b"second") + bytes(1024)
    assert _inflate(data, "gzip") == b"first second"


@pytest.mark.parametrize("compression, tool", [("gzip", ["gzip", "-c"]), ("zstd", ["zstd", "-q", "-c"])])
def test_truncated_stream_is_an_error(compression: str, tool: list[str]) -> None:
    data = _tool(tool, PAYLOAD)
    for cut in (len(data) - 4, len(data) // 2, 20):
        with pytest.raises(StreamError, match="truncated"):
            _inflate(data[:cut], compression)


def test_gzip_crc_mismatch_is_an_error() -> None:
    data = bytearray(_tool(["gzip", "-c"], PAYLOAD))
    data[-6] ^= 0xFF  # inside the CRC-32 trailer: the data inflates, the check fails
    with pytest.raises(StreamError, match="corrupt gzip"):
        _inflate(bytes(data), "gzip")


def test_zstd_checksum_mismatch_is_an_error(tmp_path: Path) -> None:
    data = bytearray(_tool(["zstd", "-q", "-c", "--check"], b"abc" * 100_000))
    data[-2] ^= 0xFF  # the frame's content checksum
    with pytest.raises(StreamError, match="corrupt zstd"):
        _inflate(bytes(data), "zstd")


def test_garbage_after_gzip_stream_is_an_error() -> None:
    data = _tool(["gzip", "-c"], b"payload") + b"not gzip at all"
    with pytest.raises(StreamError):
        _inflate(data, "gzip")


def test_empty_file_is_not_a_compressed_stream() -> None:
    with pytest.raises(StreamError, match="empty file"):
        _inflate(b"", "gzip")
    with pytest.raises(StreamError, match="empty file"):
        _inflate(b"", "zstd")


@pytest.mark.parametrize(
    "compression, tool", [("gzip", ["gzip", "-9", "-c"]), ("zstd", ["zstd", "-19", "-q", "-c"])]
)
def test_decompression_bomb_is_yielded_in_bounded_pieces(compression: str, tool: list[str]) -> None:
    bomb = _tool(tool, bytes(256 * CHUNK))  # 256 MiB of zeros in well under 1 MiB
    assert len(bomb) < CHUNK
    total = 0
    for piece in decompressed(SourceReader(io.BytesIO(bomb)).chunks(), compression):
        assert len(piece) <= CHUNK
        total += len(piece)
    assert total == 256 * CHUNK


def test_throttled_stop_check_asks_rarely_and_stays_stopped() -> None:
    import time

    from backups.verification.streams import throttled

    asked: list[float] = []

    def stop() -> bool:
        asked.append(time.monotonic())
        return len(asked) >= 3

    check = throttled(stop, seconds=0.05)
    assert check is not None
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline
    assert len(asked) == 3
    assert all(b - a >= 0.045 for a, b in zip(asked, asked[1:], strict=False))
    assert check() and len(asked) == 3
    assert throttled(None) is None
