"""Recording what a check of a backup found, with its audit row."""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.db import transaction

from backups.audit import WORKER, Actor, audit
from backups.catalogue.models import Backup
from backups.notifications.services import notify_verification_failed
from backups.verification import quick

logger = logging.getLogger(__name__)


def backup_verify(*, backup_id: str, actor: Actor = WORKER) -> bool | None:
    """Read a backup back against the manifest its script wrote; None when it has none."""
    verified = quick.verify_manifest(Path(settings.BACKUP_ROOT), backup_id)
    if verified is not None:
        backup_record_verification(backup_id=backup_id, verified=verified, actor=actor)
    return verified


def backup_record_verification(*, backup_id: str, verified: bool, actor: Actor = WORKER) -> None:
    """The result of checking a backup against its manifest, with its audit row."""
    with transaction.atomic():
        Backup.objects.filter(id=backup_id).update(verified=verified)
        audit(
            "backup.verify",
            actor=actor,
            target=backup_id,
            outcome="ok" if verified else "failed",
            details={"verified": verified},
        )
        if not verified:
            notify_verification_failed(
                backup_id=backup_id,
                level="quick",
                problems=["The backup does not match its manifest (MANIFEST.sha256)."],
            )
