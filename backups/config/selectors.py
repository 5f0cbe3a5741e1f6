"""Reads of the config document and what follows from it (the next scheduled run)."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from backups.config import document as config_document
from backups.config.models import BackupConfig
from backups.notifications.masking import mask_url


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


def url_mask_key() -> bytes:
    """The key of the fingerprints in masked URLs (`tgram://****/…#3f9c`): the service's own secret, so
    a fingerprint tells nothing to someone who does not hold it."""
    return settings.SECRET_KEY.encode("utf-8")


def config_public(document: dict[str, Any] | None = None) -> dict[str, Any]:
    """The document as it is shown (GET, the admin, audit diffs): Apprise URLs carry their tokens in the
    URL itself, so they are masked; a masked URL sent back stands for the stored one."""
    shown = copy.deepcopy(document if document is not None else config_current())
    notifications = shown.get("notifications", {})
    key = url_mask_key()
    notifications["urls"] = [mask_url(url, key) for url in notifications.get("urls", [])]
    return shown


def config_updated_at() -> datetime | None:
    return BackupConfig.objects.filter(id=1).values_list("updated_at", flat=True).first()


def schedule_in_words(document: dict[str, Any] | None = None) -> dict[str, str]:
    """The schedule as people read it, and the time zone it is read in (the server's)."""
    document = document or config_current()
    return {
        "expression": document["schedule"],
        "description": config_document.describe_schedule(document["schedule"]),
        "time_zone": timezone.get_current_timezone_name(),
    }
