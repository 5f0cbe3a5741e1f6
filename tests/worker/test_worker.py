"""The worker running real scripts: success, failure, other output styles, cancel, timeout, crash
recovery, the schedule and retention. Real processes, real files, the real database."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from backups import runner
from backups.audit import Actor
from backups.catalogue import paths, sidecar, sync
from backups.catalogue.services import backup_delete, backup_set_pinned
from backups.config.services import config_update
from backups.models import Backup, BackupStatus, Run, RunStatus, WorkerLease
from backups.runs.services import RunEnd, run_enqueue, run_finish, run_request_cancel
from backups.worker import execution
from backups.worker.loop import Worker
from tests.conftest import make_backup, make_sources

pytestmark = pytest.mark.django_db(transaction=True)


def script(tmp_path: Path, body: str, name: str = "backup.sh") -> Path:
    path = tmp_path / name
    path.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def worker(backup_root, settings, tmp_path) -> Worker:
    settings.BACKUP_KILL_GRACE_SECONDS = 1
    settings.AUTOMATIC_JOBS_DELAY_SECONDS = 0
    settings.ALLOW_DEMO_DUMPS = True  # the reference script's demo dumps: no PostgreSQL database here
    make_sources(tmp_path)
    for name, folder in (
        ("BACKUP_APP_DIR", "app"),
        ("BACKUP_UPLOADS_DIR", "uploads"),
        ("BACKUP_CONFIGS_DIR", "configs"),
        ("BACKUP_SSL_DIR", "ssl"),
        ("BACKUP_NGINX_DIR", "nginx"),
    ):
        os.environ[name] = str(tmp_path / "src" / folder)
    os.environ["BACKUP_PG_PORT"] = "1"
    w = Worker(label="test")
    assert w.hold_lease()
    yield w
    w.release_lease()
    for name in (
        "BACKUP_APP_DIR",
        "BACKUP_UPLOADS_DIR",
        "BACKUP_CONFIGS_DIR",
        "BACKUP_SSL_DIR",
        "BACKUP_NGINX_DIR",
        "BACKUP_PG_PORT",
    ):
        os.environ.pop(name, None)


def run_once(worker: Worker, **kwargs) -> Run:
    """One run, the duties it left (retention, owing the backup its verification), and the automatic
    verification of the new backup, as the loop's next passes do."""
    run = run_enqueue(actor=Actor("tester"), **kwargs)
    assert worker.run_next_queued()
    worker.do_duties()
    if worker.automatic_jobs():
        assert worker.run_next_queued()
    run.refresh_from_db()
    return run


def test_reference_script_run_succeeds_and_is_catalogued(worker, backup_root):
    run = run_once(worker, description="nightly")
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.exit_code == 0 and run.progress_percent == 100 and run.backup_id.startswith("backup-")
    backup = Backup.objects.get(id=run.backup_id)
    assert backup.status == BackupStatus.COMPLETED and backup.is_latest and backup.type == "manual"
    assert backup.description == "nightly" and backup.triggered_by == "tester"
    names = {f["path"] for f in backup.files}
    assert {"beauty_platform_new.sql", "beauty_audit.sql", "beauty-platform.tar.gz"} <= names
    assert backup.size_bytes == sum(
        p.stat().st_size for p in (backup_root / run.backup_id).rglob("*") if p.is_file()
    )
    assert "[7/7]" in run.output and run.output_lines > 7


def test_failed_script_keeps_its_folder_incomplete_and_never_latest(worker, backup_root, tmp_path, settings):
    make_backup(backup_root, "backup-20260101_030000")
    (backup_root / "latest").symlink_to("backup-20260101_030000")
    settings.BACKUP_SCRIPT = script(
        tmp_path,
        """
d="$BACKUP_ROOT/backup-20991231_235959"; mkdir -p "$d"; echo partial > "$d/db.sql"
ln -sfn backup-20991231_235959 "$BACKUP_ROOT/latest"   # a careless script
echo "[1/2] dumping"
echo "pg_dump: error: connection refused" >&2
exit 3
""",
    )
    run = run_once(worker)
    assert run.status == RunStatus.FAILED and run.exit_code == 3
    assert "exited with code 3" in run.error and "connection refused" in run.error
    assert run.backup_id == "backup-20991231_235959" and run.progress_percent < 100
    backup = Backup.objects.get(id=run.backup_id)
    assert backup.status == BackupStatus.INCOMPLETE and not backup.is_latest
    assert (backup_root / run.backup_id / "db.sql").exists()
    assert os.readlink(backup_root / "latest") == "backup-20260101_030000"


