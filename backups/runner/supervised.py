"""A command as a supervised, re-attachable process group: spawn, follow, inspect, attach, cleanup.

``spawn`` starts ``supervisor.py`` (see its docstring for the files and their formats) in a new session; the
supervisor starts the command in its own group and owns its output and exit status, so the command outlives
the process that spawned it. ``follow`` tails the output file and ends when the supervisor has written its
last record (or is gone and everything it wrote has been read). A service that restarts calls ``inspect`` for
each run its database says is running, and ``attach`` (= inspect + follow) to resume following it.

State folder layout (``state_dir`` is the caller's, e.g. the service's state folder)::

    <state_dir>/runs/<run_id>/pids             who runs: pgid, pids, start times, boot id (JSON)
    <state_dir>/runs/<run_id>/exit             how the command ended (JSON), written atomically
    <state_dir>/runs/<run_id>/output.NNNNNN    the output records, rotated (first + newest kept)
    <state_dir>/runs/<run_id>/supervisor.log   the supervisor's own complaints

A folder is created once per run (a second spawn with the same run id is refused) and removed only by
``cleanup``, which the caller runs after it has recorded the result: a crash in between loses nothing.
``attach`` re-reads the output from the first kept segment: the caller's progress parsing is monotonic and its
OutputBuffer keeps head and tail, so reading the start again costs time (about 0.1 s per million lines) but
no correctness.

Recognising our own processes: pids are reused, so a recorded pid counts as our supervisor only if the boot id
matches, its start time (field 22 of /proc/<pid>/stat) matches, its group is the recorded pgid, it is not a
zombie and its environ holds ``BACKUP_RUN_ID=<run id>``. The command and everything it starts carry the same
variable (spawn adds it when the caller's environment lacks it), which is how leftovers of a run whose
supervisor died are told apart from strangers.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backups.runner import groups, supervisor
from backups.runner.output import OutputBuffer, OutputReader

__all__ = [
    "DRAIN_SECONDS",
    "Alive",
    "EndReason",
    "Exited",
    "Gone",
    "Handle",
    "RunResult",
    "SpawnFailed",
    "attach",
    "cleanup",
    "follow",
    "inspect",
    "recorded_runs",
    "run_dir",
    "spawn",
]

logger = logging.getLogger("backups.runner")

#: The supervisor program, run by path in isolated mode without site-packages (``python -I -S``): it needs the
#: standard library only, and the command's environment needs no PYTHONPATH.
SUPERVISOR_PATH = Path(supervisor.__file__).resolve()
#: How long the supervisor keeps reading after the command exited while background children hold the pipes.
DRAIN_SECONDS = supervisor.DRAIN_SECONDS
KILL_WAIT_SECONDS = supervisor.KILL_WAIT_SECONDS
#: How long spawn waits for the supervisor to report that the command started (a loaded machine is slow).
START_TIMEOUT_SECONDS = 30.0
#: New output is not signalled by any descriptor: a follower that caught up looks at the file again after
#: FIRST_TAIL_POLL_SECONDS, doubling while nothing comes, up to TAIL_POLL_SECONDS. (The end of the run is
#: signalled: a pidfd on the supervisor wakes the follower at once.)
FIRST_TAIL_POLL_SECONDS = 0.002
TAIL_POLL_SECONDS = 0.05
_POLL_SECONDS = supervisor.POLL_SECONDS
#: A run id names a folder: one path component, no dot files.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class EndReason(str, enum.Enum):  # noqa: UP042 - public API, kept exactly as specified
    EXITED = "exited"  # the script ended by itself (any exit code)
    TIMEOUT = "timeout"  # killed after the timeout
    CANCELLED = "cancelled"  # killed because should_stop() returned EndReason.CANCELLED
    SHUTDOWN = "shutdown"  # killed because should_stop() returned EndReason.SHUTDOWN
    SPAWN_FAILED = "spawn_failed"  # could not start: missing, not executable, exec format error...
    DETACHED = "detached"  # should_stop() returned DETACHED: we stopped following, the group runs on


@dataclass
class RunResult:
    reason: EndReason
    # The process's return code (negative signal number if killed by a signal), None if it never started, if
    # we detached, or if its supervisor died before it could record it.
    exit_code: int | None
    # Human explanation for anything but a clean exit; "" when the exit code is 0.
    error: str
    # The process group id (the supervisor's pid), None if nothing was started.
    pid: int | None
    output: OutputBuffer
    duration_seconds: float
    # Output that never reached the output file (the disk was full), in bytes, as the supervisor counted it.
    output_bytes_lost: int = 0
    # Output segments rotated away before this follower read them (it fell behind, or attached late).
    output_segments_skipped: int = 0


class SpawnFailed(Exception):
    """The command could not be started; ``str()`` is a message an operator can act on."""

    def __init__(self, message: str, os_error: OSError | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.os_error = os_error


@dataclass(frozen=True, eq=False)
class Handle:
    """A started run: enough to follow it, signal its group, and recognise it after a restart."""

    run_id: str
    run_dir: Path
    pgid: int  # == supervisor_pid
    supervisor_pid: int
    command_pid: int
    started_at: float  # time.time() when the command started
    supervisor_start: int | None  # start time of the supervisor in clock ticks since boot
    boot_id: str
    # Set when this process spawned the supervisor: follow reaps it. None after inspect().
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Alive:
    """The run's supervisor is running: ``follow(state.handle, ...)`` resumes following it."""

    handle: Handle


