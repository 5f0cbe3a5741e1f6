"""Changing the config document: validated whole, stored with its audit row in one transaction."""

from __future__ import annotations

import copy
from typing import Any

from django.db import transaction

from backups import events
from backups.audit import Actor, audit
from backups.config import document as config_document
from backups.config.models import BackupConfig
from backups.config.selectors import config_public, url_mask_key
from backups.notifications.masking import UnknownMaskedValue, merge_masked


def config_with_stored_secrets(document: Any, stored: dict[str, Any]) -> Any:
    """`document` with each masked Apprise URL (as GET and the admin show them) replaced by the stored
    URL it stands for, so a client that edits the document it was given keeps the secrets it never saw.
    A masked value that matches no stored URL is refused: it cannot be turned back into a URL."""
    if not isinstance(document, dict):
        return document
    notifications = document.get("notifications")
    if not isinstance(notifications, dict):
        return document
    urls = notifications.get("urls")
    if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
        return document  # the validation says what is wrong with it
    try:
        merged = merge_masked(urls, stored["notifications"]["urls"], key=url_mask_key())
    except UnknownMaskedValue as unknown:
        raise config_document.ConfigInvalid(
            {
                "notifications": {
                    "urls": [
                        f"Entry {unknown.index + 1}: a masked URL that matches no stored URL; "
                        "send the full URL instead."
                    ]
                }
            }
        ) from None
    document = copy.deepcopy(document)
    document["notifications"]["urls"] = merged
    return document


def config_update(*, document: Any, actor: Actor, partial: bool) -> dict[str, Any]:
    """Validate the whole new document first; store it and its audit row in one transaction, or
    change nothing (ConfigInvalid carries DRF-shaped errors). Answers the stored document (unmasked:
    callers that show it pass it through `config_public`)."""
    with transaction.atomic():
        config = BackupConfig.objects.select_for_update().filter(id=1).first() or BackupConfig.load()
        old = config_document.upgrade(config.document)
        document = config_with_stored_secrets(document, old)
        new = config_document.validate(document, current=old if partial else None)
        config.document = new
        config.updated_by = actor.id
        config.save()
        # The audit trail is readable through the API: it shows the URLs as GET does.
        changes = config_document.diff(config_public(old), config_public(new))
        audit(
            "config.update",
            actor=actor,
            target="config",
            details={"method": "PATCH" if partial else "PUT", "changes": changes},
        )
    if changes:
        events.notify("info", f"Backup configuration changed by {actor}: {', '.join(sorted(changes))}.")
    return new
