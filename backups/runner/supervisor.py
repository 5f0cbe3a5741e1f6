"""The supervisor of one run: a tiny program that owns a command's output and exit status.

It is started by :func:`backups.runner.spawn` as ``python -I supervisor.py <run_dir>`` in a new session, so
its pid is the process group id, and it starts the command in that same group. It imports only the standard
library (the file is run by path, in isolated mode, with no PYTHONPATH), and the runner package imports its
constants and /proc helpers, so the writer and the reader of the files below share one definition.

Protocol with the spawner:

* stdin carries the spec as one JSON document: ``{"command": [...], "env": {...}, "cwd": "/abs",
  "run_id": "...", "kill_grace_seconds": 5.0, "drain_seconds": 2.0, "segment_bytes": N, "keep_segments": K}``.
  The environment travels through the pipe, not argv or a file: it stays out of ``ps`` and off the disk.
* stdout carries one JSON line, ``{"started": <pids record>}`` or ``{"spawn_error": {...}}``, and is then
  closed (pointed at /dev/null) so the supervisor holds nothing of the spawner's.
* stderr is ``<run_dir>/supervisor.log`` (tracebacks, if any).

Files in ``<run_dir>`` (all 0600, the folder 0700):

* ``pids`` — JSON, written atomically once the command runs: run id, boot id, pgid, supervisor and command
  pid with their start times (field 22 of /proc/<pid>/stat), wall-clock start. Pids are reused; a pid whose
  start time and boot id match, whose group is the pgid and whose environ holds ``BACKUP_RUN_ID=<run id>`` is
  ours.
* ``exit`` — JSON, written atomically (tmp + fsync + rename + fsync of the folder) as soon as the command is
  reaped: ``returncode`` (negative = killed by that signal), ``code``, ``signal``; or ``spawn_error``
  (errno, strerror, filename) if the command could not be started.
* ``output.000000``, ``output.000001`` … — the command's stdout and stderr as records
  ``<1 byte kind><4 bytes big-endian length><payload>``, kind ``o`` (stdout) or ``e`` (stderr), the payload
  being exactly the bytes of one read from that pipe (at most 64 KiB), in the order they were read, so each
  stream is exact and the two are interleaved as a terminal would show them. The last record is ``x``
  (end: nothing more will be written), its payload JSON ``{"lost_bytes": n}``. A record never spans two
  segments.

Growth is bounded by rotation: once a segment would exceed ``segment_bytes`` the next one is started, and
only the first segment (the start of the log) and the newest ``keep_segments`` are kept. A reader that has a
deleted segment open still reads it to its end; a reader that falls further behind skips to the oldest kept
segment. A write that fails (disk full) drops that record (counted in ``lost_bytes``) and never stops the
reading of the pipes, so the command can never block on a full pipe.

Lifetime: the command's exit status is recorded at once; the supervisor then keeps reading until both pipes
reach EOF and nothing else is left in the group. Children still running ``drain_seconds`` after the command
exited are sent SIGTERM and, ``kill_grace_seconds`` later, SIGKILL (one by one, never the supervisor). Then
the end record is written and the supervisor exits. SIGTERM, SIGINT and SIGHUP are caught, not ignored (an
ignored disposition would be inherited by the command through exec; a handler is reset by exec): a SIGTERM to
the whole group (cancel, timeout) ends the command while the supervisor stays to record how it ended. Only
SIGKILL stops the supervisor; the follower then notices it is gone and ends whatever is left of the group.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import struct
import subprocess
import sys
import time

# typing costs milliseconds at every start and is only needed by type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

RUN_ID_VARIABLE = "BACKUP_RUN_ID"
PIDS_FILE = "pids"
EXIT_FILE = "exit"
LOG_FILE = "supervisor.log"
OUTPUT_PREFIX = "output."

RECORD_HEADER = struct.Struct(">cI")
STDOUT = b"o"
STDERR = b"e"
END = b"x"

#: Size of one pipe read, hence the largest record payload.
READ_CHUNK_BYTES = 64 * 1024
DEFAULT_SEGMENT_BYTES = 32 * 1024 * 1024
DEFAULT_KEEP_SEGMENTS = 2
DRAIN_SECONDS = 2.0
KILL_WAIT_SECONDS = 2.0
POLL_SECONDS = 0.02
#: A read smaller than this makes the supervisor wait COALESCE_SECONDS before the next one: it adds at most
#: that much latency, and even at that pause a 64 KiB pipe only fills (and blocks the writer) at 32 MB/s.
COALESCE_BELOW_BYTES = 16 * 1024
COALESCE_SECONDS = 0.002
#: Upper bound on a wait for the command's exit when no pidfd is available.
_LEADER_POLL_SECONDS = 0.1
#: Bound on the final non-blocking drain once we stopped waiting for EOF (pipes held outside the group).
_FINAL_DRAIN_CHUNKS = 64


def segment_name(index: int) -> str:
    return f"{OUTPUT_PREFIX}{index:06d}"


def segment_index(name: str) -> int | None:
    suffix = name[len(OUTPUT_PREFIX) :]
    if not name.startswith(OUTPUT_PREFIX) or len(suffix) != 6 or not suffix.isdigit():
        return None
    return int(suffix)


# ------------------------------------------------------------------------------------------------------------
# /proc helpers (shared with the runner package)
# ------------------------------------------------------------------------------------------------------------


def read_stat(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat from field 3 (state) on, or None if the process does not exist."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as fh:
            stat = fh.read()
    except (OSError, ValueError):
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or ')': split after the last
    # ')' so the following fields are state, ppid, pgrp, ...
    fields = stat[stat.rfind(b")") + 1 :].split()
    return fields if len(fields) >= 20 else None


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the boot id, it tells a reused pid apart."""
    fields = read_stat(pid)
    return int(fields[19]) if fields else None


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def environ_has(pid: int, name: str, value: str) -> bool:
    """True if /proc/<pid>/environ holds ``name=value``; False on any error (gone, a zombie, not ours)."""
    if not value:
        return False
    try:
        with open(f"/proc/{int(pid)}/environ", "rb") as fh:
            environ = fh.read()
    except (OSError, ValueError):
        return False
    return os.fsencode(f"{name}={value}") in environ.split(b"\0")


