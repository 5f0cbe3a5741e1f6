"""The cron schedule of the config document, fired by the worker that holds the lease."""

from __future__ import annotations

from django.utils import timezone

from backups.audit import SCHEDULE
from backups.config import document as config_document
from backups.config.selectors import config_current
from backups.errors import Conflict
from backups.runs.models import RunType
from backups.runs.services import run_enqueue, run_record_skipped
from backups.worker.lease import WorkerLease


def tick() -> bool:
    """Queue the scheduled run when its time has come since the last look; True when one was due.
    A time that came while another run was queued or running is recorded as a `skipped` run."""
    now = timezone.now()
    last = WorkerLease.objects.filter(id=1).values_list("last_schedule_check", flat=True).first()
    document = config_current()
    if last is None or not document["enabled"]:
        WorkerLease.objects.filter(id=1).update(last_schedule_check=now)
        return False
    due = config_document.next_fire_time(document["schedule"], timezone.localtime(last))
    if due > now:
        return False
    # Fires once however many times were missed while the service was down.
    WorkerLease.objects.filter(id=1).update(last_schedule_check=now)
    try:
        run_enqueue(
            actor=SCHEDULE, run_type=RunType.SCHEDULED, description=f"scheduled ({document['schedule']})"
        )
    except Conflict:
        run_record_skipped(reason="another backup was queued or running at the scheduled time")
    return True
