"""Every write to the catalogue: delete, pin, the `latest` link, the metadata beside a run's folder.
Each change writes its audit row in the same transaction; live events leave after commit."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from backups import events
from backups.audit import Actor, AuditEvent, audit, refuse
from backups.catalogue import latest, removal, sidecar
from backups.catalogue.models import Backup, BackupStatus, OffsiteStatus
from backups.catalogue.paths import LATEST_LINK, BackupNotFound, CatalogueError, check_backup, is_valid_id
from backups.errors import NotFound, ServiceError
from backups.offsite.models import RemoteDeletion
from backups.runs.models import Run
from backups.runs.selectors import current_run

logger = logging.getLogger(__name__)


def backup_root() -> Path:
    return Path(settings.BACKUP_ROOT)


def ensure_backup_root() -> None:
    """A fresh install starts with an empty root rather than a `degraded` health check; a root that
    cannot be made (permissions, missing mount) is left for /health and test-script to report."""
    try:
        backup_root().mkdir(parents=True, exist_ok=True)
    except OSError as error:
        logger.warning("backup root cannot be created: %s", error.strerror)


def deletion_refusal(backup: Backup | None, *, backup_id: str, running: Run | None) -> str | None:
    """Why this backup may not be deleted, or None. The one rule the API, the admin (which checks a
    whole selection before deleting any of it) and retention all go by."""
    if running is not None and running.backup_id == backup_id:
        return "This backup belongs to the running backup run."
    if backup is not None and backup.pinned:
        return "This backup is pinned; unpin it before deleting it."
    return None


def backup_delete(*, backup_id: str, actor: Actor, details: dict[str, Any] | None = None) -> None:
    if backup_id == LATEST_LINK:
        raise NotFound("Backup not found: delete a backup by its real id, not `latest`.")
    if not is_valid_id(backup_id):  # before any query: PostgreSQL refuses NUL bytes with an error
        raise NotFound("Backup not found.")
    root = backup_root()
    backup = Backup.objects.filter(id=backup_id).first()
    try:
        check_backup(root, backup_id)
    except BackupNotFound:
        if backup is None or backup.local:
            raise NotFound("Backup not found.") from None
    refusal = deletion_refusal(backup, backup_id=backup_id, running=current_run())
    if refusal:
        raise refuse("backup.delete", refusal, actor=actor, target=backup_id, reason=refusal)
    if backup is not None and not backup.local:
        _delete_remote_only(backup, actor=actor, details=details)
        return
    was_latest = latest.read_latest(root) == backup_id
    size = backup.size_bytes if backup else None
    try:
        removal.delete_backup(root, backup_id)
    except BackupNotFound:
        raise NotFound("Backup not found.") from None
    except OSError as error:
        with transaction.atomic():
            audit(
                "backup.delete",
                actor=actor,
                target=backup_id,
                outcome="failed",
                details={"error": error.strerror or type(error).__name__},
            )
        raise ServiceError("The backup could not be deleted completely; see the service log.") from None
    with transaction.atomic():
        Backup.objects.filter(id=backup_id).delete()
        if backup is not None and backup.offsite_status != OffsiteStatus.NONE:
            RemoteDeletion.owe([backup_id])  # the off-site step removes its copy from the store
        new_latest = repoint_latest() if was_latest else None
        audit(
            "backup.delete",
            actor=actor,
            target=backup_id,
            details={
                "size_bytes": size,
                "was_latest": was_latest,
                "latest_now": new_latest,
                **(details or {}),
            },
        )
    events.notify("info", f"Backup {backup_id} deleted by {actor}.")


def _delete_remote_only(backup: Backup, *, actor: Actor, details: dict[str, Any] | None) -> None:
    """A backup whose folder is gone and whose off-site copy is all that is left: its row goes now, its
    copy is owed its removal from the store."""
    with transaction.atomic():
        Backup.objects.filter(id=backup.id).delete()
        RemoteDeletion.owe([backup.id])
        audit(
            "backup.delete",
            actor=actor,
            target=backup.id,
            details={"size_bytes": backup.size_bytes, "local": False, **(details or {})},
        )
    events.notify("info", f"Backup {backup.id} (off-site copy) deleted by {actor}.")


def repoint_latest() -> str | None:
    """Point `latest` at the newest completed backup left (or remove it); returns its id."""
    newest = (
        Backup.objects.filter(status=BackupStatus.COMPLETED, local=True)
        .order_by("-created_at", "-id")
        .values_list("id", flat=True)
        .first()
    )
    try:
        latest.set_latest(backup_root(), newest)
    except CatalogueError:
        logger.error("`latest` in the backup root is not a symlink; left untouched")
        return None
    Backup.objects.exclude(id=newest).filter(is_latest=True).update(is_latest=False)
    if newest:
        Backup.objects.filter(id=newest).update(is_latest=True)
    return newest


def backup_set_pinned(*, backup_id: str, pinned: bool, actor: Actor) -> Backup:
    with transaction.atomic():
        updated = Backup.objects.filter(id=backup_id).update(pinned=pinned)
        if not updated:
            raise NotFound("Backup not found.")
        audit("backup.pin" if pinned else "backup.unpin", actor=actor, target=backup_id)
    return Backup.objects.get(id=backup_id)


def backup_write_facts(*, run: Run, status: str) -> None:
    """What the disk cannot say about a run's folder (its run, type, description, who started it),
    written beside it so that a lost database can be rebuilt from the folders."""
    try:
        sidecar.write_metadata(
            backup_root(),
            run.backup_id,
            {
                "run_id": str(run.id),
                "type": run.type,
                "description": run.description,
                "triggered_by": run.triggered_by,
                "status": status,
            },
        )
    except (OSError, CatalogueError):
        logger.warning("could not write metadata of %s", run.backup_id, exc_info=True)


def backup_record_download(*, backup_id: str, actor: Actor, details: dict[str, Any]) -> AuditEvent:
    """A download is audited like a change: who took which backup (or file). Written before the first
    byte leaves (a transfer that never ends is still on record); `backup_download_ended` then says how
    much was actually sent."""
    with transaction.atomic():
        return audit("backup.download", actor=actor, target=backup_id, details=details)


def backup_download_ended(event: AuditEvent, *, sent: int, planned: int) -> None:
    """The bytes that reached the client: `bytes` is what was sent, `planned_bytes` what the answer
    announced; a transfer cut short (client gone, file changed) has the outcome `incomplete`."""
    details = {**(event.details or {}), "bytes": sent, "planned_bytes": planned, "complete": sent == planned}
    AuditEvent.objects.filter(pk=event.pk).update(
        details=details, outcome="ok" if sent == planned else "incomplete"
    )