@dataclass(frozen=True)
class Exited:
    """The command finished and its exit status is recorded. ``follow(state.handle, ...)`` reads the output
    and returns the RunResult at once. ``handle`` is None if the command never started (``error`` says why).
    ``leftover_pids``: processes of this run still alive although its supervisor is gone (end them with
    ``kill_group(handle.pgid)``; follow does)."""

    handle: Handle | None
    exit_code: int | None
    error: str
    leftover_pids: list[int]


@dataclass(frozen=True)
class Gone:
    """Neither a live supervisor nor an exit status: the run was interrupted. ``leftover_pids`` are live
    processes that still carry this run's id in group ``pgid`` (nobody watches them: end them)."""

    run_dir: Path
    pgid: int | None
    leftover_pids: list[int]


# ------------------------------------------------------------------------------------------------------------
# spawn
# ------------------------------------------------------------------------------------------------------------


def run_dir(state_dir: str | os.PathLike[str], run_id: str) -> Path:
    """``<state_dir>/runs/<run_id>``; refuses a run id that is not a plain file name."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"invalid run id for a state folder: {run_id!r}")
    return Path(state_dir) / "runs" / run_id


def spawn_error_message(program: str, cwd: str | os.PathLike[str] | None, exc: OSError) -> str:
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


def _spawn_failure(
    report: Mapping[str, Any], program: str, cwd: str | os.PathLike[str] | None
) -> SpawnFailed:
    filename: Any = report.get("filename")
    cwd_abs = report.get("cwd")
    if cwd is not None and filename is not None and filename == cwd_abs:
        filename = cwd  # the caller's spelling, as exec would have reported it
    exc = OSError(report.get("errno") or 0, report.get("strerror") or "unknown error", filename)
    return SpawnFailed(spawn_error_message(program, cwd, exc), exc)


def _log_tail(folder: Path) -> str:
    try:
        lines = (folder / supervisor.LOG_FILE).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def spawn(
    command: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str],
    cwd: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str],
    run_id: str,
    kill_grace_seconds: float = 5.0,
    drain_seconds: float = DRAIN_SECONDS,
    segment_bytes: int = supervisor.DEFAULT_SEGMENT_BYTES,
    keep_segments: int = supervisor.DEFAULT_KEEP_SEGMENTS,
    start_timeout: float = START_TIMEOUT_SECONDS,
) -> Handle:
    """Start ``command`` under a supervisor in a new session; return once the command runs.

    ``command`` is an argument list, exec'd directly (a bare name is looked up on the PATH of ``env``, a
    relative path with a slash is relative to ``cwd``), with stdin from /dev/null and ``env`` exactly (plus
    ``PYTHONUNBUFFERED=1`` and ``BACKUP_RUN_ID=<run_id>`` when missing; a different BACKUP_RUN_ID is refused).
    ``kill_grace_seconds`` and ``drain_seconds`` are the supervisor's, for children the command leaves behind.
    Raises SpawnFailed if the command cannot be started (its folder then holds the failure in ``exit``),
    FileExistsError if the run already has a state folder.
    """
    argv = [os.fsdecode(arg) for arg in command]
    if not argv:
        raise ValueError("empty command")
    folder = run_dir(state_dir, run_id)
    child_env: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"environment entries must be str, got {key!r}={type(value).__name__}")
        child_env[key] = value
    # Same reason as in build_env, in case the caller built the environment by hand.
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    if child_env.setdefault(supervisor.RUN_ID_VARIABLE, run_id) != run_id:
        raise ValueError(f"{supervisor.RUN_ID_VARIABLE} in env differs from run_id {run_id!r}")
    cwd_abs = os.path.abspath(os.fsdecode(cwd)) if cwd is not None else os.getcwd()
    folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.mkdir(mode=0o700)
    spec = {
        "command": argv,
        "env": child_env,
        "cwd": cwd_abs,
        "run_id": run_id,
        "kill_grace_seconds": kill_grace_seconds,
        "drain_seconds": drain_seconds,
        "segment_bytes": segment_bytes,
        "keep_segments": keep_segments,
    }
    log_flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    log_fd = os.open(folder / supervisor.LOG_FILE, log_flags, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(SUPERVISOR_PATH), str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_fd,
            # The supervisor's own environment is only the marker: the command's travels through the pipe.
            env={supervisor.RUN_ID_VARIABLE: run_id},
            cwd="/",  # hold no mount point busy for hours
            start_new_session=True,  # own session and group: neither the service's signals nor its death
            close_fds=True,
            bufsize=0,
        )
    except OSError as exc:
        message = f"could not start the supervisor ({sys.executable}): {exc.strerror or exc}"
        raise SpawnFailed(message, exc) from exc
    finally:
        os.close(log_fd)
    try:
        message = _handshake(proc, json.dumps(spec).encode(), start_timeout)
    except BaseException:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if "started" in message:
        pids = message["started"]
        return Handle(
            run_id=run_id,
            run_dir=folder,
            pgid=int(pids["pgid"]),
            supervisor_pid=int(pids["supervisor_pid"]),
            command_pid=int(pids["command_pid"]),
            started_at=float(pids["started_at"]),
            supervisor_start=pids.get("supervisor_start"),
            boot_id=str(pids.get("boot_id", "")),
            process=proc,
        )
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(KILL_WAIT_SECONDS)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if "spawn_error" in message:
        raise _spawn_failure({**message["spawn_error"], "cwd": cwd_abs}, argv[0], cwd)
    why = _log_tail(folder) or f"it exited with code {proc.returncode}"
    raise SpawnFailed(f"the supervisor could not start {argv[0]}: {why}")


def _handshake(proc: subprocess.Popen[bytes], spec: bytes, timeout: float) -> dict[str, Any]:
    """Send the spec, read the supervisor's one-line answer; {} if it died or stayed silent."""
    assert proc.stdin is not None and proc.stdout is not None
    try:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(spec)
    finally:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    deadline = time.monotonic() + timeout
    data = b""
    fd = proc.stdout.fileno()
    try:
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise SpawnFailed(f"the supervisor did not answer within {timeout:g} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                return {}
            data += chunk
    finally:
        proc.stdout.close()
    try:
        message = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


# ------------------------------------------------------------------------------------------------------------
# inspect / attach / cleanup
# ------------------------------------------------------------------------------------------------------------


def _is_our_supervisor(handle: Handle) -> bool:
    if handle.boot_id and handle.boot_id != supervisor.boot_id():
        return False
    fields = supervisor.read_stat(handle.supervisor_pid)
    if fields is None or fields[0] in (b"Z", b"X"):
        return False
    try:
        if int(fields[2]) != handle.pgid or int(fields[19]) != handle.supervisor_start:
            return False
    except ValueError:
        return False
    return groups.process_has_run_id(handle.supervisor_pid, handle.run_id)


def _leftovers(handle: Handle) -> list[int]:
    if handle.boot_id and handle.boot_id != supervisor.boot_id():
        return []
    members = groups.find_group_members(handle.pgid)
    return [pid for pid in members if groups.process_has_run_id(pid, handle.run_id)]


def _handle_from(pids: Mapping[str, Any], folder: Path, run_id: str) -> Handle | None:
    try:
        handle = Handle(
            run_id=str(pids["run_id"]),
            run_dir=folder,
            pgid=int(pids["pgid"]),
            supervisor_pid=int(pids["supervisor_pid"]),
            command_pid=int(pids["command_pid"]),
            started_at=float(pids["started_at"]),
            supervisor_start=None if pids.get("supervisor_start") is None else int(pids["supervisor_start"]),
            boot_id=str(pids.get("boot_id", "")),
        )
    except (KeyError, TypeError, ValueError):
        return None
    if handle.run_id != run_id or handle.pgid <= 1 or handle.pgid != handle.supervisor_pid:
        return None
    return handle


def describe_exit(code: int | None) -> str:
    """ "" for 0, else "exited with code N" / "killed by SIGNAME"."""
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}" if code else ""


