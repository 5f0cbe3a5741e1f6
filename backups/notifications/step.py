"""Worker steps of notifications. Each says whether it found work.

`notify_after_runs` turns the `notify` duties a run's start and end leave into outbox rows;
`deliver_due` sends the deliveries that are due; `check_stale` raises the alert when no backup has
succeeded for `staleAfterHours`. They run on the worker's notification thread (a slow receiver never
delays a backup), and the duty step also among the worker's own duties.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from backups.catalogue.models import Backup, BackupStatus
from backups.checkpoints import checkpoint_get, checkpoint_set, moment
from backups.config.selectors import config_current
from backups.notifications import services
from backups.notifications.models import Delivery, DeliveryStatus
from backups.runs import duties
from backups.runs.models import Duty
from backups.runs.selectors import last_successful_run

logger = logging.getLogger(__name__)

BATCH = 20
STALE = "stale"


def notify_after_runs() -> bool:
    """The oldest owed notify duty (a start before its end): its outbox row written, the duty deleted,
    in one transaction. Deleting the duty is the claim, so the worker's loop and its notification
    thread can both call this and a run is still told once."""
    duty = (
        Duty.objects.filter(name__in=(duties.NOTIFY_START, duties.NOTIFY))
        .select_related("run")
        .order_by("created_at", "id")
        .first()
    )
    if duty is None:
        return False
    try:
        with transaction.atomic():
            if not Duty.objects.filter(id=duty.id).delete()[0]:
                return True  # done by the other thread meanwhile
            if duty.name == duties.NOTIFY_START:
                services.notify_run_started(duty.run)
            else:
                services.notify_run_ended(duty.run)
    except Exception:
        attempts = duty.attempts + 1
        logger.exception("duty %s failed (attempt %d of %d)", duty.name, attempts, duties.MAX_ATTEMPTS)
        if attempts >= duties.MAX_ATTEMPTS:
            Duty.objects.filter(id=duty.id).delete()
        else:
            Duty.objects.filter(id=duty.id).update(attempts=attempts)
    return True


def deliver_due(*, now: datetime | None = None, should_stop: Callable[[], bool] = lambda: False) -> bool:
    """Attempt up to BATCH due deliveries, oldest due first; True when there were any."""
    now = now or timezone.now()
    due = list(
        Delivery.objects.filter(
            Q(claimed_until__isnull=True) | Q(claimed_until__lt=now),
            status__in=(DeliveryStatus.PENDING, DeliveryStatus.RETRYING),
            next_attempt_at__lte=now,
        )
        .order_by("next_attempt_at", "id")
        .values_list("id", flat=True)[:BATCH]
    )
    for delivery_id in due:
        if should_stop():
            break
        delivery = services.delivery_claim(delivery_id, now=now)
        if delivery is not None:
            services.delivery_attempt(delivery, now=now)
    return bool(due)


def last_success_at() -> datetime | None:
    """When a backup last succeeded: a run of the service, or a completed folder made by anything else
    (a cron job with `run_backup`, the script run by hand)."""
    run = last_successful_run()
    newest = (
        Backup.objects.filter(status=BackupStatus.COMPLETED)
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    moments = [m for m in (run.finished_at if run else None, newest) if m is not None]
    return max(moments) if moments else None


def check_stale(*, now: datetime | None = None) -> bool:
    """Raise `backup.stale` once when no backup has succeeded for `staleAfterHours` (0: off). The next
    success re-arms it. Time is counted from the newest success, or from when the service first looked
    (an install over old folders is not stale on its first minute)."""
    now = now or timezone.now()
    state = checkpoint_get(STALE)
    if state is None:
        checkpoint_set(STALE, at=now, data={})
        return False
    hours = config_current()["notifications"]["staleAfterHours"]
    if not hours:
        return False
    last = last_success_at()
    watching_since = state.at or now
    reference = max(last, watching_since) if last else watching_since
    if now - reference < timedelta(hours=hours):
        return False
    if moment(state.data.get("raised_for")) == reference:
        return False
    with transaction.atomic():
        services.notify_backup_stale(last_success_at=last, stale_after_hours=hours, now=now)
        checkpoint_set(STALE, at=state.at, data={**state.data, "raised_for": reference.isoformat()})
    logger.warning("no successful backup for %d h", hours, extra={"last_success_at": str(last)})
    return True
