"""Applying the retention policy: the backups it no longer keeps are deleted through the same path
as an admin's delete (audited, refused for pinned and running ones)."""

from __future__ import annotations

import logging

from django.utils import timezone

from backups.audit import Actor
from backups.catalogue.models import Backup, BackupStatus
from backups.catalogue.services import backup_delete
from backups.config.selectors import config_current
from backups.errors import ServiceError
from backups.retention import policy

logger = logging.getLogger(__name__)

RETENTION = Actor("retention")


def retention_apply(*, actor: Actor = RETENTION) -> list[str]:
    """Delete the completed backups the policy no longer keeps. Pinned and latest stay; incomplete ones
    are left for an admin to look at (they must not fill a day's slot of a good backup)."""
    rules = config_current()["retention"]
    candidates = [
        policy.Candidate(id=b.id, created_at=b.created_at, keep=b.pinned or b.is_latest)
        for b in Backup.objects.filter(status=BackupStatus.COMPLETED).only(
            "id", "created_at", "pinned", "is_latest"
        )
    ]
    doomed = policy.select_prunable(candidates, rules, tz=timezone.get_current_timezone())
    deleted = []
    for backup_id in doomed:
        try:
            backup_delete(backup_id=backup_id, actor=actor)
            deleted.append(backup_id)
        except ServiceError as error:
            logger.warning("retention could not delete %s: %s", backup_id, error.message)
    if deleted:
        logger.info("retention pruned backups", extra={"deleted": deleted})
    return deleted
