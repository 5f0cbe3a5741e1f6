"""Changing the config document: validated whole, stored with its audit row in one transaction."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from backups import events
from backups.audit import Actor, audit
from backups.config import document as config_document
from backups.config.models import BackupConfig


def config_update(*, document: Any, actor: Actor, partial: bool) -> dict[str, Any]:
    """Validate the whole new document first; store it and its audit row in one transaction, or
    change nothing (ConfigInvalid carries DRF-shaped errors)."""
    with transaction.atomic():
        config = BackupConfig.objects.select_for_update().filter(id=1).first() or BackupConfig.load()
        old = config_document.upgrade(config.document)
        new = config_document.validate(document, current=old if partial else None)
        config.document = new
        config.updated_by = actor.id
        config.save()
        changes = config_document.diff(old, new)
        audit(
            "config.update",
            actor=actor,
            target="config",
            details={"method": "PATCH" if partial else "PUT", "changes": changes},
        )
    if changes:
        events.notify("info", f"Backup configuration changed by {actor}: {', '.join(sorted(changes))}.")
    return new
