"""Reads of the catalogue. They never write: call `catalogue.sync.ensure_fresh()` first where the
answer must reflect the disk as it is now."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db.models import Count, QuerySet, Sum

from backups.catalogue.models import Backup, BackupStatus
from backups.catalogue.paths import LATEST_LINK, BackupNotFound, check_backup, is_valid_id
from backups.errors import NotFound

ORDERINGS = ("created_at", "-created_at", "size_bytes", "-size_bytes")


def latest_backup() -> Backup | None:
    """The target of `latest`: the link when it names a completed backup, else the newest completed."""
    backup = Backup.objects.filter(is_latest=True, status=BackupStatus.COMPLETED).first()
    return (
        backup or Backup.objects.filter(status=BackupStatus.COMPLETED).order_by("-created_at", "-id").first()
    )


def get_backup(backup_id: str) -> Backup:
    """A catalogued backup by id or `latest`, only if its folder is safely inside the root (or, for a
    backup whose folder is gone, if the catalogue keeps it for its off-site copy)."""
    if backup_id == LATEST_LINK:
        backup = latest_backup()
        if backup is None:
            raise NotFound("No completed backup yet.")
        return backup
    backup = Backup.objects.filter(id=backup_id).first() if is_valid_id(backup_id) else None
    if backup is not None and not backup.local:
        return backup  # its folder is gone; its off-site copy is what is left
    try:
        check_backup(Path(settings.BACKUP_ROOT), backup_id)
    except BackupNotFound:
        raise NotFound("Backup not found.") from None
    if backup is None:
        raise NotFound("Backup not found.")
    return backup


def list_backups(*, status: str | None = None, ordering: str = "-created_at") -> QuerySet[Backup]:
    """A page's worth of rows needs neither the file lists nor the signatures."""
    queryset = Backup.objects.defer("files", "signature")
    if status:
        queryset = queryset.filter(status=status)
    return queryset.order_by(ordering, "-id" if ordering.startswith("-") else "id")


def recent_backups(limit: int) -> QuerySet[Backup]:
    return Backup.objects.defer("files", "signature").order_by("-created_at", "-id")[:limit]


def newest_backup() -> Backup | None:
    return Backup.objects.order_by("-created_at", "-id").defer("files").first()


def totals() -> dict[str, int]:
    aggregate = Backup.objects.aggregate(count=Count("id"), total=Sum("size_bytes"))
    return {"count": aggregate["count"], "total_size_bytes": aggregate["total"] or 0}


def unreadable_count() -> int:
    """Folders the last sync could not read completely (their `problems` say what)."""
    return Backup.objects.exclude(problems=[]).count()
