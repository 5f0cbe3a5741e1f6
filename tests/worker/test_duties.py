"""The duties a finished run leaves (check the backup, apply retention) outlive the worker: a worker
killed between two of them leaves the second owed, and the next worker does it."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import make_backup, manage, server_env, start_worker

BAD_MANIFEST = "0" * 64 + "  a.txt\n"
OLD = ("backup-2020", "backup-2021", "backup-2022")


def query(db: Path, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(db, timeout=10) as connection:
        return connection.execute(sql, args).fetchall()


def wait_for(predicate, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_a_worker_killed_between_two_duties_leaves_the_second_for_the_next_worker(tmp_path):
    """Retention here has 800 old backups to delete: the worker is killed as soon as the duty before it
    (owing the new backup its verification) is done."""
    env = server_env(tmp_path, CATALOGUE_SYNC_SECONDS="3600", BACKUP_STEP_DELAY="0")
    db = tmp_path / "db.sqlite3"
    root = tmp_path / "backups"
    root.mkdir()
    for n in range(800):
        day = datetime(2020, 1, 1) + timedelta(days=n)
        make_backup(root, f"backup-{day:%Y%m%d}_030000", {"a.txt": "a\n"})
    assert manage(env, "migrate", "--noinput").returncode == 0
    configured = manage(
        env,
        "shell",
        "-c",
        "from backups.audit import Actor; from backups.config.services import config_update; "
        "from backups.runs.services import run_enqueue; "
        "config_update(document={'retention': {'daily': 1, 'weekly': 0, 'monthly': 0}}, "
        "actor=Actor('test'), partial=True); run_enqueue(actor=Actor('test'))",
    )
    assert configured.returncode == 0, configured.stderr

    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        # The duties before retention (notify, verify) are done: only retention's is left, and its 800
        # deletions take the worker seconds.
        wait_for(
            lambda: [name for (name,) in query(db, "SELECT name FROM backups_duty")] == ["retention"],
            120,
            "the duties before retention",
            log,
        )
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    # The kill lands while retention works or just after it, before its duty was marked done: either
    # way the duty is still owed, and the next worker does it (again: each deletion happens once).
    assert [name for (name,) in query(db, "SELECT name FROM backups_duty")] == ["retention"]
    assert query(db, "SELECT id FROM backups_backup WHERE verification_due != ''")  # verify's duty was done

    restarted = start_worker(env, log)
    try:
        wait_for(lambda: not query(db, "SELECT id FROM backups_duty"), 120, "the owed duty", log)
    finally:
        os.killpg(restarted.pid, signal.SIGTERM)
        restarted.wait(30)
    assert not [p for p in root.iterdir() if p.name.startswith(OLD)]
    deleted = query(db, "SELECT count(*) FROM backups_auditevent WHERE action = 'backup.delete'")[0][0]
    assert deleted == 800  # each old backup deleted exactly once, across the two workers


@pytest.mark.django_db
def test_each_duty_step_does_its_own_duty_once_and_says_whether_it_found_work(backup_root, settings):
    from backups.catalogue import sync
    from backups.models import Backup, Duty, Run, RunStatus
    from backups.retention.step import apply_after_run
    from backups.verification.step import verify_new_backups

    make_backup(backup_root, "backup-20260101_030000", {"a.txt": "a\n", "MANIFEST.sha256": BAD_MANIFEST})
    sync.sync()
    run = Run.objects.create(status=RunStatus.SUCCEEDED, triggered_by="t", backup_id="backup-20260101_030000")
    Duty.objects.bulk_create([Duty(run=run, name="verify"), Duty(run=run, name="retention")])

    assert verify_new_backups() is True
    assert Backup.objects.get().verification_due == "deep"  # owed: the automatic job will do it
    assert list(Duty.objects.values_list("name", flat=True)) == ["retention"]
    assert verify_new_backups() is False
    assert apply_after_run() is True and apply_after_run() is False
    assert not Duty.objects.exists()


@pytest.mark.django_db
def test_a_duty_that_keeps_failing_is_dropped_after_three_attempts(backup_root, monkeypatch):
    from backups.models import Duty, Run, RunStatus
    from backups.retention import step

    def broken(**kwargs) -> list[tuple[str, str]]:
        raise RuntimeError("retention exploded")

    monkeypatch.setattr(step, "retention_apply_automatic", broken)
    run = Run.objects.create(status=RunStatus.SUCCEEDED, triggered_by="t")
    Duty.objects.create(run=run, name="retention")
    for attempts in (1, 2):
        assert step.apply_after_run() is True
        assert Duty.objects.get().attempts == attempts
    assert step.apply_after_run() is True
    assert not Duty.objects.exists()  # given up: it must not block the worker forever


@pytest.mark.django_db
def test_the_daily_retention_waits_while_a_run_still_owes_its_duties(backup_root):
    """Otherwise a long daily pruning runs before the new backup's notification and verification."""
    from backups.audit import Actor
    from backups.catalogue import sync
    from backups.config.services import config_update
    from backups.models import Backup, Duty, Run, RunStatus
    from backups.worker.loop import Worker

    for day in ("20200101", "20200102", "20200103"):
        make_backup(backup_root, f"backup-{day}_030000", {"a.txt": "a\n"})
    sync.sync()
    rules = {"retention": {"daily": 1, "weekly": 0, "monthly": 0}}
    config_update(document=rules, actor=Actor("t"), partial=True)
    run = Run.objects.create(status=RunStatus.SUCCEEDED, triggered_by="t")  # arms retention
    duty = Duty.objects.create(run=run, name="notify")

    worker = Worker()
    assert worker.retention_daily() is False
    assert Backup.objects.count() == 3  # nothing pruned while the run's duty is owed
    duty.delete()
    worker.retention_daily()
    assert sorted(Backup.objects.values_list("id", flat=True)) == ["backup-20200103_030000"]
