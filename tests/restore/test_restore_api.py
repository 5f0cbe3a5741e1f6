"""Restores through the API, run by the worker as job processes: the reference script's real dump into
a fresh database with the source's counts, a non-empty target refused without the confirmation, a dry
run that changes nothing, a hostile archive refused with nothing written outside, cancel half-way, and
the lane shared with backups."""

from __future__ import annotations

import io
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from backups.audit import AuditEvent
from backups.catalogue import sync
from backups.models import Run, RunStatus
from backups.worker.loop import Worker
from tests.restore.test_restore_files import _hostile
from tests.verification.backup_fixtures import (
    SOURCE_ROWS,
    copy_backup,
    db_url,
    psql,
    rewrite_manifest,
    tree_snapshot,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker(backup_root, settings):
    settings.AUTOMATIC_JOBS_DELAY_SECONDS = 10**6  # nothing automatic gets in the way
    w = Worker(label="test")
    assert w.hold_lease()
    yield w
    w.release_lease()


@pytest.fixture
def restored(backup_root: Path, script_backup: Path) -> str:
    """The reference script's backup, in the service's root."""
    copy_backup(script_backup, backup_root)
    sync.sync()
    return script_backup.name


@pytest.fixture
def staging(tmp_path: Path, settings) -> Path:
    folder = tmp_path / "restore-staging"
    folder.mkdir()
    settings.RESTORE_DIRECTORIES = {"staging": str(folder)}
    return folder


def _run(api, worker: Worker, backup_id: str, body: dict) -> dict:
    response = api.post(f"/api/backup/{backup_id}/restore", body, format="json")
    assert response.status_code == 202, response.json()
    run = response.json()["run"]
    assert run["kind"] == "restore" and run["status"] == "queued" and run["automatic"] is False
    assert worker.run_next_queued()
    return api.get(f"/api/backup/runs/{run['id']}").json()


def test_the_script_dump_restores_into_a_fresh_database_with_the_source_counts(
    api, worker, restored, source_db, target_db: Callable[[], str], settings
) -> None:
    target = target_db()
    settings.RESTORE_TARGETS = {"staging": db_url(target)}
    contents = api.get(f"/api/backup/{restored}/contents").json()
    dump = next(d for d in contents["dumps"] if d["database"] == source_db)
    assert dump["format"] == "plain" and dump["demo"] is False and dump["size_bytes"] > 0
    assert {a["path"] for a in contents["archives"]} >= {"images-uploads.tar.gz"}

    done = _run(api, worker, restored, {"component": "database", "dump": dump["path"], "target": "staging"})
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"]["percent"] == 100
    result = done["result"]
    assert result["complete"] is True and result["dryRun"] is False and "error" not in result
    rows = {row["table"]: row["rows"] for row in result["database"]["table_rows"]}
    assert rows == SOURCE_ROWS
    # Counted again straight from the target, independently of the job.
    assert psql("SELECT count(*) FROM public.appointments", target).strip() == "345"
    assert psql("SELECT count(*) FROM audit.events", target).strip() == "17"
    actions = list(AuditEvent.objects.filter(target=restored).values_list("action", "outcome"))
    assert ("restore.create", "ok") in actions and ("backup.restore", "ok") in actions
    # No URL, password or server name reaches the run document or the audit trail.
    for text in (str(done), str(list(AuditEvent.objects.values_list("details", flat=True)))):
        assert "postgres://" not in text and target not in text.replace(f"into {target}", "")


def test_a_non_empty_target_is_refused_without_the_backup_id_and_nothing_changes(
    api, worker, restored, source_db, target_db: Callable[[], str], settings
) -> None:
    target = target_db()
    psql("CREATE TABLE keep_me (id int); INSERT INTO keep_me VALUES (1), (2);", target)
    settings.RESTORE_TARGETS = {"staging": db_url(target)}
    body = {"component": "database", "dump": f"{source_db}.sql", "target": "staging"}
    for confirm in (None, "", "backup-19990101_000000"):
        attempt = body if confirm is None else {**body, "confirm": confirm}
        response = api.post(f"/api/backup/{restored}/restore", attempt, format="json")
        assert response.status_code == 409, response.json()
        assert "not empty" in response.json()["detail"]
    assert not Run.objects.exists()
    assert AuditEvent.objects.filter(action="restore.create", outcome="refused").count() == 3
    assert psql("SELECT count(*) FROM keep_me", target).strip() == "2"
    assert psql("SELECT to_regclass('public.clients') IS NULL", target).strip() == "t"

    # The dry run says what would happen and changes nothing.
    dry = _run(api, worker, restored, {**body, "dryRun": True})
    assert dry["status"] == "succeeded", dry["error"]
    plan = dry["result"]["database"]
    assert dry["result"]["dryRun"] is True and plan["needs_confirm"] is True
    assert plan["target"]["empty"] is False
    assert {"table": "public.keep_me", "rows": 2} in plan["target"]["tables"]
    assert psql("SELECT count(*) FROM keep_me", target).strip() == "2"

    # Confirmed with the backup id: the old content is replaced in the restore's transaction.
    done = _run(api, worker, restored, {**body, "confirm": restored})
    assert done["status"] == "succeeded", done["error"]
    assert psql("SELECT to_regclass('public.keep_me') IS NULL", target).strip() == "t"
    assert psql("SELECT count(*) FROM public.clients", target).strip() == "120"


def test_a_target_that_filled_up_after_the_request_is_refused_by_the_job(
    api, worker, restored, source_db, target_db: Callable[[], str], settings
) -> None:
    target = target_db()
    settings.RESTORE_TARGETS = {"staging": db_url(target)}
    body = {"component": "database", "dump": f"{source_db}.sql", "target": "staging"}
    response = api.post(f"/api/backup/{restored}/restore", body, format="json")
    assert response.status_code == 202
    psql("CREATE TABLE arrived_meanwhile (id int)", target)
    assert worker.run_next_queued()
    run = Run.objects.get()
    assert run.status == RunStatus.FAILED and "not empty" in run.error
    assert run.result["complete"] is False
    assert psql("SELECT to_regclass('public.clients') IS NULL", target).strip() == "t"


def _slow_dump(folder: Path, source_db: str) -> str:
    """The script's dump with a pause in the middle, so a cancel lands while psql is restoring."""
    dump = folder / f"{source_db}.sql"
    text = dump.read_text()
    head, sep, tail = text.partition("\nCOPY ")
    assert sep
    dump.write_text(head + "\nSELECT pg_sleep(60);\n" + sep.lstrip("\n") + tail)
    rewrite_manifest(folder)
    return dump.name


def _cancel_when(api, worker: Worker, ready: Callable[[Run], bool]) -> Run:
    thread = threading.Thread(target=worker.run_next_queued)
    started = time.monotonic()
    thread.start()
    try:
        while True:
            run = Run.objects.get()
            if run.status == RunStatus.RUNNING and run.pgid and ready(run):
                break
            assert time.monotonic() - started < 60, "the restore never got going"
            time.sleep(0.1)
        assert api.post(f"/api/backup/runs/{run.id}/cancel", {}, format="json").status_code in (200, 202)
    finally:
        thread.join(90)
    assert not thread.is_alive()
    run.refresh_from_db()
    return run


def test_a_database_restore_cancelled_half_way_is_rolled_back_and_marked_incomplete(
    api, worker, backup_root, restored, source_db, target_db: Callable[[], str], settings
) -> None:
    dump = _slow_dump(backup_root / restored, source_db)
    sync.sync(force_ids=[restored])
    target = target_db()
    settings.RESTORE_TARGETS = {"staging": db_url(target)}
    body = {"component": "database", "dump": dump, "target": "staging"}
    assert api.post(f"/api/backup/{restored}/restore", body, format="json").status_code == 202

    def sleeping(_run: Run) -> bool:
        return (
            psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'").strip()
            != "0"
        )

    started = time.monotonic()
    run = _cancel_when(api, worker, sleeping)
    assert time.monotonic() - started < 45
    assert run.status == RunStatus.CANCELLED
    assert run.result["complete"] is False and run.result["cancelled"] is True
    assert run.result["component"] == "database"
    assert AuditEvent.objects.filter(action="backup.restore", outcome="failed", target=restored).exists()
    # The transaction was rolled back: the target is as empty as before.
    assert (
        psql(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
            target,
        ).strip()
        == "0"
    )


def _big_archive(folder: Path, name: str) -> None:
    """A small file, then a member of zeros that takes seconds to decompress, then another small file."""
    with tarfile.open(folder / name, "w:gz", compresslevel=1) as archive:
        for path, data in (("a/first.txt", b"first\n"),):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("b/zeros.bin")
        info.size = 2 << 30

        class Zeros(io.RawIOBase):
            left = info.size

            def readable(self) -> bool:
                return True

            def readinto(self, buffer) -> int:
                count = min(len(buffer), self.left)
                buffer[:count] = bytes(count)
                self.left -= count
                return count

        archive.addfile(info, io.BufferedReader(Zeros(), 1 << 20))
        data = b"last\n"
        info = tarfile.TarInfo("a/last.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))


def test_a_files_restore_cancelled_half_way_removes_its_folder(
    api, worker, backup_root, restored, staging: Path, tmp_path_factory
) -> None:
    cache = tmp_path_factory.getbasetemp() / "big-archive"
    if not (cache / "big.tar.gz").exists():
        cache.mkdir(exist_ok=True)
        _big_archive(cache, "big.tar.gz")
    (backup_root / restored / "big.tar.gz").hardlink_to(cache / "big.tar.gz")
    rewrite_manifest(backup_root / restored)
    sync.sync(force_ids=[restored])
    body = {"component": "files", "archive": "big.tar.gz", "target": "staging", "paths": ["a"]}
    assert api.post(f"/api/backup/{restored}/restore", body, format="json").status_code == 202

    def writing(_run: Run) -> bool:
        return any((entry / "a" / "first.txt").exists() for entry in staging.iterdir())

    run = _cancel_when(api, worker, writing)
    assert run.status == RunStatus.CANCELLED
    assert run.result["complete"] is False and run.result["cancelled"] is True
    assert list(staging.iterdir()) == []


def test_a_files_restore_goes_into_a_new_folder_and_a_hostile_archive_writes_nothing_outside(
    api, worker, backup_root, restored, staging: Path, tmp_path: Path
) -> None:
    done = _run(
        api, worker, restored, {"component": "files", "archive": "images-uploads.tar.gz", "target": "staging"}
    )
    assert done["status"] == "succeeded", done["error"]
    folder = done["result"]["files"]["folder"]
    assert folder.startswith(f"{restored}-") and (staging / folder).is_dir()
    assert done["result"]["files"]["files"] >= 1 and done["result"]["complete"] is True

    (backup_root / restored / "hostile.tar.gz").write_bytes(_hostile())
    rewrite_manifest(backup_root / restored)
    sync.sync(force_ids=[restored])
    members = api.get(
        f"/api/backup/{restored}/contents", {"archive": "hostile.tar.gz", "page_size": 5}
    ).json()
    assert [m["path"] for m in members["members"]][1:3] == ["good.txt", "dir/sub/file.txt"]
    assert members["next"] and members["count"] is None
    top_before = sorted(p.name for p in tmp_path.iterdir())
    backups_before = tree_snapshot(backup_root)
    absolute_before = Path("/tmp/absolute.txt").exists()
    done = _run(
        api, worker, restored, {"component": "files", "archive": "hostile.tar.gz", "target": "staging"}
    )
    assert done["status"] == "succeeded", done["error"]
    report = done["result"]["files"]
    refused = {r["path"] for r in report["refused"]}
    assert {
        "../../etc/x",
        "../../outside.txt",
        "/tmp/absolute.txt",
        "escape",
        "hard-out",
        "hard-up",
    } <= refused
    new = staging / report["folder"]
    assert (new / "good.txt").read_bytes() == b"good\n"
    for path in new.rglob("*"):
        assert not path.is_symlink() and path.resolve().is_relative_to(new.resolve())
    # Nothing appeared or changed outside the new folder: `../../x` would land in tmp_path.
    assert sorted(p.name for p in tmp_path.iterdir()) == top_before
    assert tree_snapshot(backup_root) == backups_before
    assert Path("/tmp/absolute.txt").exists() == absolute_before
    assert sorted(p.name for p in staging.iterdir()) == sorted([folder, report["folder"]])


def test_a_restore_an_admin_asked_for_makes_a_backup_request_wait(
    api, restored, source_db, target_db: Callable[[], str], settings
) -> None:
    settings.RESTORE_TARGETS = {"staging": db_url(target_db())}
    body = {"component": "database", "dump": f"{source_db}.sql", "target": "staging", "dryRun": True}
    assert api.post(f"/api/backup/{restored}/restore", body, format="json").status_code == 202
    response = api.post("/api/backup/create", {}, format="json")
    assert response.status_code == 409 and response.json()["run"]["kind"] == "restore"
    assert api.post(f"/api/backup/{restored}/restore", body, format="json").status_code == 409


def test_the_worker_removes_half_written_folders_a_killed_extraction_left(worker, staging: Path) -> None:
    (staging / "backup-1-20260101_000000.partial" / "a").mkdir(parents=True)
    (staging / "backup-1-20260101_000000.partial" / "a" / "f.txt").write_text("half\n")
    (staging / "backup-1-20260101_000000").mkdir()
    (staging / "someone-else.partial").write_text("a file, not a folder of ours\n")
    worker.leftovers()
    assert sorted(p.name for p in staging.iterdir()) == ["backup-1-20260101_000000", "someone-else.partial"]
