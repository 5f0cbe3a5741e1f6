"""Applying the retention policy (`policy.decide`, with its whole floor) and previewing it.

Each deletion goes through the same path as an admin's delete (`backup_delete`: audited, refused for
pinned backups and the running run's folder), with the decision's reason in its audit row; what was
deleted is announced once (`retention.deleted`).

Automatic retention (after a run, once a day) waits until it is armed: until the service has completed
a backup of its own, or an admin has applied retention by hand. An operator who installs the service
over a root full of old backups must not lose any of them on the first start.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from backups.audit import Actor, audit
from backups.catalogue import sync
from backups.catalogue.models import Backup
from backups.catalogue.services import backup_delete
from backups.checkpoints import checkpoint_get, checkpoint_set
from backups.config import document as config_document
from backups.config.selectors import config_current
from backups.errors import ServiceError
from backups.notifications.services import notify_retention_deleted
from backups.retention import policy
from backups.runs.selectors import current_run, last_successful_run

logger = logging.getLogger(__name__)

RETENTION = Actor("retention")
CHECKPOINT = "retention"


def _decisions(rules: dict[str, Any], *, now: datetime) -> list[policy.Decision]:
    running = current_run()
    backups = [
        policy.BackupInfo(id=b.id, created_at=b.created_at, status=b.status, type=b.type, pinned=b.pinned)
        for b in Backup.objects.only("id", "created_at", "status", "type", "pinned")
    ]
    return policy.decide(
        backups,
        policy.Policy.from_document(rules),
        now=now,
        tz=timezone.get_current_timezone(),
        running_backup_id=(running.backup_id or None) if running else None,
    )


def retention_preview(*, candidate: Any = None, now: datetime | None = None) -> dict[str, Any]:
    """What the current policy (or `candidate`, a `retention` object merged onto it and validated like
    the config) keeps and deletes, with every reason. Deletes nothing."""
    current = config_current()
    rules = current["retention"]
    if candidate is not None:
        rules = config_document.validate_part("retention", candidate, current=current)
    sync.ensure_fresh()
    decisions = _decisions(rules, now=now or timezone.now())
    return {
        "policy": rules,
        "backups": [decision.as_dict() for decision in decisions],
        "delete": policy.to_delete(decisions),
    }


def retention_armed() -> bool:
    """Whether retention may run by itself: a backup of the service's own succeeded, or an admin
    applied it by hand."""
    state = checkpoint_get(CHECKPOINT)
    return bool(state and state.data.get("armed")) or last_successful_run() is not None


def last_applied_at() -> datetime | None:
    state = checkpoint_get(CHECKPOINT)
    return state.at if state else None


def retention_apply(
    *, actor: Actor = RETENTION, trigger: str = "manual", now: datetime | None = None
) -> list[tuple[str, str]]:
    """Delete every backup the current policy does not keep; [(backup id, reason)] of those deleted.
    A backup that cannot be deleted (pinned meanwhile, gone) is skipped and logged."""
    now = now or timezone.now()
    rules = config_current()["retention"]
    sync.ensure_fresh()
    decisions = _decisions(rules, now=now)
    deleted: list[tuple[str, str]] = []
    for decision in decisions:
        if decision.keep:
            continue
        try:
            backup_delete(
                backup_id=decision.id,
                actor=actor,
                details={"reason": decision.reason, "trigger": trigger, "retention": rules},
            )
        except ServiceError as error:
            logger.warning("retention could not delete %s: %s", decision.id, error.message)
            continue
        deleted.append((decision.id, decision.reason))
    manual = actor != RETENTION
    state = checkpoint_get(CHECKPOINT)
    data = dict(state.data) if state else {}
    if manual:
        data["armed"] = True
    with transaction.atomic():
        checkpoint_set(CHECKPOINT, at=now, data=data)
        if manual or deleted:
            audit(
                "retention.apply",
                actor=actor,
                target="retention",
                details={
                    "trigger": trigger,
                    "retention": rules,
                    "deleted": [{"id": backup_id, "reason": reason} for backup_id, reason in deleted],
                },
            )
        notify_retention_deleted(deleted, kept=len(decisions) - len(deleted))
    if deleted:
        logger.info("retention deleted backups", extra={"deleted": [backup_id for backup_id, _ in deleted]})
    return deleted


def retention_apply_automatic(*, trigger: str, now: datetime | None = None) -> list[tuple[str, str]] | None:
    """Retention by the worker; None when it is not armed yet (nothing is deleted then)."""
    if not retention_armed():
        logger.info("retention not applied: the service has not completed a backup of its own yet")
        return None
    return retention_apply(actor=RETENTION, trigger=trigger, now=now)