def scan_group(pgid: int) -> list[int] | None:
    """Live (non-zombie) pids in group ``pgid`` read from /proc, or None if /proc cannot be read."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    members: list[int] = []
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = read_stat(int(entry))
        if fields is None or fields[0] in (b"Z", b"X"):
            continue  # vanished, or dead and only waiting to be reaped: it cannot do anything any more
        try:
            if int(fields[2]) == pgid:
                members.append(int(entry))
        except ValueError:
            continue
    return members


def signal_if_in_group(pid: int, pgid: int, sig: int) -> None:
    """Signal ``pid`` only if it is (still) in group ``pgid``: a pidfd pins the process between check and
    kill, so a pid reused in that moment is never hit."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fields = read_stat(pid)
        if fields is not None and int(fields[2]) == pgid:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        return
    try:
        fields = read_stat(pid)
        if fields is not None and int(fields[2]) == pgid:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, sig)
    finally:
        os.close(pidfd)


def write_atomic(path: str, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data``: a reader sees the old file or the whole new one. ``durable`` also makes
    it survive a crash of the machine (fsync of the file, then of the folder after the rename)."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if not durable:
        return
    folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_json(path: str) -> dict[str, Any] | None:
    """A JSON object file, or None if it is missing or unreadable (no torn file: see write_atomic)."""
    try:
        with open(path, "rb") as fh:
            value = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# ------------------------------------------------------------------------------------------------------------
# The output segments
# ------------------------------------------------------------------------------------------------------------


class _Output:
    """Appends records to the current segment and rotates; never raises on a failed write."""

    def __init__(self, run_dir: str, segment_bytes: int, keep_segments: int) -> None:
        self.run_dir = run_dir
        self.segment_bytes = max(segment_bytes, RECORD_HEADER.size + READ_CHUNK_BYTES)
        self.keep_segments = max(keep_segments, 1)
        self.index = 0
        self.size = 0
        self.lost_bytes = 0
        self.fd: int | None = self._create(0)

    def _create(self, index: int) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        return os.open(os.path.join(self.run_dir, segment_name(index)), flags, 0o600)

    def _rotate(self) -> bool:
        try:
            fd = self._create(self.index + 1)
        except OSError:
            return False
        if self.fd is not None:
            os.close(self.fd)
        self.fd, self.index, self.size = fd, self.index + 1, 0
        # The first segment holds the start of the log (versions, configuration): always kept.
        stale = self.index - self.keep_segments
        if stale > 0:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.run_dir, segment_name(stale)))
        return True

    def write(self, kind: bytes, payload: bytes) -> None:
        record = RECORD_HEADER.pack(kind, len(payload)) + payload
        full = self.size > 0 and self.size + len(record) > self.segment_bytes
        if (self.fd is None or full) and not self._rotate():
            self.lost_bytes += len(payload)
            return
        assert self.fd is not None
        view = memoryview(record)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            self.lost_bytes += len(payload)
            # A torn record would make the rest of the segment unreadable: cut it off, or else continue in a
            # fresh segment.
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                os.close(self.fd)
                self.fd = None
            return
        self.size += len(record)

    def end(self) -> None:
        self.write(END, json.dumps({"lost_bytes": self.lost_bytes}).encode())
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ------------------------------------------------------------------------------------------------------------
# Supervision
# ------------------------------------------------------------------------------------------------------------