def inspect(state_dir: str | os.PathLike[str], run_id: str) -> Alive | Exited | Gone:
    """What became of a run, from its state folder and /proc; changes nothing."""
    folder = run_dir(state_dir, run_id)
    pids = supervisor.read_json(str(folder / supervisor.PIDS_FILE))
    exit_info = supervisor.read_json(str(folder / supervisor.EXIT_FILE))
    if pids is None:
        failure = exit_info.get("spawn_error") if exit_info else None
        if isinstance(failure, dict):
            program = str(exit_info.get("command") or "") if exit_info else ""
            cwd = exit_info.get("cwd") if exit_info else None
            message = _spawn_failure({**failure, "cwd": cwd}, program, cwd).message
            return Exited(handle=None, exit_code=None, error=message, leftover_pids=[])
        return Gone(folder, None, [])
    handle = _handle_from(pids, folder, run_id)
    if handle is None:
        return Gone(folder, None, [])
    if _is_our_supervisor(handle):
        return Alive(handle)
    leftovers = _leftovers(handle)
    code = exit_info.get("returncode") if exit_info else None
    if isinstance(code, int):
        return Exited(handle=handle, exit_code=code, error=describe_exit(code), leftover_pids=leftovers)
    return Gone(folder, handle.pgid, leftovers)


