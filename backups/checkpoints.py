"""Named moments the worker keeps across restarts, one row each: when the schedule last looked and which
slot it fired, when retention last ran and whether an admin armed it, whether the stale alert is up.
They must survive a restart (a catch-up depends on knowing when the service last looked), so they are
rows, not attributes of the worker."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import models
from django.utils import timezone


class Checkpoint(models.Model):
    name = models.CharField(primary_key=True, max_length=64)
    at = models.DateTimeField(null=True, blank=True)
    data = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.name} at {self.at}"


def checkpoint_get(name: str) -> Checkpoint | None:
    return Checkpoint.objects.filter(name=name).first()


def checkpoint_set(name: str, *, at: datetime | None, data: dict[str, Any] | None = None) -> Checkpoint:
    """Store the moment (and, when given, replace the data) of a checkpoint."""
    defaults: dict[str, Any] = {"at": at, "updated_at": timezone.now()}
    if data is not None:
        defaults["data"] = data
    checkpoint, _ = Checkpoint.objects.update_or_create(name=name, defaults=defaults)
    return checkpoint


def moment(value: Any) -> datetime | None:
    """A datetime kept in a checkpoint's data (ISO text), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
