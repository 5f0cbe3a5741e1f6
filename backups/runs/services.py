"""Every write to runs: queue, claim, progress, finish, cancel. Each change writes its audit row in the
same transaction and announces itself to the WebSocket clients only once committed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from backups import events
from backups.audit import SCHEDULE, Actor, audit, refuse
from backups.catalogue import sync
from backups.catalogue.models import Backup, BackupStatus
from backups.catalogue.services import backup_write_facts
from backups.config.selectors import config_current
from backups.errors import Conflict
from backups.runs import duties
from backups.runs.models import ACTIVE_RUN_STATUSES, Duty, Run, RunKind, RunStatus, RunType
from backups.runs.outcome import RunEnd
from backups.runs.selectors import current_run

logger = logging.getLogger(__name__)

__all__ = [
    "RunEnd",
    "job_enqueue",
    "job_finish",
    "run_claim",
    "run_enqueue",
    "run_finish",
    "run_record_skipped",
    "run_request_cancel",
    "run_save_progress",
    "run_set_backup",
    "run_set_process",
]


def run_enqueue(
    *, actor: Actor, description: str = "", run_type: str = RunType.MANUAL, retry_of: Run | None = None
) -> Run:
    """Queue a backup run for the worker. The partial unique constraint on active runs makes the
    database, not this function, the judge of "only one at a time": a concurrent insert fails with
    IntegrityError. A backup never waits for an automatic job: one that is queued or running is
    cancelled to make way (its capability tries it again later); any other run in the way is a 409.
    `retry_of`: the failed scheduled run this one retries."""
    for attempt in range(2):
        try:
            with transaction.atomic():
                run = Run.objects.create(
                    type=run_type, description=description, triggered_by=actor.id, retry_of=retry_of
                )
                details = {"type": run_type, "description": description}
                if retry_of is not None:
                    details["retry_of"] = str(retry_of.id)
                audit("run.create", actor=actor, target=str(run.id), details=details)
            break
        except IntegrityError:
            if attempt == 0 and _make_way(actor):
                continue
            current = current_run()
            raise refuse(
                "run.create",
                "A backup is already queued or running."
                if current is None or current.kind == RunKind.BACKUP
                else f"A {current.kind} run is queued or running; cancel it first.",
                actor=actor,
                target=str(current.id) if current else "",
                reason="a run is already queued or running",
                run=current,
            ) from None
    logger.info("run queued", extra={"run_id": str(run.id), "actor": actor.id, "type": run_type})
    events.notify("info", f"Backup queued by {actor}.")
    return run


PREEMPTED = "Cancelled to make way for a backup; it is tried again later."


def _make_way(actor: Actor) -> bool:
    """Cancel the automatic job in the lane (its worker ends its process group within a tick)."""
    with transaction.atomic():
        job = Run.objects.filter(status__in=ACTIVE_RUN_STATUSES, automatic=True).first()
        if job is None:
            return False
        ended = Run.objects.filter(id=job.id, status__in=ACTIVE_RUN_STATUSES).update(
            status=RunStatus.CANCELLED,
            cancel_requested=True,
            finished_at=timezone.now(),
            error=PREEMPTED,
            progress_stage="cancelled",
        )
        if not ended:
            return False
        audit("run.preempt", actor=actor, target=str(job.id), details={"kind": job.kind})
        events.broadcast_on_commit(
            events.JOB_ERROR, {"run_id": str(job.id), "error": PREEMPTED, "exit_code": None, "kind": job.kind}
        )
    return True


def job_enqueue(
    *,
    kind: str,
    actor: Actor,
    params: dict[str, Any],
    backup_id: str = "",
    automatic: bool = False,
    description: str = "",
) -> Run:
    """Queue a run of another kind (verify, restore, offsite) in the same one-at-a-time lane. An
    automatic one is refused quietly (None-free: Conflict) when the lane is busy; the caller retries."""
    try:
        with transaction.atomic():
            run = Run.objects.create(
                kind=kind,
                type=RunType.SCHEDULED if automatic else RunType.MANUAL,
                automatic=automatic,
                params=params,
                backup_id=backup_id,
                description=description[:500],
                triggered_by=actor.id,
            )
            audit(
                f"{kind}.create",
                actor=actor,
                target=backup_id or str(run.id),
                details={"run_id": str(run.id), "params": params, "automatic": automatic},
            )
    except IntegrityError:
        current = current_run()
        if automatic:
            raise Conflict("the lane is busy", run=current) from None
        raise refuse(
            f"{kind}.create",
            "A run is already queued or running.",
            actor=actor,
            target=backup_id,
            reason="a run is already queued or running",
            run=current,
        ) from None
    logger.info("job queued", extra={"run_id": str(run.id), "kind": kind, "actor": actor.id})
    if not automatic:
        events.notify("info", f"{kind.capitalize()} of {backup_id or 'the service'} queued by {actor}.")
    return run


def job_finish(
    *,
    run: Run,
    end: RunEnd,
    percent: int,
    stage: str,
    message: str,
    result: dict[str, Any],
    record: Callable[[Run], None],
) -> Run:
    """Record how a job ended and, in the same transaction, what it found (`record`, the capability's
    own consequence, also called for a job cancelled to make way). Events after commit."""
    succeeded = end.status == RunStatus.SUCCEEDED
    with transaction.atomic():
        ended = Run.objects.filter(id=run.id, status=RunStatus.RUNNING).update(
            status=end.status,
            finished_at=timezone.now(),
            exit_code=end.exit_code,
            error=end.error[:20000],
            output=end.output,
            output_lines=end.output_lines,
            progress_percent=100 if succeeded else percent,
            progress_stage=stage[:100],
            progress_message=message[:500],
            result=result,
            pgid=None,
        )
        run.refresh_from_db()
        record(run)
        if not ended:
            return run
        audit(
            f"{run.kind}.{end.status}",
            actor=Actor(run.triggered_by),
            target=run.backup_id or str(run.id),
            outcome="ok" if succeeded else "failed",
            details={"run_id": str(run.id), "exit_code": end.exit_code, "error": end.error[:2000]},
        )
        if succeeded:
            events.broadcast_on_commit(
                events.JOB_PROGRESS,
                events.progress_payload(str(run.id), run.backup_id, 100, "completed", message, run.kind),
            )
            events.broadcast_on_commit(
                events.JOB_COMPLETED,
                {
                    "run_id": str(run.id),
                    "backup_id": run.backup_id or None,
                    "duration_seconds": run.duration_seconds,
                    "kind": run.kind,
                },
            )
        else:
            events.broadcast_on_commit(
                events.JOB_ERROR,
                {
                    "run_id": str(run.id),
                    "error": run.error or end.status,
                    "exit_code": run.exit_code,
                    "kind": run.kind,
                },
            )
    logger.info("job finished", extra={"run_id": str(run.id), "kind": run.kind, "status": end.status})
    return run


def run_record_skipped(*, reason: str, run_type: str = RunType.SCHEDULED, actor: Actor = SCHEDULE) -> Run:
    now = timezone.now()
    with transaction.atomic():
        run = Run.objects.create(
            type=run_type,
            triggered_by=actor.id,
            status=RunStatus.SKIPPED,
            finished_at=now,
            started_at=now,
            error=reason,
            progress_stage="skipped",
        )
        audit("run.skipped", actor=actor, target=str(run.id), details={"reason": reason})
    events.notify("warning", f"Scheduled backup skipped: {reason}")
    return run


def run_claim(*, run: Run, worker: str) -> bool:
    """Take a queued run: a conditional update, so two workers can never both win it. A backup's start
    is owed to the monitor ping, so its duty is written in the same transaction."""
    owed = duties.owed_at_start(config_current()) if run.kind == RunKind.BACKUP else ()
    now = timezone.now()
    with transaction.atomic():
        won = Run.objects.filter(id=run.id, status=RunStatus.QUEUED).update(
            status=RunStatus.RUNNING, started_at=now, worker=worker, progress_stage="starting"
        )
        if won:
            Duty.objects.bulk_create([Duty(run_id=run.id, name=name) for name in owed])
    if won:
        run.refresh_from_db()
    return won == 1


def run_set_process(*, run: Run, pgid: int) -> None:
    run.pgid = pgid
    Run.objects.filter(id=run.id).update(pgid=pgid)


def run_set_backup(*, run: Run, backup_id: str) -> None:
    """The run's folder is known: note it on the run and beside the backup (so a lost database can be
    rebuilt from the folders), and list it as running."""
    run.backup_id = backup_id
    Run.objects.filter(id=run.id).update(backup_id=backup_id)
    backup_write_facts(run=run, status=BackupStatus.RUNNING)
    sync.sync(force_ids=[backup_id])


def run_save_progress(*, run: Run, percent: int, stage: str, message: str) -> None:
    Run.objects.filter(id=run.id, status=RunStatus.RUNNING).update(
        progress_percent=percent, progress_stage=stage[:100], progress_message=message[:500]
    )


def run_finish(*, run: Run, end: RunEnd, percent: int, stage: str, message: str) -> Run:
    """Record how a run ended and the duties it leaves for the worker, fix its backup's status, and
    tell the clients (after commit)."""
    succeeded = end.status == RunStatus.SUCCEEDED
    backup_status = BackupStatus.COMPLETED if succeeded else BackupStatus.INCOMPLETE
    if run.backup_id:
        backup_write_facts(run=run, status=backup_status)
    now = timezone.now()
    with transaction.atomic():
        # Only a run still `running` ends here: a run that start-up recovery (or a worker that took over)
        # already marked interrupted keeps that verdict and its events are not sent twice.
        ended = Run.objects.filter(id=run.id, status=RunStatus.RUNNING).update(
            status=end.status,
            finished_at=now,
            exit_code=end.exit_code,
            error=end.error[:20000],
            output=end.output,
            output_lines=end.output_lines,
            progress_percent=percent,
            progress_stage=stage[:100],
            progress_message=message[:500],
            pgid=None,
        )
        run.refresh_from_db()
        if not ended:
            logger.warning(
                "run already ended; outcome not recorded",
                extra={"run_id": str(run.id), "status": run.status, "outcome": end.status},
            )
            return run
        Duty.objects.bulk_create([Duty(run=run, name=name) for name in duties.owed_after(succeeded)])
        audit(
            f"run.{end.status}",
            actor=Actor(run.triggered_by),
            target=str(run.id),
            outcome="ok" if succeeded else "failed",
            details={"backup_id": run.backup_id, "exit_code": end.exit_code, "error": end.error[:2000]},
        )
        if succeeded:
            events.broadcast_on_commit(
                events.BACKUP_PROGRESS,
                events.progress_payload(str(run.id), run.backup_id, 100, "completed", message),
            )
    # A failed run's folder is kept (incomplete) but must never be `latest`; the sync below re-points
    # `latest` when a script left it on a folder the service knows to be incomplete.
    sync.sync(force_ids=[run.backup_id] if run.backup_id else ())
    if succeeded:
        backup = Backup.objects.filter(id=run.backup_id).first()
        events.broadcast(
            events.BACKUP_COMPLETED,
            {
                "run_id": str(run.id),
                "backup_id": run.backup_id or None,
                "size_bytes": backup.size_bytes if backup else 0,
                "duration_seconds": run.duration_seconds,
            },
        )
    else:
        events.broadcast(
            events.BACKUP_ERROR,
            {"run_id": str(run.id), "error": run.error or f"run {end.status}", "exit_code": run.exit_code},
        )
        level = "warning" if end.status == RunStatus.CANCELLED else "error"
        headline = run.error.splitlines()[0][:200] if run.error else end.status
        events.broadcast(
            events.SYSTEM_NOTIFICATION, {"level": level, "message": f"Backup {end.status}: {headline}"}
        )
    logger.info(
        "run finished", extra={"run_id": str(run.id), "status": end.status, "exit_code": end.exit_code}
    )
    return run


def run_request_cancel(*, run: Run, actor: Actor) -> Run:
    """A queued run is cancelled at once; a running one is flagged and its worker ends the script's
    process group within a poll interval."""
    with transaction.atomic():
        now = timezone.now()
        if Run.objects.filter(id=run.id, status=RunStatus.QUEUED).update(
            status=RunStatus.CANCELLED,
            finished_at=now,
            error=f"cancelled by {actor} before it started",
            progress_stage="cancelled",
        ):
            run.refresh_from_db()
            if run.kind == RunKind.BACKUP:
                Duty.objects.create(run=run, name=duties.NOTIFY)  # a night without its backup is news
            audit("run.cancel", actor=actor, target=str(run.id), details={"was": "queued"})
            events.broadcast_on_commit(
                events.BACKUP_ERROR, {"run_id": str(run.id), "error": run.error, "exit_code": None}
            )
            return run
        if Run.objects.filter(id=run.id, status=RunStatus.RUNNING).update(cancel_requested=True):
            run.refresh_from_db()
            audit("run.cancel", actor=actor, target=str(run.id), details={"was": "running"})
            return run
        run.refresh_from_db()
    raise refuse(
        "run.cancel",
        f"The run has already ended ({run.status}).",
        actor=actor,
        target=str(run.id),
        reason=f"run already {run.status}",
        run=run,
    )