def test_script_without_markers_progresses_from_its_artifacts(worker, backup_root, tmp_path, settings):
    settings.BACKUP_SCRIPT = script(
        tmp_path,
        """
d="$BACKUP_ROOT/nightly-$(date +%s)"; mkdir -p "$d"
for f in beauty_platform_new.sql beauty_audit.sql beauty-platform.tar.gz; do echo x > "$d/$f"; sleep 0.4; done
""",
    )
    seen: list[int] = []
    original = execution.run_save_progress

    def spy(*, run, percent, stage, message):
        seen.append(percent)
        original(run=run, percent=percent, stage=stage, message=message)

    execution.run_save_progress = spy
    try:
        run = run_once(worker)
    finally:
        execution.run_save_progress = original
    assert run.status == RunStatus.SUCCEEDED
    assert run.backup_id.startswith("nightly-")
    assert any(0 < p < 100 for p in seen), seen
    assert seen == sorted(seen)


def test_missing_script_fails_at_once_with_a_clear_error(worker, settings, tmp_path):
    settings.BACKUP_SCRIPT = tmp_path / "nope.sh"
    run = run_once(worker)
    assert run.status == RunStatus.FAILED and "could not be started" in run.error
    assert run.exit_code is None


def test_disk_full_is_explained(worker, tmp_path, settings):
    settings.BACKUP_SCRIPT = script(
        tmp_path,
        """
echo "tar: beauty-platform.tar.gz: Wrote only 4096 of 10240 bytes: No space left on device" >&2; exit 2
""",
    )
    run = run_once(worker)
    assert run.status == RunStatus.FAILED and run.error.startswith("Disk full")


def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def start_in_background(worker: Worker) -> tuple[Run, threading.Thread, int]:
    """Queue a run and let the worker run it on a thread; returns once the script's group exists."""
    run = run_enqueue(actor=Actor("tester"))
    thread = threading.Thread(target=worker.run_next_queued)
    thread.start()
    wait_for(lambda: Run.objects.get(id=run.id).pgid is not None)
    return run, thread, Run.objects.get(id=run.id).pgid


def test_cancel_ends_the_whole_process_group(worker, tmp_path, settings):
    settings.BACKUP_SCRIPT = script(
        tmp_path,
        """
d="$BACKUP_ROOT/backup-20990101_000000"; mkdir -p "$d"
sleep 300 &
trap '' TERM   # a script that ignores SIGTERM still ends: SIGKILL follows
echo "[1/3] working"; sleep 300
""",
    )
    run, thread, pgid = start_in_background(worker)
    run_request_cancel(run=run, actor=Actor("tester"))
    thread.join(30)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert runner.find_group_members(pgid) == []
    assert Backup.objects.get(id="backup-20990101_000000").status == BackupStatus.INCOMPLETE


def test_a_cancel_by_a_person_names_them_instead_of_the_scripts_reaction_to_the_signal(
    worker, tmp_path, settings
):
    settings.BACKUP_SCRIPT = script(
        tmp_path,
        """
trap 'echo "ERROR: Interrupted by SIGTERM (line 1)" >&2; exit 143' TERM
echo "[1/3] working"; sleep 300 & wait
""",
    )
    run, thread, _ = start_in_background(worker)
    run_request_cancel(run=run, actor=Actor("alice"))
    thread.join(30)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert run.error == "Cancelled by alice: the script's processes were ended."
    assert run.progress_message == run.error
    assert "SIGTERM" not in run.error + run.progress_message


def test_timeout_kills_the_group_and_fails_the_run(worker, tmp_path, settings):
    settings.BACKUP_RUN_TIMEOUT = 1
    settings.BACKUP_SCRIPT = script(tmp_path, "sleep 300 & sleep 300\n")
    run = run_once(worker)
    assert run.status == RunStatus.FAILED and "Timed out after 1 s" in run.error


def test_shutdown_leaves_a_long_run_running_and_the_next_worker_follows_it(worker, tmp_path, settings):
    settings.BACKUP_SCRIPT = script(tmp_path, "echo '[1/2] long'; sleep 300\n")
    run, thread, pgid = start_in_background(worker)
    worker.request_shutdown(0.5)
    thread.join(30)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and runner.group_alive(pgid)  # the backup goes on
    assert not worker.run_next_queued()  # stopping: takes no new run
    worker.release_lease()

    successor = Worker(label="next")
    assert successor.hold_lease()
    run_request_cancel(run=run, actor=Actor("tester"))
    assert successor.resume_orphans()  # follows the same group, sees the cancel, ends it
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.worker == successor.id
    assert runner.find_group_members(pgid) == []
    successor.release_lease()