class _Supervision:
    def __init__(self, proc: subprocess.Popen[bytes], output: _Output, spec: dict[str, Any], run_dir: str):
        self.proc = proc
        self.output = output
        self.run_dir = run_dir
        self.run_id = str(spec["run_id"])
        self.drain_seconds = float(spec.get("drain_seconds", DRAIN_SECONDS))
        self.kill_grace_seconds = float(spec.get("kill_grace_seconds", 5.0))
        self.pgid = os.getpgrp()
        self.me = os.getpid()
        self.selector = selectors.DefaultSelector()
        self.open_fds: dict[int, bytes] = {}
        assert proc.stdout is not None and proc.stderr is not None
        for pipe, kind in ((proc.stdout, STDOUT), (proc.stderr, STDERR)):
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            self.open_fds[fd] = kind
            self.selector.register(fd, selectors.EVENT_READ, kind)
        self.pidfd: int | None
        try:
            self.pidfd = os.pidfd_open(proc.pid)
            self.selector.register(self.pidfd, selectors.EVENT_READ, None)
        except (AttributeError, OSError):
            self.pidfd = None
        self.exit_recorded = False
        self.stop_signal: int | None = None

    def on_signal(self, signum: int, _frame: object) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum

    def run(self) -> None:
        try:
            self._loop()
        except BaseException:
            # Whatever broke here, the command must not go on unwatched.
            self._kill_others(signal.SIGKILL)
            raise
        finally:
            if not self.exit_recorded and self.proc.poll() is not None:
                self._record_exit()
            self.output.end()

    def _loop(self) -> None:
        exited_at: float | None = None
        while True:
            now = time.monotonic()
            if exited_at is None and self.proc.poll() is not None:
                exited_at = now
                self._drop_pidfd()
                self._record_exit()
            if exited_at is not None:
                if not self.open_fds and not self._others():
                    break
                if now >= exited_at + self.drain_seconds:
                    self._end_leftovers()
                    break
            if exited_at is None:
                wait: float | None = None if self.pidfd is not None else _LEADER_POLL_SECONDS
            else:
                wait = max(0.0, exited_at + self.drain_seconds - now)
                if not self.open_fds:
                    wait = min(wait, POLL_SECONDS)  # group emptiness is not signalled by any descriptor
            if 0 < self._read_ready(wait) < COALESCE_BELOW_BYTES and exited_at is None:
                # Output trickling in small writes (an unbuffered Python job writes each line): let it gather
                # in the pipe for a moment, so one read and one record carry many lines, not one each.
                time.sleep(COALESCE_SECONDS)
        self._drain_available()

    def _read_ready(self, wait: float | None) -> int:
        got = 0
        for key, _mask in self.selector.select(wait):
            if key.data is not None:
                got += self._read(key.fd)
        return got

    def _read(self, fd: int) -> int:
        """Bytes read from ``fd`` into the output (0: nothing available, or end of stream)."""
        try:
            data = os.read(fd, READ_CHUNK_BYTES)
        except BlockingIOError:
            return 0
        except OSError:
            data = b""  # e.g. EIO: treat as end of stream
        if not data:
            del self.open_fds[fd]
            self.selector.unregister(fd)
            os.close(fd)
            return 0
        self.output.write(self.open_fds[fd], data)
        return len(data)

    def _drain_available(self) -> None:
        for fd in list(self.open_fds):
            for _ in range(_FINAL_DRAIN_CHUNKS):
                if not self._read(fd):
                    break

    def _others(self) -> list[int]:
        members = scan_group(self.pgid)
        return [pid for pid in members or [] if pid != self.me]

    def _kill_others(self, sig: int) -> None:
        for pid in self._others():
            signal_if_in_group(pid, self.pgid, sig)

    def _wait_others_gone(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self._others():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Keep the pipes drained meanwhile: a child writing while it cleans up must not block.
            self._read_ready(min(remaining, POLL_SECONDS))
        return True

    def _end_leftovers(self) -> None:
        """Children outliving the command by drain_seconds: nobody would ever end them otherwise."""
        if not self._others():
            return
        print(f"supervisor: ending processes left in group {self.pgid}", file=sys.stderr, flush=True)
        # The supervisor catches SIGTERM, so the group-wide signal reaches every leftover but not itself.
        with contextlib.suppress(OSError):
            os.killpg(self.pgid, signal.SIGTERM)
            os.killpg(self.pgid, signal.SIGCONT)
        if self._wait_others_gone(self.kill_grace_seconds):
            return
        self._kill_others(signal.SIGKILL)
        self._wait_others_gone(KILL_WAIT_SECONDS)

    def _record_exit(self) -> None:
        code = self.proc.returncode
        record: dict[str, Any] = {
            "run_id": self.run_id,
            "returncode": code,
            "code": code if code >= 0 else None,
            "signal": -code if code < 0 else None,
            "stop_signal_received": self.stop_signal,
            "finished_at": time.time(),
        }
        try:
            write_atomic(os.path.join(self.run_dir, EXIT_FILE), json.dumps(record).encode())
        except OSError as exc:
            print(f"supervisor: could not record the exit status {code}: {exc}", file=sys.stderr, flush=True)
            return
        self.exit_recorded = True

    def _drop_pidfd(self) -> None:
        # An exited process's pidfd stays readable and would turn select() into a busy loop.
        if self.pidfd is not None:
            self.selector.unregister(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None


def _handshake(message: dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    with contextlib.suppress(OSError):  # the spawner is gone: nobody to tell, the files say it all
        os.write(1, data)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    os.close(devnull)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: supervisor.py <run_dir>  (spec as JSON on stdin)", file=sys.stderr)
        return 2
    run_dir = argv[1]
    spec = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)

    stop_signals: list[int] = []

    def early_signal(signum: int, _frame: object) -> None:
        stop_signals.append(signum)

    # Installed before the command is started: a group SIGTERM in between must not kill the supervisor.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, early_signal)

    output = _Output(
        run_dir,
        int(spec.get("segment_bytes", DEFAULT_SEGMENT_BYTES)),
        int(spec.get("keep_segments", DEFAULT_KEEP_SEGMENTS)),
    )
    run_id = str(spec["run_id"])
    try:
        # restore_signals (the default) gives the command SIGPIPE and SIGXFSZ back, which Python ignores.
        proc = subprocess.Popen(
            [str(arg) for arg in spec["command"]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={str(k): str(v) for k, v in spec["env"].items()},
            cwd=spec.get("cwd"),
            close_fds=True,
            bufsize=0,
        )
    except OSError as exc:
        failure = {
            "run_id": run_id,
            "spawn_error": {
                "errno": exc.errno,
                "strerror": exc.strerror,
                "filename": os.fsdecode(exc.filename) if exc.filename is not None else None,
            },
            "command": str(spec["command"][0]),
            "cwd": spec.get("cwd"),
            "finished_at": time.time(),
        }
        write_atomic(os.path.join(run_dir, EXIT_FILE), json.dumps(failure).encode())
        output.end()
        _handshake({"spawn_error": failure["spawn_error"]})
        return 0
    pids = {
        "run_id": run_id,
        "boot_id": boot_id(),
        "pgid": os.getpgrp(),
        "supervisor_pid": os.getpid(),
        "supervisor_start": start_ticks(os.getpid()),
        "command_pid": proc.pid,
        "command_start": start_ticks(proc.pid),
        "started_at": time.time(),
    }
    supervision = _Supervision(proc, output, spec, run_dir)
    if stop_signals:
        supervision.stop_signal = stop_signals[0]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, supervision.on_signal)
    try:
        # Not fsynced: the pids only mean something until the next boot, and the boot id says which one.
        write_atomic(os.path.join(run_dir, PIDS_FILE), json.dumps(pids).encode(), durable=False)
    except OSError:
        # Without the pids record nobody could ever find this run again: do not run it.
        supervision._kill_others(signal.SIGKILL)
        raise
    _handshake({"started": pids})
    supervision.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
