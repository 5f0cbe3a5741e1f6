"""The outbox: a `Notification` per event (the rendered message, kept as it was said), and a `Delivery`
per channel that must hear it, with every attempt's outcome. Both are written in the transaction of
the event that caused them; the worker's notification thread delivers them, so a crash loses none
and a slow receiver never delays a backup."""

from __future__ import annotations

from datetime import datetime

from django.db import models
from django.utils import timezone

from backups.notifications.messages import Message


class Notification(models.Model):
    """One event to tell: its id is the message id (the webhook's `webhook-id`, the same on every
    attempt, so a receiver can drop a duplicate)."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    event = models.CharField(max_length=32, db_index=True)
    title = models.CharField(max_length=500)
    text = models.TextField()
    html = models.TextField()
    data = models.JSONField(default=dict, blank=True)
    severity = models.CharField(max_length=16, default="info")
    timestamp = models.DateTimeField()  # when the event happened
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    run = models.ForeignKey("Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.event}: {self.title}"

    @classmethod
    def from_message(cls, message: Message, **extra: object) -> Notification:
        return cls(
            id=message.id,
            event=message.event,
            title=message.title[:500],
            text=message.text,
            html=message.html,
            data=message.data,
            severity=message.severity,
            timestamp=message.timestamp,
            **extra,
        )

    def message(self) -> Message:
        return Message(
            id=self.id,
            event=self.event,
            timestamp=self.timestamp,
            title=self.title,
            text=self.text,
            html=self.html,
            data=self.data,
            severity=self.severity,
        )


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    RETRYING = "retrying"
    FAILED = "failed"


OPEN_DELIVERY_STATUSES = (DeliveryStatus.PENDING, DeliveryStatus.RETRYING)


class Delivery(models.Model):
    """A notification to one channel. `target` is masked (safe to show); the real URL stays in the config
    document only, found again at each attempt through `target_ref` (an HMAC of it): a URL removed from
    the config is not called any more, and no secret is copied into this table."""

    notification = models.ForeignKey(Notification, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=16, db_index=True)  # webhook | email | apprise | ping
    target = models.CharField(max_length=500, blank=True, default="")
    target_ref = models.CharField(max_length=64, blank=True, default="", editable=False)
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING, db_index=True
    )
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.IntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # Set while an attempt is under way: a worker that dies mid-attempt leaves a claim that expires (or
    # that the next lease holder clears at once) instead of a delivery nobody picks up again.
    claimed_until = models.DateTimeField(null=True, blank=True)
    first_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "deliveries"

    def __str__(self) -> str:
        return f"{self.notification.event} to {self.channel} ({self.status})"

    @property
    def event(self) -> str:
        return self.notification.event

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_DELIVERY_STATUSES

    def due(self, now: datetime) -> bool:
        return self.is_open and self.next_attempt_at is not None and self.next_attempt_at <= now