def test_orphaned_run_of_a_dead_process_is_interrupted_and_its_group_ended(backup_root):
    run = Run.objects.create(triggered_by="x", status=RunStatus.RUNNING, worker="serve@elsewhere:1:abc")
    child = subprocess.Popen(
        ["sleep", "300"], start_new_session=True, env={**os.environ, "BACKUP_RUN_ID": str(run.id)}
    )
    Run.objects.filter(id=run.id).update(pgid=child.pid)
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)  # same pgid shape, not ours
    Run.objects.create(triggered_by="y", status=RunStatus.SUCCEEDED, pgid=stranger.pid)
    try:
        worker = Worker(label="test")
        assert worker.hold_lease()
        run.refresh_from_db()
        assert run.status == RunStatus.INTERRUPTED
        assert child.wait(10) is not None
        assert stranger.poll() is None
    finally:
        stranger.kill()
        child.kill()
    assert run_enqueue(actor=Actor("after-restart")).status == RunStatus.QUEUED


def test_a_second_worker_waits_for_the_lease_and_takes_over_a_dead_one(backup_root):
    first, second = Worker(label="a"), Worker(label="b")
    assert first.hold_lease()
    assert not second.hold_lease()
    WorkerLease.objects.filter(id=1).update(renewed_at=timezone.now() - timedelta(seconds=60))
    assert second.hold_lease(force_renew=True)
    assert not first.hold_lease(force_renew=True)


def test_lease_of_a_killed_local_process_is_taken_at_once(backup_root):
    dead = subprocess.Popen(["true"])
    dead.wait()
    import socket

    WorkerLease.objects.update_or_create(
        id=1, defaults={"holder": f"serve@{socket.gethostname()}:{dead.pid}:x", "renewed_at": timezone.now()}
    )
    assert Worker(label="new").hold_lease()


def test_retention_after_a_successful_run_keeps_pinned_and_latest(worker, backup_root):
    for day in range(1, 6):
        make_backup(backup_root, f"backup-202601{day:02d}_030000")
    sync.sync()
    backup_set_pinned(backup_id="backup-20260101_030000", pinned=True, actor=Actor("t"))
    config_update(
        document={"retention": {"daily": 2, "weekly": 0, "monthly": 0}}, actor=Actor("t"), partial=True
    )
    run = run_once(worker)
    assert run.status == RunStatus.SUCCEEDED
    remaining = sorted(p.name for p in backup_root.iterdir() if p.name.startswith("backup-"))
    assert remaining == ["backup-20260101_030000", "backup-20260105_030000", run.backup_id]


def test_all_zero_retention_keeps_everything(worker, backup_root):
    for day in range(1, 4):
        make_backup(backup_root, f"backup-202601{day:02d}_030000")
    config_update(
        document={"retention": {"daily": 0, "weekly": 0, "monthly": 0}}, actor=Actor("t"), partial=True
    )
    run_once(worker)
    assert len([p for p in backup_root.iterdir() if p.name.startswith("backup-")]) == 4


def test_the_script_gets_the_contract_environment(worker, tmp_path, settings):
    out = tmp_path / "env.txt"
    settings.BACKUP_SCRIPT = script(tmp_path, f"env | grep ^BACKUP_ | sort > {out}\n")
    config_update(
        document={"components": {"ssl": False}, "compression": False, "compressionLevel": 9},
        actor=Actor("t"),
        partial=True,
    )
    run = run_once(worker, description="with env")
    env = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert env["BACKUP_RUN_ID"] == str(run.id) and env["BACKUP_TYPE"] == "manual"
    assert env["BACKUP_DESCRIPTION"] == "with env" and env["BACKUP_COMPRESSION"] == "0"
    assert env["BACKUP_COMPRESSION_LEVEL"] == "9"
    assert "ssl" not in env["BACKUP_COMPONENTS"].split(",") and "databases" in env["BACKUP_COMPONENTS"]
    assert Path(env["BACKUP_ROOT"]) == Path(settings.BACKUP_ROOT)


def test_run_backup_command_exits_zero_only_on_success(backup_root, tmp_path, settings):
    from django.core.management import call_command

    settings.BACKUP_SCRIPT = script(
        tmp_path, 'mkdir -p "$BACKUP_ROOT/backup-20990101_000001"; echo "[1/1] ok"\n'
    )
    call_command("run_backup", "--description", "from cron")
    assert Run.objects.get().status == RunStatus.SUCCEEDED and Run.objects.get().triggered_by == "cli"
    settings.BACKUP_SCRIPT = script(tmp_path, "exit 4\n", name="bad.sh")
    with pytest.raises(SystemExit) as exit_info:
        call_command("run_backup")
    assert exit_info.value.code == 1


def test_signal_names(worker):
    assert signal.SIGTERM  # keeps the import honest for the kill tests above


