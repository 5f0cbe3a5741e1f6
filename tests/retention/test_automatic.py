"""Retention by the worker: after each successful run and once a day, but never over the folders of a
fresh install before the service has completed a backup of its own or an admin applied retention by
hand; after a failed run only with `afterFailure`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from backups.audit import Actor
from backups.catalogue import sync
from backups.config.services import config_update
from backups.models import Duty, Run, RunStatus
from backups.retention.services import retention_apply, retention_armed
from backups.retention.step import apply_after_run, apply_daily
from tests.conftest import make_backup

pytestmark = pytest.mark.django_db

OLD = [f"backup-202601{day:02d}_030000" for day in range(1, 11)]


@pytest.fixture
def old_root(backup_root: Path) -> Path:
    """An operator installs the service over a root of ten old backups, with a strict policy."""
    for name in OLD:
        make_backup(backup_root, name)
    sync.sync()
    config_update(
        document={"retention": {"daily": 1, "weekly": 0, "monthly": 0, "afterFailure": True}},
        actor=Actor("admin"),
        partial=True,
    )
    return backup_root


def remaining(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("backup-"))


def ended_run(status: str) -> Run:
    run = Run.objects.create(triggered_by="schedule", status=status, finished_at=timezone.now())
    Duty.objects.create(run=run, name="retention")
    return run


def test_a_fresh_install_loses_nothing_to_automatic_retention(old_root):
    assert not retention_armed()
    assert apply_daily() is False
    ended_run(RunStatus.FAILED)  # even with afterFailure: no backup of its own yet
    assert apply_after_run() is True
    assert remaining(old_root) == OLD
    assert not Duty.objects.exists()


def test_an_admin_applying_retention_by_hand_arms_it(old_root):
    deleted = retention_apply(actor=Actor("admin"), trigger="applied by hand")
    assert [backup_id for backup_id, _ in deleted] == list(reversed(OLD[:-1]))
    assert retention_armed()
    make_backup(old_root, "backup-20260111_030000")
    make_backup(old_root, "backup-20260112_030000")
    sync.sync()
    # Retention ran a moment ago (by hand): the daily pass waits 24 h.
    assert apply_daily() is False
    assert apply_daily(now=timezone.now() + timedelta(hours=25)) is True
    assert remaining(old_root) == ["backup-20260112_030000"]


def test_a_successful_run_arms_it_and_retention_follows_it(old_root):
    ended_run(RunStatus.SUCCEEDED)
    assert retention_armed()
    assert apply_after_run() is True
    assert remaining(old_root) == [OLD[-1]]


def test_after_a_failed_run_retention_waits_unless_after_failure(old_root):
    Run.objects.create(triggered_by="schedule", status=RunStatus.SUCCEEDED, finished_at=timezone.now())
    config_update(document={"retention": {"afterFailure": False}}, actor=Actor("admin"), partial=True)
    ended_run(RunStatus.FAILED)
    assert apply_after_run() is True
    assert remaining(old_root) == OLD
    config_update(document={"retention": {"afterFailure": True}}, actor=Actor("admin"), partial=True)
    ended_run(RunStatus.INTERRUPTED)
    assert apply_after_run() is True
    assert remaining(old_root) == [OLD[-1]]
