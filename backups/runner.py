"""Run the backup shell script as a killable process group and stream its output.

Pure Python on purpose (no Django, no ORM): the job layer calls in with callbacks, and this module only deals
with processes, pipes and signals, so it can be tested with real processes and no database.

Design notes (the "why"):

* The script is exec'd directly (never ``shell=True``) in a new session, so its pid is also the process group
  id and one ``os.killpg`` reaches every helper it started, including background grandchildren.
* stdout and stderr are read by a single selector loop with non-blocking ``os.read`` calls in 64 KiB chunks.
  Reading both pipes continuously means the child can never stall on a full pipe, and handling lines in the
  calling thread avoids a per-line hand-off between threads (a million-line run costs thousands of callback
  calls, not millions).
* A line is capped at 64 KiB so one runaway line (a progress bar without newline, a binary dump) cannot grow
  memory without bound.
* After the main process exits, background children may still hold the pipes open. We drain for at most
  ``DRAIN_SECONDS`` and then kill what is left, so a run never hangs and never leaves an orphan behind.
* Zombies (dead processes nobody has reaped yet) are not counted as group members: they cannot run any
  more, and in containers whose PID 1 does not reap orphans they would make a dead group look alive forever.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import repeat

__all__ = [
    "DRAIN_SECONDS",
    "KILL_WAIT_SECONDS",
    "MAX_LINE_BYTES",
    "TRUNCATED_SUFFIX",
    "EndReason",
    "OutputBuffer",
    "RunResult",
    "build_env",
    "find_group_members",
    "group_alive",
    "kill_group",
    "process_has_run_id",
    "run_script",
]

logger = logging.getLogger(__name__)

#: Size of one os.read(); also the unit in which on_lines batches arrive.
READ_CHUNK_BYTES = 64 * 1024
#: Longest line kept, in bytes of the raw output; longer lines are cut and marked with TRUNCATED_SUFFIX.
MAX_LINE_BYTES = 64 * 1024
TRUNCATED_SUFFIX = "…[truncated]"
#: How long we keep reading after the main process exited while background children still hold the pipes.
DRAIN_SECONDS = 2.0
#: How long we wait for the group to disappear after SIGKILL before giving up (D-state processes, etc.).
KILL_WAIT_SECONDS = 2.0
#: Polling interval for conditions no file descriptor can signal (group emptiness).
_POLL_SECONDS = 0.02
#: Upper bound on a selector wait when we cannot get a pidfd for the leader and must poll for its exit.
_LEADER_POLL_SECONDS = 0.1
#: Bound on the final non-blocking drain once we have stopped waiting for EOF (pipes held outside the group).
_FINAL_DRAIN_CHUNKS = 64


class EndReason(str, enum.Enum):  # noqa: UP042 - public API, kept exactly as specified
    EXITED = "exited"  # the script ended by itself (any exit code)
    TIMEOUT = "timeout"  # killed after the timeout
    CANCELLED = "cancelled"  # killed because should_stop() returned EndReason.CANCELLED
    SHUTDOWN = "shutdown"  # killed because should_stop() returned EndReason.SHUTDOWN
    SPAWN_FAILED = "spawn_failed"  # could not start: missing, not executable, exec format error...


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


@dataclass
class RunResult:
    reason: EndReason
    # The process's return code (negative signal number if killed by a signal), None if it never started
    # (or, in the pathological case, if it could not be reaped even after SIGKILL).
    exit_code: int | None
    # Human explanation for anything but a clean exit; "" when the exit code is 0.
    error: str
    pid: int | None
    output: OutputBuffer
    duration_seconds: float


def build_env(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """``base`` (usually os.environ) + ``extra`` + ``PYTHONUNBUFFERED=1``; keys and values must be str.

    PYTHONUNBUFFERED makes Python helpers of the script write line by line into the pipe instead of in 8 KiB
    blocks, otherwise "live" output would arrive in bursts or only at the end.
    """
    env: dict[str, str] = {}
    for source in (base, extra):
        for key, value in source.items():
            # Fail here with the offending key rather than with a vague TypeError deep inside Popen.
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"environment entries must be str, got {key!r}={value!r}")
            env[key] = value
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ------------------------------------------------------------------------------------------------------------
# Process-group helpers (also used after a restart, on groups we did not start ourselves)
# ------------------------------------------------------------------------------------------------------------


def _scan_group(pgid: int) -> list[int] | None:
    """Live (non-zombie) pids in group ``pgid`` read from /proc, or None if /proc cannot be read."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    members: list[int] = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # the process vanished between listdir and open
        # The command name (field 2) is in parentheses and may itself contain spaces or ')': split after the
        # last ')' so the following fields are state, ppid, pgrp, ...
        fields = stat[stat.rfind(b")") + 1 :].split()
        if len(fields) < 3:
            continue
        state, pgrp = fields[0], fields[2]
        if state in (b"Z", b"X"):
            continue  # dead, only waiting to be reaped: it cannot do anything any more
        try:
            if int(pgrp) == pgid:
                members.append(int(entry))
        except ValueError:
            continue
    return members