def attach(
    state_dir: str | os.PathLike[str],
    run_id: str,
    *,
    on_lines: Callable[[list[tuple[str, str]]], None] | None = None,
    on_tick: Callable[[float], None] | None = None,
    should_stop: Callable[[], EndReason | None] | None = None,
    timeout: float | None = None,
    tick_seconds: float = 0.5,
    kill_grace_seconds: float = 5.0,
    output: OutputBuffer | None = None,
    started: float | None = None,
) -> RunResult | Gone:
    """inspect + follow: the RunResult of a run that is alive or has exited, or Gone (nothing to follow).

    The whole output is read again from the first kept segment. ``timeout`` counts from ``started`` (a
    time.monotonic() value), by default from the command's recorded start."""
    state = inspect(state_dir, run_id)
    if isinstance(state, Gone):
        return state
    if state.handle is None:
        return RunResult(EndReason.SPAWN_FAILED, None, state.error, None, output or OutputBuffer(), 0.0)
    return follow(
        state.handle,
        on_lines=on_lines,
        on_tick=on_tick,
        should_stop=should_stop,
        timeout=timeout,
        tick_seconds=tick_seconds,
        kill_grace_seconds=kill_grace_seconds,
        output=output,
        started=started,
    )


def recorded_runs(state_dir: str | os.PathLike[str]) -> list[str]:
    """Run ids that have a state folder (sorted): after a restart, the runs to inspect or clean up."""
    try:
        names = os.listdir(Path(state_dir) / "runs")
    except FileNotFoundError:
        return []
    return sorted(name for name in names if _RUN_ID.fullmatch(name))


def cleanup(state_dir: str | os.PathLike[str], run_id: str) -> bool:
    """Remove a run's state folder; False if there was none. Refuses (RuntimeError) while it runs."""
    folder = run_dir(state_dir, run_id)
    if not folder.exists():
        return False
    if isinstance(inspect(state_dir, run_id), Alive):
        raise RuntimeError(f"run {run_id} is still running; its state folder is kept")
    shutil.rmtree(folder)
    return True


# ------------------------------------------------------------------------------------------------------------
# follow
# ------------------------------------------------------------------------------------------------------------


class _Phase(enum.Enum):
    RUNNING = "running"
    TERMINATING = "terminating"  # SIGTERM sent, waiting up to the grace period
    KILLING = "killing"  # SIGKILL sent, waiting a short while for the group to vanish


