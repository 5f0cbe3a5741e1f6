"""A verify job's failed end, recorded the way the worker records it (for tests of what follows)."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from backups.models import Backup, Run, RunStatus
from backups.verification.services import job_record


def record_failed_verification(
    backup_id: str, problems: tuple[str, ...] = ("db.sql: digest mismatch",)
) -> None:
    Backup.objects.get_or_create(id=backup_id, defaults={"created_at": timezone.now()})
    run = Run.objects.create(
        kind="verify",
        status=RunStatus.SUCCEEDED,
        triggered_by="worker",
        backup_id=backup_id,
        params={"level": "quick"},
        result={
            "verification": {
                "status": "failed",
                "level": "quick",
                "at": timezone.now().isoformat(),
                "problems": list(problems),
                "databases": [],
            }
        },
    )
    with transaction.atomic():
        job_record(run)
