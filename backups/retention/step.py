"""Worker steps of retention: after a run (its `retention` duty) and once a day."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from backups.config.selectors import config_current
from backups.retention.services import last_applied_at, retention_apply_automatic, retention_armed
from backups.runs import duties
from backups.runs.models import RunStatus

DUTY = duties.RETENTION
DAILY = timedelta(hours=24)


def apply_after_run() -> bool:
    """After a successful run; after any other end only with `retention.afterFailure` (a run of failures
    must not thin out the backups that are left)."""
    duty = duties.next_owed(DUTY)
    if duty is None:
        return False
    with duties.attempt(duty):
        if duty.run.status == RunStatus.SUCCEEDED or config_current()["retention"]["afterFailure"]:
            retention_apply_automatic(trigger=f"after run {duty.run_id} ({duty.run.status})")
    return True


def apply_daily(*, now: datetime | None = None) -> bool:
    """Once a day even without runs (a schedule switched off still has its old backups pruned): when
    retention last ran, by itself or by hand, more than 24 h ago."""
    now = now or timezone.now()
    if not retention_armed():
        return False
    last = last_applied_at()
    if last is not None and now - last < DAILY:
        return False
    return retention_apply_automatic(trigger="daily", now=now) is not None
