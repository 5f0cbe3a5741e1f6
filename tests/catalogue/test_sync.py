"""The catalogue sync: rows follow the folders on disk and the runs that made them."""

from __future__ import annotations

import pytest

from backups.catalogue import sync
from backups.models import Backup, BackupStatus, Run, RunStatus
from tests.conftest import make_backup

pytestmark = pytest.mark.django_db


def test_a_folder_left_running_by_a_crash_after_its_run_ended_is_decided_again(backup_root):
    make_backup(backup_root, "backup-20260101_030000")
    run = Run.objects.create(status=RunStatus.RUNNING, triggered_by="t", backup_id="backup-20260101_030000")
    sync.sync()
    assert Backup.objects.get().status == BackupStatus.RUNNING
    # The run ended (its status committed), then the process died before the sync that follows.
    Run.objects.filter(id=run.id).update(status=RunStatus.SUCCEEDED)
    sync.sync()  # the folder itself did not change
    assert Backup.objects.get().status == BackupStatus.COMPLETED