def test_a_loud_script_keeps_head_and_tail_of_its_output(worker, tmp_path, settings):
    settings.BACKUP_SCRIPT = script(
        tmp_path,
        """
d="$BACKUP_ROOT/backup-20990101_000002"; mkdir -p "$d"
echo "[1/2] start"; seq 1 200000; echo "[2/2] end"; echo "an ERROR worth keeping" >&2; echo last
""",
    )
    run = run_once(worker)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.output_lines == 200004 and run.progress_percent == 100
    lines = run.output.splitlines()
    assert lines[0] == "out: [1/2] start"
    # stdout and stderr are two pipes: their last lines may arrive in either order
    assert set(lines[-2:]) == {"out: last", "err: an ERROR worth keeping"}
    assert any("lines omitted" in line for line in lines) and len(lines) <= 1201


def test_a_bug_while_following_a_run_fails_it_and_ends_its_group(worker, tmp_path, settings, monkeypatch):
    from backups.worker.execution import RunExecution

    settings.BACKUP_SCRIPT = script(tmp_path, "sleep 300 & echo '[1/2] x'; sleep 300\n")

    def broken(self, batch):
        raise RuntimeError("bug")

    monkeypatch.setattr(RunExecution, "on_lines", broken)
    run = run_once(worker)
    assert run.status == RunStatus.FAILED and "failed while following" in run.error
    assert run.pgid is None
    assert run_enqueue(actor=Actor("next")).status == RunStatus.QUEUED


def test_a_failed_run_stays_incomplete_even_when_its_metadata_cannot_be_written(
    worker, backup_root, tmp_path, settings, monkeypatch
):

    make_backup(backup_root, "backup-20260101_030000")
    (backup_root / "latest").symlink_to("backup-20260101_030000")

    def disk_full(*args, **kwargs):
        raise paths.CatalogueError("cannot write metadata")  # what a full disk does to it

    monkeypatch.setattr(sidecar, "write_metadata", disk_full)
    settings.BACKUP_SCRIPT = script(
        tmp_path,
        """
d="$BACKUP_ROOT/backup-20991231_235959"; mkdir -p "$d"; echo partial > "$d/db.sql"
echo "No space left on device" >&2; exit 1
""",
    )
    run = run_once(worker)
    assert run.status == RunStatus.FAILED
    backup = Backup.objects.get(id="backup-20991231_235959")
    assert backup.status == BackupStatus.INCOMPLETE and backup.type == "manual"
    backup_delete(backup_id="backup-20260101_030000", actor=Actor("t"))
    assert not os.path.lexists(backup_root / "latest")
    assert not Backup.objects.filter(is_latest=True).exists()


def test_a_worker_that_loses_its_lease_ends_its_script(worker, tmp_path, settings, monkeypatch):
    from backups.worker import lease

    monkeypatch.setattr(lease, "RENEW_SECONDS", 0.2)
    settings.BACKUP_SCRIPT = script(tmp_path, "echo '[1/2] long'; sleep 300\n")
    run, thread, pgid = start_in_background(worker)
    WorkerLease.objects.filter(id=1).update(holder="worker@elsewhere:1:x", renewed_at=timezone.now())
    thread.join(30)
    run.refresh_from_db()
    assert run.status == RunStatus.INTERRUPTED and "lost its lease" in run.error
    assert runner.find_group_members(pgid) == []


def test_a_run_already_marked_interrupted_keeps_that_verdict(worker, backup_root):
    run = Run.objects.create(triggered_by="x", status=RunStatus.INTERRUPTED, error="recovered at start-up")
    run_finish(run=run, end=RunEnd(RunStatus.SUCCEEDED, 0, ""), percent=100, stage="done", message="")
    run.refresh_from_db()
    assert run.status == RunStatus.INTERRUPTED and run.error == "recovered at start-up"


def test_a_missing_script_error_names_no_directory(worker, settings, tmp_path):
    settings.BACKUP_SCRIPT = tmp_path / "nowhere" / "backup.sh"
    run = run_once(worker)
    assert run.status == RunStatus.FAILED and str(tmp_path) not in run.error and "backup.sh" in run.error


def test_a_new_backup_is_verified_against_its_manifest_until_it_changes(worker, backup_root):
    run = run_once(worker)
    backup = Backup.objects.get(id=run.backup_id)
    assert backup.verified is True
    from backups.models import AuditEvent

    assert AuditEvent.objects.filter(action="backup.verify", target=run.backup_id, outcome="ok").exists()
    assert backup.verification_status == "ok" and backup.verification_level == "deep"
    assert (
        Run.objects.filter(kind="verify", backup_id=run.backup_id, automatic=True, status="succeeded").count()
        == 1
    )
    (backup_root / run.backup_id / "added-later.txt").write_text("not in the manifest\n")
    sync.sync()
    assert Backup.objects.get(id=run.backup_id).verified is False
