"""The duties a finished run leaves (check the backup, apply retention) outlive the worker: a worker
killed between two of them leaves the second owed, and the next worker does it."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.conftest import make_backup, manage, server_env, start_worker

BAD_MANIFEST = "0" * 64 + "  a.txt\n"

# A backup whose check takes a while: the manifest names a 20 GiB sparse file (no disk used; hashing its
# zeros takes ten seconds or more), with a digest that does not match, so the check reads all of it.
SLOW_TO_CHECK = """#!/usr/bin/env bash
set -euo pipefail
d="$BACKUP_ROOT/backup-$(date +%Y%m%d_%H%M%S)"
mkdir -p "$d"
truncate -s 20G "$d/big.bin"
printf '%064d  big.bin\\n' 0 > "$d/MANIFEST.sha256"
echo "[1/1] done"
"""


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
    script = tmp_path / "slow-to-check.sh"
    script.write_text(SLOW_TO_CHECK)
    script.chmod(0o755)
    env = server_env(tmp_path, BACKUP_SCRIPT=str(script), CATALOGUE_SYNC_SECONDS="3600")
    db = tmp_path / "db.sqlite3"
    root = tmp_path / "backups"
    root.mkdir()
    old = make_backup(root, "backup-20200101_030000")
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
        wait_for(
            lambda: query(db, "SELECT status FROM backups_run") == [("succeeded",)], 60, "the backup run", log
        )
        os.killpg(worker.pid, signal.SIGKILL)  # while it checks the new backup: retention not done yet
        worker.wait(10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    assert ("retention",) in query(db, "SELECT name FROM backups_duty")
    assert old.exists(), "retention ran before the worker was killed"
    backup_id = query(db, "SELECT backup_id FROM backups_run")[0][0]
    assert not query(db, "SELECT id FROM backups_auditevent WHERE action = 'backup.verify'")
    os.truncate(root / backup_id / "big.bin", 0)  # the next worker's check need not take as long

    restarted = start_worker(env, log)
    try:
        wait_for(lambda: not query(db, "SELECT id FROM backups_duty"), 60, "the owed duties", log)
    finally:
        os.killpg(restarted.pid, signal.SIGTERM)
        restarted.wait(30)
    verified = query(db, "SELECT target, outcome FROM backups_auditevent WHERE action = 'backup.verify'")
    assert verified == [(backup_id, "failed")]
    assert not old.exists() and (root / backup_id).exists()
    deleted = query(db, "SELECT target FROM backups_auditevent WHERE action = 'backup.delete'")
    assert deleted == [("backup-20200101_030000",)]


@pytest.mark.django_db
def test_each_duty_step_does_its_own_duty_once_and_says_whether_it_found_work(backup_root, settings):
    from backups.catalogue import sync
    from backups.models import AuditEvent, Duty, Run, RunStatus
    from backups.retention.step import apply_after_run
    from backups.verification.step import verify_new_backups

    make_backup(backup_root, "backup-20260101_030000", {"a.txt": "a\n", "MANIFEST.sha256": BAD_MANIFEST})
    sync.sync()
    run = Run.objects.create(status=RunStatus.SUCCEEDED, triggered_by="t", backup_id="backup-20260101_030000")
    Duty.objects.bulk_create([Duty(run=run, name="verify"), Duty(run=run, name="retention")])

    assert verify_new_backups() is True
    assert AuditEvent.objects.filter(action="backup.verify", outcome="failed").count() == 1
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
