"""Verification of backups: what is owed, asking for it, and recording what a verify job found (with
its audit row and, for a failure, a notification)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from backups.audit import WORKER, Actor, audit
from backups.catalogue.models import Backup, BackupStatus, VerificationStatus
from backups.config.selectors import config_current
from backups.errors import Conflict, NotFound
from backups.notifications.services import notify_verification_failed
from backups.runs.models import Run, RunKind, RunStatus
from backups.runs.services import PREEMPTED, job_enqueue

logger = logging.getLogger(__name__)

LEVELS = ("quick", "deep")
GIVE_UP_AFTER_FAILURES = 3


def owed_level() -> str:
    """The level a new backup is owed: deep when the config asks for it (the default)."""
    return "deep" if config_current()["verification"]["deep"] else "quick"


def verification_mark_due(*, backup_id: str, level: str) -> None:
    """Owe a backup a verification; a deep one owed stays owed when a quick one is asked."""
    queryset = Backup.objects.filter(id=backup_id)
    if level == "quick":
        queryset = queryset.exclude(verification_due="deep")
    queryset.update(verification_due=level)


def verification_request(*, backup_id: str, level: str, actor: Actor) -> Run:
    """`POST /api/backup/<id>/verify`: a verify run an admin asked for (a backup request waits for it)."""
    backup = Backup.objects.filter(id=backup_id).first()
    if backup is None:
        raise NotFound("Backup not found.")
    if backup.status == BackupStatus.RUNNING:
        raise Conflict("This backup is still being written; verify it once its run has ended.")
    if not backup.local:
        raise Conflict("This backup's folder is gone: only its off-site copy is left.")
    return job_enqueue(
        kind=RunKind.VERIFY, actor=actor, params={"level": level}, backup_id=backup_id, automatic=False
    )


def verification_start_due(*, now: datetime | None = None) -> Run | None:
    """Queue the automatic verification of the backup most owed one: the newest backup with a
    verification due, else (once a day) the backup whose last verification is the oldest — so every
    kept backup is re-read over time (bit rot). None when the lane is busy or nothing is owed."""
    due = (
        Backup.objects.exclude(verification_due="")
        .filter(local=True)  # a backup whose folder is gone has nothing here to read
        .exclude(status=BackupStatus.RUNNING)
        .order_by("-created_at")
        .first()
    )
    if due is None:
        due = _rolling_candidate(now or timezone.now())
        if due is None:
            return None
        verification_mark_due(backup_id=due.id, level="deep" if owed_level() == "deep" else "quick")
        due.refresh_from_db()
    try:
        return job_enqueue(
            kind=RunKind.VERIFY,
            actor=WORKER,
            params={"level": due.verification_due},
            backup_id=due.id,
            automatic=True,
        )
    except Conflict:
        return None


def _rolling_candidate(now: datetime) -> Backup | None:
    """One backup a day: the one verified longest ago (never verified first)."""
    since = now - timedelta(days=1)
    if Run.objects.filter(kind=RunKind.VERIFY, automatic=True, created_at__gte=since).exists():
        return None
    return (
        Backup.objects.filter(status=BackupStatus.COMPLETED, local=True)
        .filter(Q(verified_at__isnull=True) | Q(verified_at__lt=since))
        .order_by(F("verified_at").asc(nulls_first=True), "created_at")
        .first()
    )


def mark_unseen_backups_due() -> int:
    """Every backup gets a verification at first sight (external ones included: the first one writes
    their manifest)."""
    return (
        Backup.objects.filter(verification_status=VerificationStatus.NEVER, verification_due="", local=True)
        .exclude(status=BackupStatus.RUNNING)
        .update(verification_due="quick")
    )


# --- the job ---------------------------------------------------------------------------------------


def job_prepare(run: Run) -> tuple[dict[str, Any], dict[str, str]]:
    """The verify job's parameters and secrets; the backup shows `running` meanwhile."""
    backup = Backup.objects.filter(id=run.backup_id).first()
    if backup is None:
        raise ValueError("the backup is gone")
    level = run.params.get("level", "quick")
    if backup.verification_status != VerificationStatus.RUNNING:
        Run.objects.filter(id=run.id).update(
            params={**run.params, "previous_status": backup.verification_status}
        )
    Backup.objects.filter(id=backup.id).update(verification_status=VerificationStatus.RUNNING)
    params = {
        "root": str(settings.BACKUP_ROOT),
        "backup_id": backup.id,
        "level": level,
        "demo_dumps_ok": settings.ALLOW_DEMO_DUMPS,
    }
    secrets = {}
    if level == "deep" and settings.RESTORE_TEST_DATABASE_URL:
        secrets["RESTORE_TEST_DATABASE_URL"] = settings.RESTORE_TEST_DATABASE_URL
    return params, secrets


