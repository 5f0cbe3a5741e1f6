"""Following a run of another kind (verify, restore, offsite): a job process under the runner's
supervisor, like the script, so it is cancelled, timed out, followed again after a restart and shown
live exactly like a backup. Each kind's package says what its job needs and what its result means."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings

from backups import events, runner
from backups.jobs import protocol
from backups.runs import outcome
from backups.runs.models import Run, RunStatus
from backups.runs.services import job_finish, run_set_process
from backups.verification import services as verification

if TYPE_CHECKING:
    from backups.worker.loop import Worker

logger = logging.getLogger(__name__)

CANCEL_CHECK_SECONDS = 0.5
PROGRESS_SAVE_SECONDS = 1.0


@dataclass(frozen=True)
class JobKind:
    # The job's parameters (no secrets: they are in its argv) and the secrets it needs, as environment.
    prepare: Callable[[Run], tuple[dict[str, Any], dict[str, str]]]
    # What the job's end means for its capability, in the transaction that records the end (also for a
    # job cancelled to make way for a backup): the run carries its status and `result`.
    record: Callable[[Run], None]
    timeout_seconds: Callable[[], int]


KINDS: dict[str, JobKind] = {
    "verify": JobKind(
        prepare=verification.job_prepare,
        record=verification.job_record,
        timeout_seconds=lambda: settings.BACKUP_RUN_TIMEOUT,
    ),
}


class JobExecution:
    def __init__(self, worker: Worker, run: Run) -> None:
        self.worker = worker
        self.run = run
        self.kind = KINDS[run.kind]
        self.output = runner.OutputBuffer(head_lines=200, tail_lines=1000)
        self.percent = run.progress_percent
        self.message = run.progress_message
        self.result: dict[str, Any] = {}
        self.errors: list[str] = []
        self.last_saved = 0.0
        self.last_cancel_check = 0.0
        self.cancelled = False
        self.lease_lost = False

    def execute(self) -> Run:
        try:
            params, secrets = self.kind.prepare(self.run)
        except Exception as error:  # the job cannot even be described: it fails, its reason shown
            logger.exception("job could not be prepared", extra={"run_id": str(self.run.id)})
            result = runner.RunResult(runner.EndReason.SPAWN_FAILED, None, str(error), None, self.output, 0.0)
            return self.end(result)
        env = runner.build_env(os.environ, secrets)
        self.publish(force=True)
        try:
            handle = runner.spawn(
                [sys.executable, "-m", "backups.jobs", self.run.kind, _json(params)],
                env=env,
                cwd=settings.BASE_DIR,
                state_dir=settings.BACKUP_STATE_DIR,
                run_id=str(self.run.id),
                kill_grace_seconds=settings.BACKUP_KILL_GRACE_SECONDS,
            )
        except runner.SpawnFailed as failure:
            result = runner.RunResult(
                runner.EndReason.SPAWN_FAILED, None, failure.message, None, self.output, 0.0
            )
            return self.end(result)
        result = runner.follow(handle, on_start=self.on_start, **self.follow_options())
        return self.end(result)

    def resume(self) -> Run:
        result = runner.attach(settings.BACKUP_STATE_DIR, str(self.run.id), **self.follow_options())
        if isinstance(result, runner.Gone):
            from backups.worker.execution import RunLost

            raise RunLost(result)
        return self.end(result)

    def follow_options(self) -> dict[str, Any]:
        return {
            "timeout": self.kind.timeout_seconds(),
            "on_lines": self.on_lines,
            "on_tick": self.on_tick,
            "should_stop": self.should_stop,
            "tick_seconds": 0.25,
            "kill_grace_seconds": settings.BACKUP_KILL_GRACE_SECONDS,
            "output": self.output,
        }

    def end(self, result: runner.RunResult) -> Run:
        if result.reason == runner.EndReason.DETACHED:
            self.publish(force=True)
            return self.run
        if result.reason == runner.EndReason.EXITED and result.exit_code == 0 and "error" in self.result:
            status, error = RunStatus.FAILED, str(self.result["error"])
        else:
            end = outcome.outcome(
                result,
                outcome.Circumstances(
                    error_lines=tuple(self.errors[-20:]),
                    lease_lost=self.lease_lost,
                    timeout_seconds=self.kind.timeout_seconds(),
                    subject="job",
                ),
                output="",
                output_lines=0,
            )
            status, error = end.status, end.error
        if status == RunStatus.SUCCEEDED and not self.result:
            status, error = RunStatus.FAILED, "The job ended without reporting a result."
        end = outcome.RunEnd(status, result.exit_code, error, self.output_text(), self.output.total_lines)
        run = job_finish(
            run=self.run,
            end=end,
            percent=self.percent,
            stage="completed" if status == RunStatus.SUCCEEDED else status,
            message=self.message,
            result=self.result,
            record=self.kind.record,
        )
        if run.status != RunStatus.RUNNING:
            runner.cleanup(settings.BACKUP_STATE_DIR, str(run.id))
        return run

    def output_text(self) -> str:
        return "\n".join(f"{stream}: {line}" for stream, line in self.output.lines())

    # --- runner callbacks -------------------------------------------------------------------------

    def on_start(self, pgid: int) -> None:
        run_set_process(run=self.run, pgid=pgid)

    def on_lines(self, batch: list[tuple[str, str]]) -> None:
        for stream, line in batch:
            parsed = protocol.parse(line) if stream == "out" else None
            if isinstance(parsed, protocol.Progress):
                # Monotonic, also when a restarted worker reads the output again from its start.
                self.percent = max(self.percent, parsed.percent)
                self.message = parsed.message
            elif isinstance(parsed, protocol.Result):
                self.result = parsed.document
            elif stream == "err" and line.strip():
                self.errors.append(line.strip()[:500])
        self.publish()

    def on_tick(self, elapsed: float) -> None:
        if not self.worker.hold_lease():
            self.lease_lost = True
        self.worker.schedule_tick()
        self.publish()

    def should_stop(self) -> runner.EndReason | None:
        if self.lease_lost:
            return runner.EndReason.SHUTDOWN
        deadline = self.worker.shutdown_deadline
        if deadline is not None and time.monotonic() >= deadline:
            return runner.EndReason.DETACHED
        now = time.monotonic()
        if now - self.last_cancel_check >= CANCEL_CHECK_SECONDS:
            self.last_cancel_check = now
            self.cancelled = Run.objects.filter(id=self.run.id, cancel_requested=True).exists()
        return runner.EndReason.CANCELLED if self.cancelled else None

    def publish(self, force: bool = False) -> None:
        events.broadcast(
            events.JOB_PROGRESS,
            events.progress_payload(
                str(self.run.id), self.run.backup_id, self.percent, self.run.kind, self.message, self.run.kind
            ),
        )
        now = time.monotonic()
        if force or now - self.last_saved >= PROGRESS_SAVE_SECONDS:
            Run.objects.filter(id=self.run.id, status=RunStatus.RUNNING).update(
                progress_percent=self.percent,
                progress_stage=self.run.kind,
                progress_message=self.message[:500],
            )
            self.last_saved = now


def _json(params: dict[str, Any]) -> str:
    import json

    return json.dumps(params, separators=(",", ":"))
