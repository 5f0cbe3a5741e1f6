"""A run's output: the bounded buffer the caller keeps, the line splitter, and the reader of the output file.

Lines are split on ``\n`` only, decoded as UTF-8 with errors="replace" once complete (a character split across
two reads decodes correctly), and capped at ``MAX_LINE_BYTES`` so one runaway line (a progress bar without
newline, a binary dump) cannot grow memory without bound.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterable
from itertools import repeat
from pathlib import Path

from backups.runner import supervisor

__all__ = ["MAX_LINE_BYTES", "TRUNCATED_SUFFIX", "OutputBuffer", "OutputReader"]

#: Longest line kept, in bytes of the raw output; longer lines are cut and marked with TRUNCATED_SUFFIX.
MAX_LINE_BYTES = 64 * 1024
TRUNCATED_SUFFIX = "…[truncated]"
#: How much of the output file one read takes; also the most one on_lines batch covers. Measured: 1 MiB reads
#: cost 30-40 % more CPU per line than 64 KiB ones, because a batch of ~150,000 line objects no longer fits
#: in the CPU caches while it is built, handed over and freed.
FILE_READ_BYTES = 64 * 1024


class OutputBuffer:
    """Keeps the first ``head_lines`` and the last ``tail_lines`` lines of a run's output.

    Lines in between are only counted, so a script printing millions of lines costs bounded memory while the
    start (configuration, versions) and the end (errors, summary) of the log are kept. Lines are stored as
    ``(stream, text)`` pairs where stream is ``"out"`` or ``"err"``.
    """

    def __init__(self, head_lines: int = 200, tail_lines: int = 1000) -> None:
        if head_lines < 0 or tail_lines < 0:
            raise ValueError("head_lines and tail_lines must be >= 0")
        self._head_limit = head_lines
        self._head: list[tuple[str, str]] = []
        # deque(maxlen=...) discards the oldest entry in C, which keeps the million-line case cheap.
        self._tail: collections.deque[tuple[str, str]] = collections.deque(maxlen=tail_lines)
        self._total = 0

    def append(self, stream: str, line: str) -> None:
        self._total += 1
        if len(self._head) < self._head_limit:
            self._head.append((stream, line))
        else:
            self._tail.append((stream, line))

    def extend(self, items: Iterable[tuple[str, str]]) -> None:
        """Append many ``(stream, line)`` pairs at once (what run_script does for each batch)."""
        if not isinstance(items, list):
            items = list(items)
        self._total += len(items)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head.extend(items[:room])
            items = items[room:]
        maxlen = self._tail.maxlen
        if maxlen is not None and len(items) > maxlen:
            items = items[len(items) - maxlen :]  # the deque would push the older ones straight out again
        self._tail.extend(items)

    @property
    def total_lines(self) -> int:
        return self._total

    @property
    def head_lines(self) -> int:
        return self._head_limit

    @property
    def dropped_lines(self) -> int:
        return self._total - len(self._head) - len(self._tail)

    def text(self) -> str:
        """Head, then ``… N lines omitted …`` if anything was dropped, then tail, joined with newlines."""
        parts = [line for _stream, line in self._head]
        dropped = self.dropped_lines
        if dropped:
            parts.append(f"… {dropped} lines omitted …")
        parts.extend(line for _stream, line in self._tail)
        return "\n".join(parts)

    def lines(self) -> list[tuple[str, str]]:
        """Head + tail ``(stream, line)`` pairs (a copy)."""
        return [*self._head, *self._tail]


def _truncate(raw: bytes) -> str:
    """Cut ``raw`` to MAX_LINE_BYTES without splitting a UTF-8 character, and mark it."""
    cut = MAX_LINE_BYTES
    # If the first dropped byte is a UTF-8 continuation byte, the cut is inside a character: move back to its
    # lead byte (at most 3 steps) so the kept part does not end with a spurious replacement character.
    while cut > MAX_LINE_BYTES - 3 and (raw[cut] & 0xC0) == 0x80:
        cut -= 1
    return raw[:cut].decode("utf-8", "replace") + TRUNCATED_SUFFIX


def _decode_line(raw: bytes) -> str:
    if len(raw) > MAX_LINE_BYTES:
        return _truncate(raw)
    return raw.decode("utf-8", "replace")


class _LineSplitter:
    """Turns the chunks of one stream into complete lines, carrying partial lines over between chunks.

    Decoding happens on complete lines only, so a multi-byte character split across two reads is decoded
    correctly. A partial line longer than MAX_LINE_BYTES is emitted (truncated) as soon as it is too long and
    the rest of it is discarded up to the next newline, so memory stays bounded even for endless lines.
    """

    __slots__ = ("stream", "_pending", "_discarding")

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self._pending = b""
        self._discarding = False

    def feed(self, data: bytes, out: list[tuple[str, str]]) -> None:
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                return
            data = data[newline + 1 :]
            self._discarding = False
        if self._pending:
            newline = data.find(b"\n")
            if newline < 0:
                self._keep_partial(self._pending + data, out)
                return
            out.append((self.stream, _decode_line(self._pending + data[:newline])))
            self._pending = b""
            data = data[newline + 1 :]
        end = data.rfind(b"\n")
        if end >= 0:
            complete = data[:end]
            if len(complete) <= MAX_LINE_BYTES:
                # Fast path (always taken for os.read chunks of READ_CHUNK_BYTES): no line can be too long,
                # so decode once and split once instead of per line. b"\n" never occurs inside a UTF-8
                # sequence, so this equals decoding each line separately.
                out.extend(zip(repeat(self.stream), complete.decode("utf-8", "replace").split("\n")))
            else:
                out.extend((self.stream, _decode_line(raw)) for raw in complete.split(b"\n"))
            data = data[end + 1 :]
        if data:
            self._keep_partial(data, out)

    def _keep_partial(self, data: bytes, out: list[tuple[str, str]]) -> None:
        if len(data) > MAX_LINE_BYTES:
            out.append((self.stream, _truncate(data)))
            self._pending = b""
            self._discarding = True
        else:
            self._pending = data

    def skip_partial(self) -> None:
        """Output was lost here: drop the pending piece and the rest of the line the next data begins in."""
        self._pending = b""
        self._discarding = True

    def flush(self, out: list[tuple[str, str]]) -> None:
        """End of stream: the last line may lack its newline; emit it anyway."""
        if self._pending:
            out.append((self.stream, _decode_line(self._pending)))
        self._pending = b""
        self._discarding = False


#: No record the supervisor writes is longer (a pipe read, or the short end record).
_MAX_RECORD_BYTES = supervisor.READ_CHUNK_BYTES


class OutputReader:
    """Reads the records of a run's output segments in order while the supervisor appends to them.

    ``read(batch)`` takes one chunk (at most FILE_READ_BYTES) and appends its complete lines to ``batch``;
    it returns False once nothing more is available for now. Segment ``n`` is finished when segment ``n+1``
    exists (the supervisor writes nothing more to a segment once it created the next), so the reader drains
    ``n`` to its end before moving on. If the segments it would need next were already rotated away, it
    continues with the oldest one kept and counts the gap in ``skipped_segments``.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.index = -1
        self.fd: int | None = None
        self.ended = False  # the supervisor's end record was read: nothing more will come
        self.lost_bytes = 0  # output the supervisor could not write (disk full), as its end record says
        self.skipped_segments = 0
        self._pending = b""
        self._splitters = {supervisor.STDOUT: _LineSplitter("out"), supervisor.STDERR: _LineSplitter("err")}

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def read(self, batch: list[tuple[str, str]]) -> bool:
        if self.ended:
            return False
        if self.fd is None:
            return self._open_next(batch)
        data = os.read(self.fd, FILE_READ_BYTES)
        if data:
            self._parse(data, batch)
            return True
        return self._open_next(batch)

    def finish(self, batch: list[tuple[str, str]]) -> None:
        """The output will not grow any more: emit the last lines that lack a newline."""
        for splitter in self._splitters.values():
            splitter.flush(batch)
        self.close()

    # -- segments --------------------------------------------------------------------------------------------

    def _open(self, index: int) -> int | None:
        try:
            return os.open(self.run_dir / supervisor.segment_name(index), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None

    def _open_next(self, batch: list[tuple[str, str]]) -> bool:
        wanted = self.index + 1
        fd = self._open(wanted)
        if fd is None and (self.fd is None or self.index <= 0 or os.fstat(self.fd).st_nlink == 0):
            # The next segment is missing. Past the first segment that means we read the current one, unless
            # ours was rotated away (we fell behind); the first is never deleted, so after it (or before it,
            # when attaching) the next may be gone while later ones exist. Continue with the oldest kept.
            later = self._existing_after(self.index)
            if later is not None:
                fd = self._open(later)
                if fd is not None:
                    if self.index >= 0 or later > 0:
                        self.skipped_segments += later - wanted
                    wanted = later
        if fd is None:
            return False
        while self.fd is not None and (data := os.read(self.fd, FILE_READ_BYTES)):
            self._parse(data, batch)  # may give up on the segment (and close it) at a corrupt record
        self.close()
        if self._pending or wanted != self.index + 1:
            # A torn record, or a gap: the pieces of the lines cut there are dropped rather than shown as
            # lines (or glued together into one that never was).
            self._pending = b""
            for splitter in self._splitters.values():
                splitter.skip_partial()
        self.fd, self.index = fd, wanted
        return True

    def _existing_after(self, index: int) -> int | None:
        try:
            names = os.listdir(self.run_dir)
        except OSError:
            return None
        found = [i for i in map(supervisor.segment_index, names) if i is not None and i > index]
        return min(found) if found else None

    # -- records ---------------------------------------------------------------------------------------------

    def _parse(self, data: bytes, batch: list[tuple[str, str]]) -> None:
        if self._pending:
            data = self._pending + data
        header = supervisor.RECORD_HEADER
        unpack = header.unpack_from
        size = header.size
        splitters = self._splitters
        pos, end = 0, len(data)
        while end - pos >= size:
            kind, length = unpack(data, pos)
            splitter = splitters.get(kind)
            if (splitter is None and kind != supervisor.END) or length > _MAX_RECORD_BYTES:
                # Not a record boundary: the rest of this segment cannot be trusted. Skip to the next one.
                self.skipped_segments += 1
                self.close()
                pos = end
                break
            stop = pos + size + length
            if stop > end:
                break
            if splitter is not None:
                splitter.feed(data[pos + size : stop], batch)
            else:
                self._on_end(data[pos + size : stop])
                pos = end
                break
            pos = stop
        self._pending = data[pos:]

    def _on_end(self, payload: bytes) -> None:
        self.ended = True
        try:
            info = json.loads(payload)
        except ValueError:
            info = {}
        if isinstance(info, dict) and isinstance(info.get("lost_bytes"), int):
            self.lost_bytes = info["lost_bytes"]
