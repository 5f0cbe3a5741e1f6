"""When the worker verifies on its own: every kept backup re-read over time, one a day, oldest
verification first; nothing automatic in the first minutes after start-up."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from backups.catalogue import sync
from backups.models import Backup, Run, RunStatus
from backups.runs.models import RunKind
from backups.verification.services import verification_start_due
from backups.worker.loop import Worker
from tests.conftest import make_backup

pytestmark = pytest.mark.django_db


def verified(backup_root, ages: dict[str, timedelta | None]) -> None:
    """Backups whose last verification passed `age` ago (None: never verified)."""
    for name in ages:
        make_backup(backup_root, name, {"a.txt": "a\n"})
    sync.sync()
    now = timezone.now()
    for name, age in ages.items():
        Backup.objects.filter(id=name).update(
            verification_due="",
            verification_status="never" if age is None else "ok",
            verified_at=None if age is None else now - age,
        )


def end(run: Run) -> None:
    Run.objects.filter(id=run.id).update(status=RunStatus.SUCCEEDED, finished_at=timezone.now())


def test_one_backup_a_day_is_re_verified_the_one_verified_longest_ago_first(backup_root):
    verified(
        backup_root,
        {
            "backup-20260101_030000": timedelta(days=2),
            "backup-20260102_030000": timedelta(days=5),
            "backup-20260103_030000": timedelta(hours=3),
        },
    )
    first = verification_start_due()
    assert first.kind == RunKind.VERIFY and first.automatic and first.backup_id == "backup-20260102_030000"
    end(first)
    Backup.objects.filter(id=first.backup_id).update(verified_at=timezone.now(), verification_due="")

    assert verification_start_due() is None  # one a day: today's was done
    tomorrow = timezone.now() + timedelta(days=1, minutes=1)
    second = verification_start_due(now=tomorrow)
    assert second.backup_id == "backup-20260101_030000"
    end(second)
    Run.objects.filter(id=second.id).update(created_at=tomorrow)
    Backup.objects.filter(id=second.backup_id).update(verified_at=tomorrow, verification_due="")
    assert verification_start_due(now=tomorrow + timedelta(hours=1)) is None  # again: one a day
    third = verification_start_due(now=tomorrow + timedelta(days=1, minutes=1))
    assert third.backup_id == "backup-20260103_030000"


def test_a_backup_never_verified_comes_before_one_verified_long_ago(backup_root):
    verified(backup_root, {"backup-20260101_030000": timedelta(days=30), "backup-20260102_030000": None})
    assert verification_start_due().backup_id == "backup-20260102_030000"


def test_nothing_automatic_starts_in_the_first_minutes_after_start_up(backup_root, settings):
    settings.AUTOMATIC_JOBS_DELAY_SECONDS = 180
    verified(backup_root, {"backup-20260101_030000": None})
    Backup.objects.update(verification_due="quick")
    worker = Worker()
    assert worker.automatic_jobs() is False
    assert not Run.objects.exists()
    worker.started -= 181  # three minutes later
    assert worker.automatic_jobs() is True
    assert Run.objects.get().kind == RunKind.VERIFY
