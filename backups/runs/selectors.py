"""Reads of runs: the current one, the last good one, what the next one will probably take."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

from backups.audit import AuditEvent
from backups.errors import NotFound
from backups.runs import progress
from backups.runs.models import ACTIVE_RUN_STATUSES, Run, RunKind, RunStatus


def current_run() -> Run | None:
    """The run that is queued or running (the database allows at most one)."""
    return Run.objects.filter(status__in=ACTIVE_RUN_STATUSES).order_by("created_at").first()


def next_queued_run() -> Run | None:
    return Run.objects.filter(status=RunStatus.QUEUED).order_by("created_at").first()


def last_successful_run() -> Run | None:
    """The last backup run that succeeded (runs of the other kinds are not backups)."""
    return (
        Run.objects.filter(kind=RunKind.BACKUP, status=RunStatus.SUCCEEDED).order_by("-finished_at").first()
    )


def last_run() -> Run | None:
    return Run.objects.defer("output").order_by("-created_at").first()


def cancelled_by(run_id: uuid.UUID | str) -> str:
    """Who asked to cancel the run (the audit row of the request), or "" when nobody did."""
    return (
        AuditEvent.objects.filter(action="run.cancel", target=str(run_id), outcome="ok")
        .order_by("-created_at")
        .values_list("actor", flat=True)
        .first()
        or ""
    )


def expected_duration() -> float | None:
    """The previous successful run's duration: the time-based progress estimate and the ETA."""
    run = last_successful_run()
    return run.duration_seconds if run else None


def eta_seconds(run: Run) -> float | None:
    """The remaining seconds of a running run, by the one ETA formula (`progress.eta_seconds`)."""
    if run.status != RunStatus.RUNNING or not run.started_at:
        return None
    remaining = progress.eta_seconds(run.duration_seconds or 0.0, run.progress_percent, expected_duration())
    return None if remaining is None else round(remaining, 1)


def list_runs() -> QuerySet[Run]:
    return Run.objects.defer("output").order_by("-created_at")


def get_run(run_id: str, *, with_output: bool = False) -> Run:
    queryset = Run.objects.all() if with_output else Run.objects.defer("output")
    try:
        return queryset.get(id=uuid.UUID(str(run_id)))
    except (ValueError, Run.DoesNotExist):
        raise NotFound("Run not found.") from None
