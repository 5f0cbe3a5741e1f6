"""run_script: spawn + follow in one blocking call, the way the backup script has always been run."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping

from backups.runner import supervisor
from backups.runner.output import OutputBuffer
from backups.runner.supervised import EndReason, RunResult, SpawnFailed, follow, spawn

__all__ = ["run_script"]


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
    state_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
) -> RunResult:
    """Run ``script`` to completion (blocking) as a supervised process group, streaming its output.

    The script is exec'd directly (its own #! line decides the interpreter; a non-executable file is
    SPAWN_FAILED, never silently run through bash) with stdin from /dev/null. As with exec, a bare name
    without a slash is looked up on PATH, and a relative path with a slash is relative to ``cwd``.

    ``on_start(pgid)`` is called once the script runs. The callbacks, ``timeout``, ``tick_seconds`` and
    ``kill_grace_seconds`` mean what they mean for :func:`follow`; ``kill_grace_seconds`` is also the grace
    the supervisor gives children left behind by the script. The call returns once the supervisor has
    recorded the end and the group is empty (or shortly after SIGKILL).

    ``run_id`` defaults to the env's BACKUP_RUN_ID (else a random one). With ``state_dir`` the run's folder
    ``<state_dir>/runs/<run_id>`` is left for the caller to ``cleanup`` once it has recorded the result (a
    service that dies meanwhile can ``attach`` again). Without it, a temporary folder is used and removed
    afterwards; nobody could re-attach to such a run, so DETACHED from ``should_stop`` acts as SHUTDOWN.
    """
    if tick_seconds <= 0:
        raise ValueError("tick_seconds must be > 0")
    if kill_grace_seconds < 0:
        raise ValueError("kill_grace_seconds must be >= 0")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be >= 0")
    buffer = output if output is not None else OutputBuffer()
    program = os.fsdecode(script)
    run_id = run_id or env.get(supervisor.RUN_ID_VARIABLE) or f"run-{uuid.uuid4().hex}"
    started = time.monotonic()
    temporary = tempfile.mkdtemp(prefix="backup-run-") if state_dir is None else None
    stop = should_stop
    if temporary is not None and should_stop is not None:
        wrapped = should_stop

        def stop() -> EndReason | None:
            wanted = wrapped()
            return EndReason.SHUTDOWN if wanted is EndReason.DETACHED else wanted

    try:
        try:
            handle = spawn(
                [program],
                env=env,
                cwd=cwd,
                state_dir=temporary or state_dir,  # type: ignore[arg-type]
                run_id=run_id,
                kill_grace_seconds=kill_grace_seconds,
            )
        except SpawnFailed as exc:
            return RunResult(
                reason=EndReason.SPAWN_FAILED,
                exit_code=None,
                error=exc.message,
                pid=None,
                output=buffer,
                duration_seconds=time.monotonic() - started,
            )
        return follow(
            handle,
            on_start=on_start,
            on_lines=on_lines,
            on_tick=on_tick,
            should_stop=stop,
            timeout=timeout,
            tick_seconds=tick_seconds,
            kill_grace_seconds=kill_grace_seconds,
            output=buffer,
            started=started,
        )
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
