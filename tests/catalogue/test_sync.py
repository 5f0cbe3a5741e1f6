"""The catalogue sync: rows follow the folders on disk and the runs that made them."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from django.db import connection

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


A, B, C = "backup-20260101_030000", "backup-20260102_030000", "backup-20260103_030000"


def test_a_request_sees_folders_added_and_removed_and_leaves_changes_inside_to_the_full_sync(backup_root):
    make_backup(backup_root, A, {"db.sql": "a"})
    make_backup(backup_root, B, {"db.sql": "b"})
    sync.ensure_fresh()  # this process's first look: a full sync
    (backup_root / A / "configs").mkdir()
    (backup_root / A / "configs" / "app.env").write_text("X=1\n")  # a change inside a known folder
    make_backup(backup_root, C, {"db.sql": "ccc"})
    shutil.rmtree(backup_root / B)
    sync.ensure_fresh()  # the root's mtime moved: one listing of it, the new folder walked
    rows = {backup.id: backup for backup in Backup.objects.all()}
    assert set(rows) == {A, C}
    assert rows[C].size_bytes == 3
    assert rows[A].file_count == 1  # not re-walked by a request
    sync.sync_all()  # the worker's periodic full sync
    assert Backup.objects.get(id=A).file_count == 2


@pytest.mark.django_db(transaction=True)  # the request runs on a thread of its own, with its own connection
def test_a_request_does_not_wait_for_a_full_sync_in_progress(backup_root):
    make_backup(backup_root, A)
    sync.ensure_fresh()
    make_backup(backup_root, B)
    done = threading.Event()
    with sync._lock:  # a full sync (the worker's) holds the lock meanwhile

        def request() -> None:
            try:
                sync.ensure_fresh()
                done.set()
            finally:
                connection.close()

        thread = threading.Thread(target=request)
        started = time.monotonic()
        thread.start()
        assert done.wait(10), "the request waited for the full sync"
    thread.join(10)
    assert time.monotonic() - started < 5
    assert set(Backup.objects.values_list("id", flat=True)) == {A, B}


def test_the_first_request_of_a_process_waits_for_a_full_sync_and_then_does_not_repeat_it(backup_root):
    make_backup(backup_root, A)
    sync.ensure_fresh()
    assert not sync._full_due
    Backup.objects.all().delete()  # a row the quick check could not bring back: it trusts the full sync
    sync.ensure_fresh()
    assert Backup.objects.count() == 0
    sync.reset()  # as at start: the next request runs a full sync
    sync.ensure_fresh()
    assert list(Backup.objects.values_list("id", flat=True)) == [A]
