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
from backups.offsite import services as offsite
from backups.restore import services as restore
from backups.runs import outcome
from backups.runs.models import Run, RunStatus
from backups.runs.selectors import cancelled_by
from backups.runs.services import job_finish, run_set_process
from backups.verification import services as verification
from backups.worker.following import Following

if TYPE_CHECKING:
    from backups.worker.loop import Worker

logger = logging.getLogger(__name__)

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
    "offsite": JobKind(
        prepare=offsite.job_prepare,
        record=offsite.job_record,
        timeout_seconds=lambda: settings.BACKUP_RUN_TIMEOUT,
    ),
    "restore": JobKind(
        prepare=restore.job_prepare,
        record=restore.job_record,
        timeout_seconds=lambda: settings.BACKUP_RUN_TIMEOUT,
    ),
}


def finish_job(run: Run, end: outcome.RunEnd, percent: int, stage: str, message: str) -> Run:
    """End a job whose process is gone or lost (start-up recovery, a failure of the service itself) with
    its kind's own consequence, as if its process had ended: the backup-only parts of `run_finish`
    (the folder's metadata, duties, the catalogue's status) must not run for it."""
    kind = KINDS.get(run.kind)
    return job_finish(
        run=run,
        end=end,
        percent=percent,
        stage=stage,
        message=message,
        result=run.result or {},
        record=kind.record if kind is not None else _record_nothing,
    )


def _record_nothing(run: Run) -> None:
    return None


class JobExecution(Following):
    def __init__(self, worker: Worker, run: Run) -> None:
        super().__init__(worker, run)
        self.kind = KINDS[run.kind]
        self.output = runner.OutputBuffer(head_lines=200, tail_lines=1000)
        self.percent = run.progress_percent
        self.message = run.progress_message
        self.result: dict[str, Any] = {}
        self.errors: list[str] = []
        self.last_saved = 0.0

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
        return self.end(self.attach())

    def timeout_seconds(self) -> int:
        return self.kind.timeout_seconds()

    def end(self, result: runner.RunResult) -> Run:
        if result.reason == runner.EndReason.DETACHED:
            self.publish(force=True)
            return self.run
        if result.reason == runner.EndReason.EXITED and result.exit_code == 0 and "error" in self.result:
            status, error = RunStatus.FAILED, str(self.result["error"])
        else:
            who = cancelled_by(self.run.id) if result.reason == runner.EndReason.CANCELLED else ""
            end = outcome.outcome(
                result,
                outcome.Circumstances(
                    error_lines=tuple(self.errors[-20:]),
                    lease_lost=self.lease_lost,
                    timeout_seconds=self.kind.timeout_seconds(),
                    subject="job",
                    cancelled_by=who,
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
            message=error if status == RunStatus.CANCELLED else self.message,
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
        super().on_tick(elapsed)
        self.publish()

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
