"""Writing the outbox and recording every delivery attempt.

`notification_create` writes a notification and one delivery per channel that must hear it, in the
caller's transaction (the event's own). The `notify_*` functions render each event's message from
the durable facts; `delivery_attempt` sends one delivery once and records how it went, with the
back-off of `backoff` for what may heal (5xx, 429, timeouts) and at once `failed` for what will not.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from backups import events
from backups.audit import Actor, audit
from backups.catalogue.models import Backup
from backups.config.selectors import config_current
from backups.notifications import backoff, channels, messages, transports
from backups.notifications.masking import mask_text
from backups.notifications.models import Delivery, DeliveryStatus, Notification
from backups.notifications.transports import DeliveryResult, TransportError
from backups.runs.models import Run, RunStatus

logger = logging.getLogger(__name__)

ERROR_MAX = 2000
# Longer than any single attempt can take (transports time out after 10 s): a claim older than this
# belongs to a worker that died mid-attempt.
CLAIM_SECONDS = 120
TEST_PARALLEL = 8


def _source() -> str:
    return settings.NOTIFICATION_SOURCE


def notification_create(
    message: messages.Message, *, document: dict[str, Any] | None = None, run: Run | None = None
) -> Notification | None:
    """The outbox row of a message and a pending delivery for every channel that must hear it; None
    (and nothing written) when no channel does. Call it inside the transaction of the event."""
    document = document or config_current()
    chosen = channels.for_message(message, document)
    if not chosen:
        return None
    now = timezone.now()
    with transaction.atomic():
        notification = Notification.from_message(message, run=run, created_at=now)
        notification.save(force_insert=True)
        Delivery.objects.bulk_create(
            [
                Delivery(
                    notification=notification,
                    channel=channel.name,
                    target=channel.target[:500],
                    target_ref=channel.ref,
                    next_attempt_at=now,
                    created_at=now,
                )
                for channel in chosen
            ]
        )
    return notification


# --- the events -----------------------------------------------------------------------------------


def run_info(run: Run) -> messages.RunInfo:
    size = None
    if run.backup_id:
        size = Backup.objects.filter(id=run.backup_id).values_list("size_bytes", flat=True).first()
    return messages.RunInfo(
        id=str(run.id),
        status=run.status,
        type=run.type,
        kind=getattr(run, "kind", "backup") or "backup",
        backup_id=run.backup_id,
        description=run.description,
        triggered_by=run.triggered_by,
        started_at=run.started_at,
        finished_at=run.finished_at,
        exit_code=run.exit_code,
        error=run.error,
        output=run.output,
        size_bytes=size,
    )


def notify_run_started(run: Run) -> Notification | None:
    """Only the monitor ping hears a start (`<url>/start`): it then knows how long a run takes and
    alerts when one never ends."""
    message = messages.run_started(
        run_info(run),
        message_id=messages.new_message_id(),
        timestamp=run.started_at or timezone.now(),
        source=_source(),
    )
    return notification_create(message, run=run)


def notify_run_ended(run: Run) -> Notification | None:
    message = messages.run_finished(
        run_info(run),
        message_id=messages.new_message_id(),
        timestamp=run.finished_at or timezone.now(),
        source=_source(),
        tz=timezone.get_current_timezone(),
    )
    return notification_create(message, run=run)


def notify_retention_deleted(deleted: Sequence[tuple[str, str]], *, kept: int) -> Notification | None:
    """Retention deleted backups (each with its reason); also a `system-notification` event."""
    if not deleted:
        return None
    message = messages.retention_deleted(
        deleted, kept=kept, message_id=messages.new_message_id(), timestamp=timezone.now(), source=_source()
    )
    with transaction.atomic():
        notification = notification_create(message)
        names = ", ".join(backup_id for backup_id, _ in deleted[:5])
        more = f" and {len(deleted) - 5} more" if len(deleted) > 5 else ""
        events.notify("info", f"Retention deleted {len(deleted)} backup(s): {names}{more}.")
    return notification


def notify_verification_failed(*, backup_id: str, level: str, problems: Sequence[str]) -> Notification | None:
    """A backup failed its check (`level`: quick, deep, restore-test): the people's channels and the
    dashboard hear it. Call it in the transaction that records the verification."""
    message = messages.verification_failed(
        backup_id=backup_id,
        level=level,
        problems=list(problems),
        message_id=messages.new_message_id(),
        timestamp=timezone.now(),
        source=_source(),
    )
    with transaction.atomic():
        notification = notification_create(message)
        first = mask_text(problems[0]) if problems else "no detail"
        events.notify("error", f"Verification ({level}) of {backup_id} failed: {first}")
    return notification


def notify_offsite_failed(*, backup_id: str, error: str) -> Notification | None:
    """An off-site copy failed: e-mail and Apprise hear it (the dashboard already did, from the job)."""
    message = messages.offsite_failed(
        backup_id=backup_id,
        error=error,
        message_id=messages.new_message_id(),
        timestamp=timezone.now(),
        source=_source(),
    )
    with transaction.atomic():
        return notification_create(message)


def notify_backup_stale(
    *, last_success_at: datetime | None, stale_after_hours: int, now: datetime
) -> Notification | None:
    message = messages.backup_stale(
        last_success_at=last_success_at,
        stale_after_hours=stale_after_hours,
        message_id=messages.new_message_id(),
        timestamp=now,
        source=_source(),
        tz=timezone.get_current_timezone(),
    )
    with transaction.atomic():
        notification = notification_create(message)
        events.notify("error", message.title)
    return notification


# --- attempts -------------------------------------------------------------------------------------


def _result_of_exception(
    channel: str, target: str, error: Exception, secrets: Sequence[str]
) -> DeliveryResult:
    if isinstance(error, TransportError):
        return DeliveryResult(
            channel=channel,
            target=target,
            ok=False,
            status_code=error.status_code,
            detail=error.detail,
            permanent=error.permanent,
            retry_after=error.retry_after,
        )
    # A bug of a plugin or of ours: worth another try later, and the type says where to look.
    detail = mask_text(f"{type(error).__name__}: {error}", secrets)
    return DeliveryResult(channel=channel, target=target, ok=False, detail=detail)


def _send(delivery: Delivery, channel: channels.Channel, message: messages.Message) -> DeliveryResult:
    """One attempt, without the database: safe to run on a thread of its own."""
    try:
        transport = channel.transport()
        result = transports.deliver(transport, message)
    except Exception as error:  # every failure is recorded: none may stop the other channels
        return _result_of_exception(delivery.channel, delivery.target, error, [channel.value])
    return result


def _record(delivery: Delivery, result: DeliveryResult, *, now: datetime, retry: bool = True) -> Delivery:
    """Store an attempt's outcome: delivered, retried later per the back-off, or failed for good."""
    delivery.last_status_code = result.status_code
    delivery.latency_ms = result.latency_ms
    delivery.claimed_until = None
    if result.ok:
        delivery.status = DeliveryStatus.DELIVERED
        delivery.delivered_at = now
        delivery.next_attempt_at = None
    else:
        detail = mask_text(result.detail)[:ERROR_MAX] or "failed"
        next_at = None
        if retry and not result.permanent:
            next_at = backoff.next_attempt_at(
                first_attempt_at=delivery.first_attempt_at or now,
                failed_attempts=max(1, delivery.attempts),
                now=now,
                retry_after=result.retry_after,
            )
            if next_at is None:
                hours = int(backoff.GIVE_UP_AFTER.total_seconds() // 3600)
                detail = f"gave up after {hours} h of retries: {detail}"[:ERROR_MAX]
        delivery.last_error = detail
        delivery.status = DeliveryStatus.RETRYING if next_at else DeliveryStatus.FAILED
        delivery.next_attempt_at = next_at
    Delivery.objects.filter(id=delivery.id).update(
        status=delivery.status,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        latency_ms=delivery.latency_ms,
        next_attempt_at=delivery.next_attempt_at,
        claimed_until=None,
        delivered_at=delivery.delivered_at,
    )
    log = logger.info if result.ok else logger.warning
    log(
        "notification %s",
        "delivered" if result.ok else delivery.status,
        extra={
            "notification": delivery.notification_id,
            "channel": delivery.channel,
            "target": delivery.target,
            "attempts": delivery.attempts,
            "status_code": result.status_code,
            "error": "" if result.ok else delivery.last_error,
        },
    )
    return delivery


def delivery_claim(delivery_id: int, *, now: datetime) -> Delivery | None:
    """Take a due delivery for one attempt (a conditional update: one attempt at a time)."""
    open_and_free = Q(
        status__in=(DeliveryStatus.PENDING, DeliveryStatus.RETRYING), next_attempt_at__lte=now
    ) & (Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
    delivery = Delivery.objects.filter(open_and_free, id=delivery_id).select_related("notification").first()
    if delivery is None:
        return None
    attempts = delivery.attempts + 1
    first = delivery.first_attempt_at or now
    won = Delivery.objects.filter(open_and_free, id=delivery_id, attempts=delivery.attempts).update(
        claimed_until=now + timedelta(seconds=CLAIM_SECONDS), attempts=attempts, first_attempt_at=first
    )
    if not won:
        return None
    delivery.attempts, delivery.first_attempt_at = attempts, first
    return delivery


def delivery_attempt(delivery: Delivery, *, now: datetime | None = None) -> Delivery:
    """Send a claimed delivery once and record the outcome."""
    now = now or timezone.now()
    notification = delivery.notification
    if notification.event == messages.RUN_STARTED and delivery.attempts > 1 and _run_has_ended(notification):
        # A first attempt goes before the end's (oldest due first); a retry may come after it, and a
        # `/start` after the end would tell the monitor that a new run began.
        result = DeliveryResult(
            delivery.channel,
            delivery.target,
            ok=False,
            permanent=True,
            detail="not sent: the run had ended before its start could be reported",
        )
        return _record(delivery, result, now=now)
    try:
        channel = channels.resolve(delivery.channel, delivery.target_ref, config_current())
    except TransportError as error:
        return _record(delivery, _result_of_exception(delivery.channel, delivery.target, error, []), now=now)
    return _record(delivery, _send(delivery, channel, notification.message()), now=now)


def _run_has_ended(notification: Notification) -> bool:
    if notification.run_id is None:
        return False
    status = Run.objects.filter(id=notification.run_id).values_list("status", flat=True).first()
    return status not in (None, RunStatus.QUEUED, RunStatus.RUNNING)


def deliveries_release_claims() -> int:
    """Called by a worker that has just taken the lease: only the lease holder delivers, so every claim
    still set is a previous holder's that died mid-attempt; its deliveries are due again now."""
    return Delivery.objects.filter(claimed_until__isnull=False).update(claimed_until=None)


# --- the test ---------------------------------------------------------------------------------------


def notifications_test(*, actor: Actor) -> list[dict[str, Any]]:
    """A test message to every configured channel now (at once, in parallel), each outcome answered and
    recorded as a delivery. One attempt each: a test is for the admin looking at the answer, not to be
    retried behind their back. The monitor ping is left out: a ping would mark the check up."""
    document = config_current()
    message = messages.channel_test(
        message_id=messages.new_message_id(), timestamp=timezone.now(), source=_source()
    )
    chosen = [channel for channel in channels.for_message(message, document) if channel.name != channels.PING]
    now = timezone.now()
    notification = None
    deliveries: list[Delivery] = []
    if chosen:
        with transaction.atomic():
            notification = Notification.from_message(message, created_at=now)
            notification.save(force_insert=True)
            deliveries = [
                Delivery.objects.create(
                    notification=notification,
                    channel=channel.name,
                    target=channel.target[:500],
                    target_ref=channel.ref,
                    attempts=1,
                    first_attempt_at=now,
                    created_at=now,
                    claimed_until=now + timedelta(seconds=CLAIM_SECONDS),
                )
                for channel in chosen
            ]
    with ThreadPoolExecutor(max_workers=TEST_PARALLEL) as pool:
        outcomes = list(pool.map(lambda d, c: _send(d, c, message), deliveries, chosen))
    results = []
    for delivery, channel, result in zip(deliveries, chosen, outcomes, strict=True):
        _record(delivery, result, now=timezone.now(), retry=False)
        results.append(
            {
                "channel": channel.name,
                "target": channel.target,
                "ok": result.ok,
                "detail": mask_text(result.detail, [channel.value])
                if not result.ok
                else (result.detail or "sent"),
            }
        )
    with transaction.atomic():
        audit(
            "notifications.test",
            actor=actor,
            target=notification.id if notification else "",
            outcome="ok" if all(r["ok"] for r in results) else "failed",
            details={"results": results},
        )
    return results
