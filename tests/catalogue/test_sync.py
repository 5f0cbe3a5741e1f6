"""The catalogue sync: rows follow the folders on disk and the runs that made them."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from backups.catalogue import scan, sync
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


def _count_listings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The descriptors of the directories the walk lists from now on (the real listing, counted)."""
    listed: list[int] = []
    real_list_fd = scan._list_fd

    def counting(fd: int) -> list[tuple[str, os.stat_result]]:
        listed.append(fd)
        return real_list_fd(fd)

    monkeypatch.setattr(scan, "_list_fd", counting)
    return listed


def _rows() -> list[dict[str, object]]:
    return list(Backup.objects.order_by("id").values())


def test_a_resync_with_nothing_changed_lists_no_folder_and_writes_nothing(backup_root, monkeypatch):
    monkeypatch.setattr(scan, "RACY_NS", 0)  # folders made just now are trusted like older ones
    make_backup(backup_root, A, {"db.sql": "a", "configs/app.env": "X=1\n"})
    make_backup(backup_root, B, {"db.sql": "b"})
    (backup_root / "latest").symlink_to(B)
    sync.sync_all()
    before = _rows()
    listed = _count_listings(monkeypatch)
    opened: list[object] = []
    real_open = os.open

    def counting_open(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is not None:
            opened.append(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", counting_open)
    with CaptureQueriesContext(connection) as queries:
        sync.sync_all()
    monkeypatch.setattr(os, "open", real_open)
    assert listed == []
    # Only A, to stat its configs/ through its descriptor; B (no subfolder) is not opened at all.
    assert opened == [A]
    statements = [query["sql"].split(None, 1)[0].upper() for query in queries.captured_queries]
    assert "INSERT" not in statements and "DELETE" not in statements
    # What it reads: the rows to redo, the signatures, the runs, `latest`'s row; the two UPDATEs keep
    # `is_latest` on `latest`'s target only, matching no row when it is already so.
    assert statements.count("SELECT") <= 4 and statements.count("UPDATE") <= 2
    assert _rows() == before  # synced_at included: no row was written


def test_a_resync_that_lists_no_folder_still_sees_changes_one_level_down(backup_root, monkeypatch):
    monkeypatch.setattr(scan, "RACY_NS", 0)
    make_backup(backup_root, A, {"db.sql": "a", "configs/app.env": "X=1\n"})
    make_backup(backup_root, B, {"db.sql": "b"})
    make_backup(backup_root, C, {"db.sql": "c"})
    sync.sync_all()
    (backup_root / A / "configs" / "nginx.conf").write_text("server {}\n")  # moves configs/'s mtime only
    folder = os.stat(backup_root / B)
    (backup_root / B / "extra").mkdir()
    (backup_root / B / "extra" / "x").write_text("xy")
    # B's mtime put back as it was: its ctime still moved, so its entries are not trusted.
    os.utime(backup_root / B, ns=(folder.st_atime_ns, folder.st_mtime_ns))
    listed = _count_listings(monkeypatch)
    sync.sync_all()
    assert Backup.objects.get(id=A).file_count == 3
    assert Backup.objects.get(id=B).file_count == 2
    assert Backup.objects.get(id=C).file_count == 1
    # A, A/configs and B, B/extra walked again; C was not listed.
    assert len(listed) == 4


def test_a_folder_whose_timestamps_are_as_recent_as_its_listing_is_listed_again(backup_root, monkeypatch):
    # An entry added in the same clock tick as a listing leaves the folder's timestamps as they were:
    # a folder changed within RACY_NS of being listed is listed again by the next sync.
    monkeypatch.setattr(scan, "RACY_NS", 10**18)
    make_backup(backup_root, A, {"db.sql": "a"})
    sync.sync_all()
    listed = _count_listings(monkeypatch)
    sync.sync_all()
    assert len(listed) == 1