class _Follower:
    """State of one follow() call; everything happens in the calling thread."""

    def __init__(
        self,
        handle: Handle,
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
        self.handle = handle
        self.pgid = handle.pgid
        self.started = started
        self.buffer = buffer
        self.timeout = timeout
        self.on_start = on_start
        self.on_lines = on_lines
        self.on_tick = on_tick
        self.should_stop = should_stop
        self.tick_seconds = tick_seconds
        self.kill_grace_seconds = kill_grace_seconds

        self.reader = OutputReader(handle.run_dir)
        self.exit_info: dict[str, Any] | None = None
        self.reason: EndReason | None = None  # set when *we* end the run (or detach)
        self.phase = _Phase.RUNNING
        self.phase_deadline = 0.0
        self.sigkilled_supervisor = False  # our SIGKILL ended the supervisor before it could record the exit
        self.gave_up = False
        self.group_gone = False
        self.supervisor_gone = False
        self.pidfd: int | None = None
        self.tail_poll = FIRST_TAIL_POLL_SECONDS
        self._watch_supervisor()

    def _watch_supervisor(self) -> None:
        # A pidfd becomes readable when the supervisor exits: the end of a run wakes us at once.
        try:
            self.pidfd = os.pidfd_open(self.handle.supervisor_pid)
        except (AttributeError, OSError):
            self.pidfd = None
        if self.handle.process is None and not _is_our_supervisor(self.handle):
            # Checked after pinning it with the pidfd: the pid cannot be taken by another process unnoticed.
            self._supervisor_ended()

    # -- main loop -------------------------------------------------------------------------------------------

    def execute(self) -> RunResult:
        finished = False
        try:
            if self.on_start is not None:
                self.on_start(self.pgid)
            self._loop()
            finished = True
        except BaseException:
            # A failing callback (or KeyboardInterrupt) must not leave the command running unfollowed.
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
            batch: list[tuple[str, str]] = []
            progressed = self.reader.read(batch)
            self._dispatch(batch)
            if progressed:
                self.tail_poll = FIRST_TAIL_POLL_SECONDS  # output flows: look again soon once caught up
            now = time.monotonic()
            if self.reader.ended:
                self._wait_supervisor_gone(KILL_WAIT_SECONDS)
                break
            if not progressed and self._supervisor_exited():
                # Everything it wrote is in the file now: read it all before looking at the group.
                self._drain_reader(dispatch=True)
                if self.reader.ended or not self._group_alive():
                    self.group_gone = True
                    break
                if self.phase is _Phase.RUNNING:
                    # Its supervisor died (SIGKILLed alone, or crashed): nobody would ever end these.
                    logger.warning(
                        "supervisor of run %s is gone, ending its process group %d",
                        self.handle.run_id,
                        self.pgid,
                    )
                    self._start_termination(now, None)
            elif self._timed_out(now, deadline):
                self._start_termination(now, EndReason.TIMEOUT)

            if self.phase is _Phase.TERMINATING and now >= self.phase_deadline:
                logger.warning("process group %d ignored SIGTERM; sending SIGKILL", self.pgid)
                self._sigkill()
                self.phase = _Phase.KILLING
                self.phase_deadline = now + KILL_WAIT_SECONDS
            elif self.phase is _Phase.KILLING and now >= self.phase_deadline:
                logger.error("process group %d did not disappear after SIGKILL; giving up", self.pgid)
                self.gave_up = True
                break

            if now >= next_tick:
                if self.on_tick is not None:
                    self.on_tick(now - self.started)
                if self.should_stop is not None and self.phase is _Phase.RUNNING and not self._exited():
                    wanted = self.should_stop()
                    if wanted is EndReason.DETACHED:
                        self.reason = EndReason.DETACHED
                        return
                    if wanted in (EndReason.CANCELLED, EndReason.SHUTDOWN):
                        self._start_termination(time.monotonic(), wanted)
                next_tick += self.tick_seconds
                if next_tick <= now:
                    next_tick = now + self.tick_seconds  # a slow callback: skip missed ticks, no burst

            if not progressed:
                self._wait(self._wait_seconds(time.monotonic(), deadline, next_tick))

        batch = []
        self.reader.finish(batch)
        self._dispatch(batch)

    def _timed_out(self, now: float, deadline: float | None) -> bool:
        # Only a command still running can time out; its drain is the supervisor's to bound.
        return (
            self.phase is _Phase.RUNNING and deadline is not None and now >= deadline and not self._exited()
        )

    def _wait_seconds(self, now: float, deadline: float | None, next_tick: float) -> float:
        targets = [next_tick, now + self.tail_poll]
        self.tail_poll = min(self.tail_poll * 2, TAIL_POLL_SECONDS)
        if self.phase is not _Phase.RUNNING or self.supervisor_gone:
            targets.append(now + _POLL_SECONDS)  # group emptiness is not signalled by any descriptor
            if self.phase is not _Phase.RUNNING:
                targets.append(self.phase_deadline)
        elif deadline is not None and self.exit_info is None:
            targets.append(deadline)
        return max(0.0, min(targets) - now)

    def _wait(self, seconds: float) -> None:
        if self.pidfd is not None and not self.supervisor_gone:
            if select.select([self.pidfd], [], [], seconds)[0]:
                self._supervisor_exited()
        elif seconds > 0:
            time.sleep(seconds)

    # -- the supervisor and its group ------------------------------------------------------------------------

    def _supervisor_exited(self) -> bool:
        if self.supervisor_gone:
            return True
        process = self.handle.process
        if process is not None:
            if process.poll() is None:
                return False
        elif self.pidfd is not None:
            if not select.select([self.pidfd], [], [], 0)[0]:
                return False
        elif _is_our_supervisor(self.handle):
            return False
        self._supervisor_ended()
        return True

    def _supervisor_ended(self) -> None:
        self.supervisor_gone = True
        # An exited process's pidfd stays readable and would turn select() into a busy loop.
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if self.handle.process is not None:
            self.handle.process.poll()  # reap it: a zombie leader would keep its pid (and group id) taken

    def _wait_supervisor_gone(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._supervisor_exited():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wait(min(remaining, _POLL_SECONDS))
        self.group_gone = not self._group_alive()

    def _group_alive(self) -> bool:
        """A group that is not (or no longer) ours counts as gone: we never wait for, or signal, strangers."""
        return groups.group_alive(self.pgid) and self._group_is_ours()

    def _group_is_ours(self) -> bool:
        """While the supervisor lives (or is our unreaped child) its pid, hence the group id, cannot be
        reused; after that only members carrying our run id make the group ours."""
        if not self.supervisor_gone:
            return True
        members = groups.find_group_members(self.pgid)
        return any(groups.process_has_run_id(pid, self.handle.run_id) for pid in members)

    def _signal(self, sig: int) -> None:
        groups.check_pgid(self.pgid)
        if self._group_is_ours():
            groups.signal_group(self.pgid, sig)

    def _sigkill(self) -> None:
        supervisor_alive = not self._supervisor_exited()
        self._signal(signal.SIGKILL)
        if supervisor_alive and not self._exited():
            self.sigkilled_supervisor = True

    def _exited(self) -> bool:
        """The exit status is recorded (read once, then cached)."""
        if self.exit_info is None:
            self.exit_info = supervisor.read_json(str(self.handle.run_dir / supervisor.EXIT_FILE))
        return self.exit_info is not None

    # -- output ----------------------------------------------------------------------------------------------

    def _drain_reader(self, *, dispatch: bool) -> None:
        while True:
            batch: list[tuple[str, str]] = []
            more = self.reader.read(batch)
            if dispatch:
                self._dispatch(batch)
            else:
                self.buffer.extend(batch)
            if not more:
                return

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
        self._signal(signal.SIGTERM)
        self._signal(signal.SIGCONT)  # stopped processes act on SIGTERM only once continued

    def _finished(self) -> bool:
        return self._supervisor_exited() and not self._group_alive()

    def _wait_finished(self, seconds: float) -> bool:
        """Wait for the supervisor's exit and an empty group, reading the output meanwhile (into the buffer,
        no callbacks)."""
        deadline = time.monotonic() + seconds
        while True:
            self._drain_reader(dispatch=False)
            if self._finished():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wait(min(remaining, _POLL_SECONDS))

    def _terminate_blocking(self) -> None:
        if self.group_gone or self.reason is EndReason.DETACHED:
            return
        if self.phase is _Phase.RUNNING:
            self._signal(signal.SIGTERM)
            self._signal(signal.SIGCONT)
            if self._wait_finished(self.kill_grace_seconds):
                self.group_gone = True
                return
        self._sigkill()
        self.group_gone = self._wait_finished(KILL_WAIT_SECONDS)

    def _last_resort_kill(self) -> None:
        if self.group_gone:
            return
        with contextlib.suppress(OSError, ValueError):
            self._signal(signal.SIGKILL)
        self._supervisor_exited()

    # -- teardown --------------------------------------------------------------------------------------------

    def _close(self) -> None:
        self.reader.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def _result(self) -> RunResult:
        duration = time.monotonic() - self.started
        if self.reason is EndReason.DETACHED:
            return RunResult(
                EndReason.DETACHED,
                None,
                "detached: the command runs on",
                self.pgid,
                self.buffer,
                duration,
                self.reader.lost_bytes,
                self.reader.skipped_segments,
            )
        self._exited()
        code = self.exit_info.get("returncode") if self.exit_info else None
        if not isinstance(code, int):
            code = -signal.SIGKILL if self.sigkilled_supervisor else None
        reason = self.reason or EndReason.EXITED
        if reason is EndReason.TIMEOUT:
            error = f"timed out after {_format_seconds(self.timeout or 0.0)} s"
        elif reason is EndReason.CANCELLED:
            error = "cancelled"
        elif reason is EndReason.SHUTDOWN:
            error = "killed on shutdown"
        elif code is None and self.gave_up:
            error = "script could not be reaped after SIGKILL"
        elif code is None:
            error = "exit status unknown: the script's supervisor ended before recording it"
        else:
            error = describe_exit(code)
        return RunResult(
            reason=reason,
            exit_code=code,
            error=error,
            pid=self.pgid,
            output=self.buffer,
            duration_seconds=duration,
            output_bytes_lost=self.reader.lost_bytes,
            output_segments_skipped=self.reader.skipped_segments,
        )


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(round(seconds, 3))


def follow(
    handle: Handle,
    *,
    on_start: Callable[[int], None] | None = None,
    on_lines: Callable[[list[tuple[str, str]]], None] | None = None,
    on_tick: Callable[[float], None] | None = None,
    should_stop: Callable[[], EndReason | None] | None = None,
    timeout: float | None = None,
    tick_seconds: float = 0.5,
    kill_grace_seconds: float = 5.0,
    output: OutputBuffer | None = None,
    started: float | None = None,
) -> RunResult:
    """Follow a run (blocking) until its supervisor wrote its last record, streaming its output.

    ``on_start(pgid)`` is called first. ``on_lines`` receives batches of ``(stream, line)`` pairs (one batch
    per read of the output file, at most 64 KiB), stream "out"/"err", lines without newline, decoded as UTF-8
    with errors="replace", lines over 64 KiB truncated. ``on_tick(elapsed)`` is called about every
    ``tick_seconds`` even when the command is silent, and ``should_stop()`` is polled on every tick while the
    command runs: CANCELLED or SHUTDOWN end the group (SIGTERM, then SIGKILL after ``kill_grace_seconds``),
    DETACHED returns at once and leaves the group running (``attach`` can follow it again). ``timeout`` and
    ``elapsed`` count from ``started`` (a time.monotonic() value; by default the command's recorded start).
    All callbacks run in the calling thread; if one raises, the group is ended and the exception propagates.
    If the supervisor vanishes without an exit status, what is left of the group is ended and exit_code is
    None (-SIGKILL if it was our SIGKILL that ended it).
    """
    if tick_seconds <= 0:
        raise ValueError("tick_seconds must be > 0")
    if kill_grace_seconds < 0:
        raise ValueError("kill_grace_seconds must be >= 0")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be >= 0")
    if started is None:
        started = time.monotonic() - max(0.0, time.time() - handle.started_at)
    follower = _Follower(
        handle,
        started,
        buffer=output if output is not None else OutputBuffer(),
        timeout=timeout,
        on_start=on_start,
        on_lines=on_lines,
        on_tick=on_tick,
        should_stop=should_stop,
        tick_seconds=tick_seconds,
        kill_grace_seconds=kill_grace_seconds,
    )
    return follower.execute()