def find_group_members(pgid: int) -> list[int]:
    """Pids whose process group is ``pgid`` (field 5 of /proc/<pid>/stat), sorted.

    Zombies are left out: they have already exited and only wait for their parent (or init) to reap them, so
    they are not survivors. Returns [] if /proc is unavailable.
    """
    return sorted(_scan_group(pgid) or [])


def group_alive(pgid: int) -> bool:
    """True if process group ``pgid`` still has a running (non-zombie) member."""
    if pgid <= 0:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, it just belongs to someone else
    members = _scan_group(pgid)
    # Without /proc, trust killpg (which also counts zombies: erring on "alive" is the safe side).
    return True if members is None else bool(members)


def _reap_group_children(pgid: int) -> None:
    """Reap those of our own children that are in group ``pgid``.

    waitpid(-pgid) rather than waitpid(-1): we must not steal the exit status of unrelated children of this
    process (other subprocess.Popen objects would then report a wrong return code). Our children in the group
    are the leader and, if we are a child subreaper or PID 1, orphaned grandchildren.
    """
    while True:
        try:
            pid, _status = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        except OSError:
            return
        if pid == 0:
            return


def _check_pgid(pgid: int) -> None:
    # killpg(0) would signal our own group, killpg(1) is meaningless for a real run; killing our own group
    # would take down the service itself. These can only come from a bug or a corrupt record.
    if pgid <= 1 or pgid == os.getpgrp():
        raise ValueError(f"refusing to signal process group {pgid}")


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_group_gone(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        _reap_group_children(pgid)
        if not group_alive(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)


def kill_group(pgid: int, grace_seconds: float = 5.0) -> bool:
    """SIGTERM the group, wait up to ``grace_seconds`` for it to be empty, then SIGKILL it.

    Returns True if the group existed (had a member that is not a zombie). Works for groups whose leader is
    not our child (found after a restart): emptiness is polled with killpg(pgid, 0) and /proc rather than
    waited for. Our own children in the group are reaped; note that this includes the leader if we spawned
    it, so a Popen for that leader will no longer see its real return code.
    """
    _check_pgid(pgid)
    _reap_group_children(pgid)
    # A group of zombies only still answers killpg(pgid, 0); there is nothing left to kill in it.
    if not group_alive(pgid) or not _signal_group(pgid, signal.SIGTERM):
        return False
    # A stopped (SIGSTOP'ed) process only acts on SIGTERM once continued.
    _signal_group(pgid, signal.SIGCONT)
    if _wait_group_gone(pgid, grace_seconds):
        return True
    logger.warning("process group %d survived SIGTERM for %.1f s, sending SIGKILL", pgid, grace_seconds)
    _signal_group(pgid, signal.SIGKILL)
    if not _wait_group_gone(pgid, KILL_WAIT_SECONDS):
        logger.error("process group %d still has members %s after SIGKILL", pgid, find_group_members(pgid))
    return True


def process_has_run_id(pid: int, run_id: str) -> bool:
    """True if /proc/<pid>/environ contains ``BACKUP_RUN_ID=<run_id>``; False on any error.

    Pids are reused, so after a restart a recorded pgid may belong to an unrelated process: this check is what
    makes it safe to kill it. The environ file shows the environment the process was exec'd with, which every
    member of our run inherits.
    """
    if not run_id:
        return False
    try:
        with open(f"/proc/{int(pid)}/environ", "rb") as fh:
            environ = fh.read()
    except (OSError, ValueError):
        return False
    wanted = b"BACKUP_RUN_ID=" + os.fsencode(run_id)
    return wanted in environ.split(b"\0")


# ------------------------------------------------------------------------------------------------------------
# Line splitting
# ------------------------------------------------------------------------------------------------------------


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

    def flush(self, out: list[tuple[str, str]]) -> None:
        """End of stream: the last line may lack its newline; emit it anyway."""
        if self._pending:
            out.append((self.stream, _decode_line(self._pending)))
        self._pending = b""
        self._discarding = False


# ------------------------------------------------------------------------------------------------------------
# run_script
# ------------------------------------------------------------------------------------------------------------


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(round(seconds, 3))


def _spawn_error(program: str, cwd: str | os.PathLike[str] | None, exc: OSError) -> str:
    """A message an operator can act on, instead of a bare errno."""
    cwd_str = os.fsdecode(cwd) if cwd is not None else None
    if cwd_str is not None and exc.filename == cwd:
        return f"working directory not usable: {cwd_str} ({exc.strerror or exc})"
    # Relative paths with a slash are resolved against the child's cwd by exec, so check them there too.
    path = program
    if cwd_str is not None and not os.path.isabs(program) and os.sep in program:
        path = os.path.join(cwd_str, program)
    exists = os.sep in program and os.path.exists(path)
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        if exists:
            # The file is there, so it is the #! interpreter that exec could not find.
            return f"interpreter of script not found (check its #! line): {program}"
        return f"script not found: {program}"
    if code in (errno.EACCES, errno.EPERM):
        if exists and os.path.isdir(path):
            return f"script is a directory: {program}"
        if exists and not os.access(path, os.X_OK):
            return f"script is not executable (chmod +x it): {program}"
        return f"permission denied executing script: {program} ({exc.strerror or exc})"
    if code == errno.ENOEXEC:
        return f"exec format error (missing #! line?): {program}"
    return f"could not start script {program}: {exc.strerror or exc}"


class _Phase(enum.Enum):
    RUNNING = "running"
    TERMINATING = "terminating"  # SIGTERM sent, waiting up to the grace period
    KILLING = "killing"  # SIGKILL sent, waiting a short while for the group to vanish


_PIDFD = object()  # selector key data marking the leader's pidfd


class _Run:
    """State of one run_script call; everything happens in the calling thread."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        started: float,
        *,
        buffer: OutputBuffer,
        timeout: float | None,
        on_start: Callable[[int], None] | None,
        on_lines: Callable[[list[tuple[str, str]]], None] | None,
        on_tick: Callable[[float], None] | None,
        should_stop: Callable[[], EndReason | None] | None,
        tick_seconds: float,
        kill_grace_seconds: float,
    ) -> None:
        self.proc = proc
        self.pgid = proc.pid  # start_new_session=True: the leader's pid is the group id
        self.started = started
        self.buffer = buffer
        self.timeout = timeout
        self.on_start = on_start
        self.on_lines = on_lines
        self.on_tick = on_tick
        self.should_stop = should_stop
        self.tick_seconds = tick_seconds
        self.kill_grace_seconds = kill_grace_seconds

        self.reason: EndReason | None = None  # set when *we* end the run
        self.phase = _Phase.RUNNING
        self.phase_deadline = 0.0
        self.exited_at: float | None = None
        self.group_gone = False

        self.selector = selectors.DefaultSelector()
        self.open_fds: dict[int, _LineSplitter] = {}
        assert proc.stdout is not None and proc.stderr is not None
        for pipe, stream in ((proc.stdout, "out"), (proc.stderr, "err")):
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            splitter = _LineSplitter(stream)
            self.open_fds[fd] = splitter
            self.selector.register(fd, selectors.EVENT_READ, splitter)
        # A pidfd becomes readable when the leader exits, so we notice the exit at once even while a
        # background child keeps the pipes open, without waking up periodically to poll.
        self.pidfd: int | None = None
        try:
            self.pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self.pidfd = None
        if self.pidfd is not None:
            self.selector.register(self.pidfd, selectors.EVENT_READ, _PIDFD)

    # -- main loop -------------------------------------------------------------------------------------------

    def execute(self) -> RunResult:
        finished = False
        try:
            if self.on_start is not None:
                self.on_start(self.pgid)
            self._loop()
            finished = True
        except BaseException:
            # A failing callback (or KeyboardInterrupt) must not leave the backup running unsupervised.
            self._terminate_blocking()
            finished = True
            raise
        finally:
            if not finished:
                # The graceful kill itself was interrupted: last resort, never leave the group behind.
                self._last_resort_kill()
            self._close()
        return self._result()

    def _loop(self) -> None:
        deadline = None if self.timeout is None else self.started + self.timeout
        next_tick = self.started + self.tick_seconds
        while True:
            now = time.monotonic()
            if self.proc.poll() is not None and self.exited_at is None:
                self.exited_at = now
                self._drop_pidfd()

            if self.exited_at is not None:
                drain_over = now >= self.exited_at + DRAIN_SECONDS
                if not self.open_fds or drain_over or self.phase is not _Phase.RUNNING:
                    _reap_group_children(self.pgid)
                    if not group_alive(self.pgid):
                        self.group_gone = True
                        break
                    if self.phase is _Phase.RUNNING and drain_over:
                        logger.warning(
                            "script %d exited but its group is still running after %.0f s; killing it",
                            self.pgid,
                            DRAIN_SECONDS,
                        )
                        self._start_termination(now, None)
            elif self.phase is _Phase.RUNNING and deadline is not None and now >= deadline:
                self._start_termination(now, EndReason.TIMEOUT)

            if self.phase is _Phase.TERMINATING and now >= self.phase_deadline:
                logger.warning("process group %d ignored SIGTERM; sending SIGKILL", self.pgid)
                _signal_group(self.pgid, signal.SIGKILL)
                self.phase = _Phase.KILLING
                self.phase_deadline = now + KILL_WAIT_SECONDS
            elif self.phase is _Phase.KILLING and now >= self.phase_deadline:
                logger.error("process group %d did not disappear after SIGKILL; giving up", self.pgid)
                break

            if now >= next_tick:
                if self.on_tick is not None:
                    self.on_tick(now - self.started)
                if self.should_stop is not None and self.phase is _Phase.RUNNING and self.exited_at is None:
                    wanted = self.should_stop()
                    if wanted in (EndReason.CANCELLED, EndReason.SHUTDOWN):
                        self._start_termination(time.monotonic(), wanted)
                next_tick += self.tick_seconds
                if next_tick <= now:
                    next_tick = now + self.tick_seconds  # a slow callback: skip missed ticks, no burst

            batch: list[tuple[str, str]] = []
            for key, _mask in self.selector.select(self._wait_seconds(time.monotonic(), deadline, next_tick)):
                if key.data is _PIDFD:
                    continue  # the leader exited; the poll() at the top of the loop reaps it
                self._read(key.fd, batch)
            self._dispatch(batch)

        # We may stop while something outside the group still holds a pipe: take what is already buffered.
        batch = []
        self._drain_available(batch)
        for fd in list(self.open_fds):
            self._eof(fd, batch)
        self._dispatch(batch)

    def _wait_seconds(self, now: float, deadline: float | None, next_tick: float) -> float:
        targets = [next_tick]
        if self.phase is not _Phase.RUNNING:
            targets.append(self.phase_deadline)
        elif self.exited_at is not None:
            targets.append(self.exited_at + DRAIN_SECONDS)
        elif deadline is not None:
            targets.append(deadline)
        wait = max(0.0, min(targets) - now)
        if self.phase is not _Phase.RUNNING or (self.exited_at is not None and not self.open_fds):
            # Group emptiness is not signalled by any file descriptor: poll for it.
            wait = min(wait, _POLL_SECONDS)
        elif self.exited_at is None and self.pidfd is None:
            wait = min(wait, _LEADER_POLL_SECONDS)
        return wait

    # -- output ----------------------------------------------------------------------------------------------

    def _read(self, fd: int, batch: list[tuple[str, str]]) -> bool:
        """One chunk from ``fd`` into ``batch``; False if nothing was available."""
        try:
            data = os.read(fd, READ_CHUNK_BYTES)
        except BlockingIOError:
            return False
        except OSError:
            data = b""  # e.g. EIO: treat as end of stream
        if not data:
            self._eof(fd, batch)
            return False
        self.open_fds[fd].feed(data, batch)
        return True

    def _eof(self, fd: int, batch: list[tuple[str, str]]) -> None:
        splitter = self.open_fds.pop(fd)
        self.selector.unregister(fd)
        splitter.flush(batch)

    def _drain_available(self, batch: list[tuple[str, str]]) -> None:
        for fd in list(self.open_fds):
            for _ in range(_FINAL_DRAIN_CHUNKS):
                if not self._read(fd, batch):
                    break

    def _dispatch(self, batch: list[tuple[str, str]]) -> None:
        if batch:
            self.buffer.extend(batch)
            if self.on_lines is not None:
                self.on_lines(batch)

    # -- killing ---------------------------------------------------------------------------------------------

    def _start_termination(self, now: float, reason: EndReason | None) -> None:
        if reason is not None:
            self.reason = reason
        self.phase = _Phase.TERMINATING
        self.phase_deadline = now + self.kill_grace_seconds
        _signal_group(self.pgid, signal.SIGTERM)
        _signal_group(self.pgid, signal.SIGCONT)  # stopped processes act on SIGTERM only once continued

    def _group_finished(self) -> bool:
        if self.proc.poll() is None:
            return False
        self._drop_pidfd()  # an exited leader's pidfd stays readable and would turn select() into a busy loop
        _reap_group_children(self.pgid)
        return not group_alive(self.pgid)

    def _wait_finished(self, seconds: float) -> bool:
        """Wait for leader exit + empty group, keeping the pipes drained (into the buffer, no callbacks) so a
        child writing while it cleans up cannot block on a full pipe."""
        deadline = time.monotonic() + seconds
        while True:
            if self._group_finished():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            batch: list[tuple[str, str]] = []
            for key, _mask in self.selector.select(min(remaining, _POLL_SECONDS)):
                if key.data is not _PIDFD:
                    self._read(key.fd, batch)
            self.buffer.extend(batch)

    def _terminate_blocking(self) -> None:
        if self.group_gone:
            return
        if self.phase is _Phase.RUNNING:
            _signal_group(self.pgid, signal.SIGTERM)
            _signal_group(self.pgid, signal.SIGCONT)
            if self._wait_finished(self.kill_grace_seconds):
                self.group_gone = True
                return
        _signal_group(self.pgid, signal.SIGKILL)
        self.group_gone = self._wait_finished(KILL_WAIT_SECONDS)

    def _last_resort_kill(self) -> None:
        if self.group_gone:
            return
        with contextlib.suppress(OSError):
            os.killpg(self.pgid, signal.SIGKILL)
        self.proc.poll()

    # -- teardown --------------------------------------------------------------------------------------------

    def _drop_pidfd(self) -> None:
        if self.pidfd is not None:
            self.selector.unregister(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None

    def _close(self) -> None:
        self._drop_pidfd()
        self.selector.close()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def _result(self) -> RunResult:
        code = self.proc.returncode
        reason = self.reason or EndReason.EXITED
        if reason is EndReason.TIMEOUT:
            error = f"timed out after {_format_seconds(self.timeout or 0.0)} s"
        elif reason is EndReason.CANCELLED:
            error = "cancelled"
        elif reason is EndReason.SHUTDOWN:
            error = "killed on shutdown"
        elif code is None:
            error = "script could not be reaped after SIGKILL"
        elif code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            error = f"killed by {name}"
        elif code > 0:
            error = f"exited with code {code}"
        else:
            error = ""
        return RunResult(
            reason=reason,
            exit_code=code,
            error=error,
            pid=self.pgid,
            output=self.buffer,
            duration_seconds=time.monotonic() - self.started,
        )


def run_script(
    script: str | os.PathLike[str],
    *,
    env: Mapping[str, str],
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    on_start: Callable[[int], None] | None = None,
    on_lines: Callable[[list[tuple[str, str]]], None] | None = None,
    on_tick: Callable[[float], None] | None = None,
    should_stop: Callable[[], EndReason | None] | None = None,
    tick_seconds: float = 0.5,
    kill_grace_seconds: float = 5.0,
    output: OutputBuffer | None = None,
) -> RunResult:
    """Run ``script`` to completion (blocking) as its own process group, streaming its output.

    The script is exec'd directly (its own #! line decides the interpreter; a non-executable file is
    SPAWN_FAILED, never silently run through bash) with stdin from /dev/null. As with exec, a bare name
    without a slash is looked up on PATH, and a relative path with a slash is relative to ``cwd``.

    ``on_start(pid)`` is called right after spawn (pid == pgid). ``on_lines`` receives batches of
    ``(stream, line)`` pairs, one batch per read chunk, stream "out"/"err", lines without newline, decoded as
    UTF-8 with errors="replace", lines over 64 KiB truncated. ``on_tick(elapsed)`` is called about every
    ``tick_seconds`` even when the script is silent, and ``should_stop()`` is polled on every tick: returning
    CANCELLED or SHUTDOWN ends the group. On timeout, cancel or shutdown the whole group gets SIGTERM, then
    SIGKILL after ``kill_grace_seconds``; the call returns once the leader is reaped and the group is empty
    (or shortly after SIGKILL). All callbacks run in the calling thread; if one raises, the group is killed
    and the exception propagates.
    """
    if tick_seconds <= 0:
        raise ValueError("tick_seconds must be > 0")
    if kill_grace_seconds < 0:
        raise ValueError("kill_grace_seconds must be >= 0")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be >= 0")
    buffer = output if output is not None else OutputBuffer()
    program = os.fsdecode(script)
    child_env = dict(env)
    # Same reason as in build_env, in case the caller built the environment by hand.
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [program],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env,
            cwd=cwd,
            start_new_session=True,  # own session and group: one killpg reaches every descendant
            close_fds=True,
            bufsize=0,
        )
    except OSError as exc:
        return RunResult(
            reason=EndReason.SPAWN_FAILED,
            exit_code=None,
            error=_spawn_error(program, cwd, exc),
            pid=None,
            output=buffer,
            duration_seconds=time.monotonic() - started,
        )
    try:
        run = _Run(
            proc,
            started,
            buffer=buffer,
            timeout=timeout,
            on_start=on_start,
            on_lines=on_lines,
            on_tick=on_tick,
            should_stop=should_stop,
            tick_seconds=tick_seconds,
            kill_grace_seconds=kill_grace_seconds,
        )
    except BaseException:
        # Setting up the reader failed after the spawn: do not leave an unsupervised backup running.
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return run.execute()