def job_record(run: Run) -> None:
    """What a verify run's end means for its backup (inside the transaction that records the end)."""
    document = run.result.get("verification") if run.status == RunStatus.SUCCEEDED else None
    backup = Backup.objects.filter(id=run.backup_id).first()
    if backup is None:
        return
    if document is None:
        _record_no_verdict(run, backup)
        return
    ok = document.get("status") == "ok"
    level = str(document.get("level") or run.params.get("level", "quick"))
    due = backup.verification_due
    if due == level or level == "deep":
        due = ""
    Backup.objects.filter(id=backup.id).update(
        verification_status=VerificationStatus.OK if ok else VerificationStatus.FAILED,
        verification_level=level,
        verified_at=_parse_time(document.get("at")) or timezone.now(),
        verification={
            "problems": list(document.get("problems") or []),
            "databases": list(document.get("databases") or []),
            "restore_tested": bool(document.get("restore_tested")),
            "manifest": run.result.get("manifest", ""),
        },
        verified=ok,
        verification_due=due,
    )
    audit(
        "backup.verify",
        actor=Actor(run.triggered_by),
        target=backup.id,
        outcome="ok" if ok else "failed",
        details={
            "level": level,
            "run_id": str(run.id),
            "problems": list(document.get("problems") or [])[:50],
        },
    )
    if not ok:
        notify_verification_failed(
            backup_id=backup.id, level=level, problems=list(document.get("problems") or [])
        )


def _record_no_verdict(run: Run, backup: Backup) -> None:
    """The job did not finish: the backup keeps its previous verdict; an automatic one is tried again,
    unless it keeps failing (then the backup is marked failed with why)."""
    previous = run.params.get("previous_status", VerificationStatus.NEVER)
    if backup.verification_status == VerificationStatus.RUNNING:
        Backup.objects.filter(id=backup.id).update(verification_status=previous)
    if not run.automatic or run.error == PREEMPTED:
        return
    failures = Run.objects.filter(
        kind=RunKind.VERIFY,
        automatic=True,
        backup_id=backup.id,
        status__in=[RunStatus.FAILED, RunStatus.INTERRUPTED],
    )
    if backup.verified_at:
        failures = failures.filter(finished_at__gt=backup.verified_at)
    if failures.count() >= GIVE_UP_AFTER_FAILURES:
        problem = f"the verification could not run ({GIVE_UP_AFTER_FAILURES} attempts): {run.error[:300]}"
        Backup.objects.filter(id=backup.id).update(
            verification_status=VerificationStatus.FAILED,
            verification={"problems": [problem], "databases": []},
            verified=False,
            verification_due="",
            verified_at=timezone.now(),
        )
        notify_verification_failed(
            backup_id=backup.id, level=run.params.get("level", "quick"), problems=[problem]
        )


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def drop_scratch_leftovers() -> list[str]:
    """Scratch databases of restore-tests whose job was killed (SIGKILL, a crash of the machine): dropped
    by their name prefix, only while no verify run is active (a running one owns its own)."""
    if not settings.RESTORE_TEST_DATABASE_URL:
        return []
    if Run.objects.filter(kind=RunKind.VERIFY, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).exists():
        return []
    from backups.verification.pg import PgError
    from backups.verification.restore_test import drop_leftovers

    try:
        dropped = drop_leftovers(settings.RESTORE_TEST_DATABASE_URL)
    except PgError as error:
        logger.warning("could not drop leftover scratch databases: %s", error)
        return []
    if dropped:
        logger.info("dropped leftover scratch databases", extra={"databases": dropped})
    return dropped
