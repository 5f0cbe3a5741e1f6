"""The cron schedule of the config document, fired by the worker that holds the lease.

Every tick records when it looked (a checkpoint row, so it survives restarts) and the slot it fired
last. A slot is due when it falls after the previous look — and after the last change of `schedule`
or `enabled`, so saving "34 19 * * *" at 19:34:15 does not start a backup at once — and it never fires
twice. Slots missed while the service was down run once at start-up (only the newest one, and only if
no backup succeeded since it); a fresh install, which has never looked, catches nothing up. A failed
scheduled run is re-run `scheduleRetries.count` times, `delayMinutes` after each failure.

Times are compared in UTC: two aware datetimes sharing a zone compare by wall time, and the two
02:30 of the night DST ends would be the same moment.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from cronsim import CronSim
from django.db import transaction
from django.utils import timezone

from backups.audit import SCHEDULE
from backups.checkpoints import checkpoint_get, checkpoint_set, moment
from backups.config import document as config_document
from backups.config.selectors import config_current, config_updated_at
from backups.errors import Conflict
from backups.runs.models import Run, RunKind, RunStatus, RunType
from backups.runs.selectors import current_run, last_successful_run
from backups.runs.services import run_enqueue, run_record_skipped

logger = logging.getLogger(__name__)

CHECKPOINT = "schedule"
# A slot fired later than this after its time was missed (the service was down, or the worker busy):
# it is then caught up only if no backup has succeeded since.
LATE_AFTER = timedelta(minutes=1)
RETRIED_STATUSES = (RunStatus.FAILED, RunStatus.INTERRUPTED)


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def newest_slot(expression: str, *, after: datetime, until: datetime) -> datetime | None:
    """The newest time the expression matches in (after, until], or None."""
    tz = timezone.get_current_timezone()
    first = config_document.next_fire_time(expression, after.astimezone(tz))
    if _utc(first) > _utc(until):
        return None
    # Backwards from just past `until`: cronsim's reverse walk gives the times strictly before it.
    newest = next(iter(CronSim(expression, (until + timedelta(seconds=1)).astimezone(tz), reverse=True)))
    return newest if _utc(after) < _utc(newest) <= _utc(until) else first


def tick(*, now: datetime | None = None) -> bool:
    """Queue the scheduled run (or a retry) when one is due; True when one was. A slot that comes while
    another run is queued or running is recorded as a `skipped` run."""
    now = now or timezone.now()
    document = config_current()
    watched = {"schedule": document["schedule"], "enabled": document["enabled"]}
    with transaction.atomic():
        state = checkpoint_get(CHECKPOINT)
        if state is None or state.at is None:
            checkpoint_set(CHECKPOINT, at=now, data=watched)  # a fresh install: nothing to catch up
            return False
        data: dict[str, Any] = {**state.data, **watched}
        since = state.at
        last_slot = moment(state.data.get("last_slot"))
        if last_slot is not None and _utc(last_slot) > _utc(since):
            since = last_slot
        changed_at = config_updated_at()
        if {k: state.data.get(k) for k in watched} != watched and changed_at and changed_at > since:
            # The schedule or `enabled` changed since the last look: only slots after the change count.
            since = changed_at
        slot = newest_slot(document["schedule"], after=since, until=now) if document["enabled"] else None
        if slot is not None:
            data["last_slot"] = _utc(slot).isoformat()
        checkpoint_set(CHECKPOINT, at=now, data=data)
        if slot is not None:
            return _fire(slot, now=now, document=document)
    return _retry(now=now, document=document)


def _fire(slot: datetime, *, now: datetime, document: dict[str, Any]) -> bool:
    expression = document["schedule"]
    late = _utc(now) - _utc(slot) > LATE_AFTER
    local = timezone.localtime(slot)
    if late:
        success = last_successful_run()
        if success and success.finished_at and success.finished_at > slot:
            logger.info(
                "missed scheduled slot not caught up: a backup succeeded since",
                extra={"slot": slot.isoformat(), "run_id": str(success.id)},
            )
            return False
        description = f"scheduled ({expression}), catching up the run of {local:%Y-%m-%d %H:%M} missed"
        logger.info("catching up a missed scheduled slot", extra={"slot": slot.isoformat()})
    else:
        description = f"scheduled ({expression})"
    try:
        run_enqueue(actor=SCHEDULE, run_type=RunType.SCHEDULED, description=description)
    except Conflict:
        run_record_skipped(reason="another backup was queued or running at the scheduled time")
    return True


def _retry(*, now: datetime, document: dict[str, Any]) -> bool:
    """Re-run the newest scheduled run if it failed and retries are left, `delayMinutes` after it ended.
    A backup that succeeded since it started (a manual one) makes the retry pointless."""
    retries = document["scheduleRetries"]
    if not retries["count"] or not document["enabled"]:
        return False
    last = (
        Run.objects.filter(kind=RunKind.BACKUP, type=RunType.SCHEDULED)
        .exclude(status=RunStatus.SKIPPED)
        .order_by("-created_at")
        .first()
    )
    if last is None or last.status not in RETRIED_STATUSES or last.finished_at is None:
        return False
    if now < last.finished_at + timedelta(minutes=retries["delayMinutes"]):
        return False
    original = last.retry_of or last
    made = Run.objects.filter(retry_of=original).count()
    if made >= retries["count"]:
        return False
    if Run.objects.filter(
        kind=RunKind.BACKUP, status=RunStatus.SUCCEEDED, finished_at__gt=original.created_at
    ).exists():
        return False
    if current_run() is not None:
        return False  # tried again on a later tick
    try:
        run_enqueue(
            actor=SCHEDULE,
            run_type=RunType.SCHEDULED,
            description=f"retry {made + 1} of {retries['count']} of the scheduled backup "
            f"of {timezone.localtime(original.created_at):%Y-%m-%d %H:%M}",
            retry_of=original,
        )
    except Conflict:
        return False
    logger.info("scheduled run retried", extra={"run_id": str(original.id), "retry": made + 1})
    return True
