"""Reads of the config document and what follows from it (the next scheduled run)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from backups.config import document as config_document
from backups.config.models import BackupConfig


def config_current() -> dict[str, Any]:
    """The stored document completed with the defaults of keys added since it was written (the
    default document itself before anyone saved one)."""
    stored = BackupConfig.objects.filter(id=1).values_list("document", flat=True).first()
    return config_document.upgrade(stored if stored is not None else config_document.default_document())


def next_scheduled_at(document: dict[str, Any] | None = None) -> datetime | None:
    """When the schedule fires next, in the server's time zone; None when it is disabled."""
    document = document or config_current()
    if not document["enabled"]:
        return None
    return config_document.next_fire_time(document["schedule"], timezone.localtime())
