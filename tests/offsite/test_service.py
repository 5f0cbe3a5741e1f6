"""Off-site copies in the service, against a real S3 server (SeaweedFS): the reference script's backups
uploaded by the worker's automatic step once verified, deduplicated, resumed after a kill and after a
backup request made way, refused by a read-only store, removed by retention and collected, downloaded
from the store when the folder is gone (decrypted, or as stored for `age`), and the catalogue rebuilt
from the bucket alone."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from backups import runner
from backups.audit import Actor
from backups.catalogue import sync
from backups.config.selectors import config_current
from backups.config.services import config_update
from backups.models import AuditEvent, Backup, RemoteDeletion, Run
from backups.offsite import Store, fetch_config, fetch_manifest, job, list_backups, open_remote_file, services
from backups.offsite.remote import fetch_service_document, referenced_objects
from backups.retention.services import retention_apply
from backups.runs.services import PREEMPTED, run_enqueue, run_request_cancel
from backups.worker.loop import Worker
from tests.conftest import EventLog, body_of
from tests.offsite.conftest import Service
from tests.offsite.helpers import keys_under
from tests.servers import make_backup, manage, server_env

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1 << 20


def back_up(service: Service) -> Run:
    """One run of the reference script, its duties, and its automatic verification."""
    worker = service.worker
    run = run_enqueue(actor=Actor("tester"), description="nightly")
    assert worker.run_next_queued()
    worker.do_duties()
    verify = next_automatic(worker)
    assert verify is not None and verify.kind == "verify" and verify.status == "succeeded", verify
    run.refresh_from_db()
    assert run.status == "succeeded"
    return run


def next_automatic(worker: Worker) -> Run | None:
    """The automatic job the worker's loop would start next, run to its end (after the duties that
    ended runs left, as the loop does)."""
    worker.do_duties()
    if not worker.automatic_jobs():
        return None
    run = Run.objects.filter(status="queued").get()
    assert worker.run_next_queued()
    run.refresh_from_db()
    return run


def drain(worker: Worker) -> list[Run]:
    done = []
    for _ in range(20):
        run = next_automatic(worker)
        if run is None:
            return done
        done.append(run)
    raise AssertionError(f"automatic jobs never stop: {[(r.kind, r.params) for r in done]}")


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}


def test_a_verified_backup_is_copied_off_site_by_the_automatic_step(service: Service, api, settings) -> None:
    run = back_up(service)
    backup = Backup.objects.get(id=run.backup_id)
    assert backup.verified and backup.offsite_status == "none"

    copy = next_automatic(service.worker)
    assert copy is not None and (copy.kind, copy.automatic, copy.status) == ("offsite", True, "succeeded"), (
        copy.error
    )
    assert copy.backup_id == backup.id and copy.progress_percent == 100
    backup.refresh_from_db()
    assert backup.offsite_status == "ok" and backup.offsite_at is not None
    assert backup.offsite_bytes == backup.size_bytes == copy.result["total_bytes"]
    # Encrypted objects are larger than their files, and the index and manifest are sent too.
    assert backup.offsite_uploaded_bytes == copy.result["uploaded_bytes"] > backup.size_bytes
    assert copy.result["hashes_given"] == len(backup.files) - 1  # every file but MANIFEST.sha256 itself

    identities = [service.identity.identity]
    manifest = fetch_manifest(service.store, backup.id, identities)
    assert manifest.encrypted and manifest.metadata["description"] == "nightly"
    assert manifest.metadata["type"] == "manual" and manifest.metadata["triggered_by"] == "tester"
    originals = local_files(service.root / backup.id)
    assert {item.path: item.size for item in manifest.files} == {k: len(v) for k, v in originals.items()}
    for item in manifest.files:
        with open_remote_file(service.store, item, identities) as stream:
            assert stream.read() == originals[item.path], item.path

    # The service's own documents are stored beside the copies, encrypted.
    assert fetch_config(service.store, identities) == config_current()
    exported = io.BytesIO()
    fetch_service_document(service.store, "audit.jsonl", identities, exported)
    actions = [json.loads(line)["action"] for line in exported.getvalue().decode().splitlines()]
    assert "backup.verify" in actions and "config.update" in actions
    assert not list((Path(settings.BACKUP_STATE_DIR) / "offsite" / "documents").glob("*"))

    detail = api.get(f"/api/backup/{backup.id}").json()
    assert detail["local"] is True
    assert detail["offsite"] == {
        "status": "ok",
        "at": detail["offsite"]["at"],
        "bytes": backup.size_bytes,
        "uploaded_bytes": backup.offsite_uploaded_bytes,
        "error": None,
    }
    assert api.get("/api/backup/list").json()["results"][0]["offsite"]["status"] == "ok"
    status = api.get("/api/backup/status").json()["offsite"]
    assert status["enabled"] is True and status["backups"]["ok"] == 1 and status["last_copy_at"]
    assert AuditEvent.objects.filter(action="backup.offsite", target=backup.id, outcome="ok").exists()
    metrics = api.get("/metrics").content.decode()
    assert 'backup_offsite_backups{status="ok"} 1.0' in metrics

    # The credentials never reach a run, an audit row or an answer.
    secret = service.store.secret_access_key
    assert secret not in json.dumps(list(Run.objects.values()), default=str)
    assert secret not in json.dumps([event.details for event in AuditEvent.objects.all()], default=str)
    assert secret not in json.dumps(api.get("/api/backup/runs").json())

    # Then a first garbage collection, and nothing more is owed.
    assert [(r.kind, r.backup_id, r.status) for r in drain(service.worker)] == [("offsite", "", "succeeded")]


def _big_backup(service: Service, settings, name: str = "backup-20260101_030000") -> tuple[Path, bytes]:
    """An external backup with one file of several parts, plain (its parts can be resumed), read at a
    pace that leaves time to interrupt its upload."""
    config_update(document={"encryptionRecipients": []}, actor=Actor("tester"), partial=True)
    dump = os.urandom(24 * MiB)
    folder = make_backup(service.root, name, {"database.sql.gz": dump, "configs/app.env": "A=1\n"})
    sync.sync()
    verify = next_automatic(service.worker)
    assert verify.kind == "verify" and verify.status == "succeeded"
    settings.OFFSITE_UPLOAD_BYTES_PER_SECOND = 6 * MiB
    return folder, dump


def _in_thread(target) -> threading.Thread:
    def work() -> None:
        try:
            target()
        finally:
            connection.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def _wait_for_parts(s3: Store, object_key: str, at_least: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for upload in s3.multipart_uploads():
            if upload["Key"] == object_key:
                count = len(s3.parts(object_key, upload["UploadId"]))
                if count >= at_least:
                    return count
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} parts in {timeout} s")


def test_an_upload_killed_half_way_is_resumed_by_the_next_worker(service: Service, settings) -> None:
    folder, dump = _big_backup(service, settings)
    s3 = Store(service.store)
    object_key = s3.settings.key(f"objects/{hashlib.sha256(dump).hexdigest()}")
    assert service.worker.automatic_jobs()
    thread = _in_thread(service.worker.run_next_queued)
    _wait_for_parts(s3, object_key, at_least=1)
    run = Run.objects.get(kind="offsite", status="running")
    members = runner.find_group_members(run.pgid)
    job = [pid for pid in members if b"backups.jobs" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert job, members
    # The credentials reach the job in its environment, never in its arguments.
    secret = service.store.secret_access_key.encode()
    assert secret not in Path(f"/proc/{job[0]}/cmdline").read_bytes()
    assert b"OFFSITE_SECRET_ACCESS_KEY=" + secret in Path(f"/proc/{job[0]}/environ").read_bytes()
    os.killpg(run.pgid, signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive()

    run.refresh_from_db()
    assert run.status in ("failed", "interrupted")
    backup = Backup.objects.get(id=folder.name)
    assert backup.offsite_status == "pending" and backup.offsite["attempts"] == 1
    assert list_backups(service.store)[0].complete is False  # an index, no manifest: unfinished

    service.worker.release_lease()
    settings.OFFSITE_UPLOAD_BYTES_PER_SECOND = 0
    successor = Worker(label="next")
    assert successor.hold_lease()
    try:
        copy = next_automatic(successor)
    finally:
        successor.release_lease()
        service.worker.hold_lease()
    assert copy.kind == "offsite" and copy.backup_id == folder.name and copy.status == "succeeded", copy.error
    assert copy.result["resumed_bytes"] >= 8 * MiB
    assert copy.result["uploaded_bytes"] < len(dump)
    backup.refresh_from_db()
    assert backup.offsite_status == "ok" and backup.offsite_bytes == len(dump) + 4
    item = next(i for i in fetch_manifest(service.store, folder.name).files if i.path == "database.sql.gz")
    with open_remote_file(service.store, item) as stream:
        assert hashlib.sha256(stream.read()).hexdigest() == hashlib.sha256(dump).hexdigest()


def test_a_backup_request_cancels_an_automatic_upload_which_resumes_later(service: Service, settings) -> None:
    folder, dump = _big_backup(service, settings)
    s3 = Store(service.store)
    object_key = s3.settings.key(f"objects/{hashlib.sha256(dump).hexdigest()}")
    assert service.worker.automatic_jobs()
    thread = _in_thread(service.worker.run_next_queued)
    _wait_for_parts(s3, object_key, at_least=1)

    backup_run = run_enqueue(actor=Actor("admin-1"))  # a backup never waits for an automatic job
    thread.join(60)
    assert not thread.is_alive()
    cancelled = Run.objects.get(kind="offsite")
    assert cancelled.status == "cancelled" and cancelled.error == PREEMPTED
    assert Backup.objects.get(id=folder.name).offsite_status == "pending"

    # The backup's own run is not what this test follows: once the lane is free again, the copy resumes.
    run_request_cancel(run=backup_run, actor=Actor("admin-1"))
    settings.OFFSITE_UPLOAD_BYTES_PER_SECOND = 0
    copy = next_automatic(service.worker)
    assert (copy.kind, copy.backup_id, copy.status) == ("offsite", folder.name, "succeeded"), copy.error
    assert copy.result["resumed_bytes"] >= 8 * MiB
    assert Backup.objects.get(id=folder.name).offsite_status == "ok"


def test_a_store_that_refuses_writes_fails_the_copy_not_the_backup(
    service: Service, settings, event_log: EventLog, s3_server, api
) -> None:
    settings.OFFSITE_ACCESS_KEY_ID = s3_server.reader.access_key_id
    settings.OFFSITE_SECRET_ACCESS_KEY = s3_server.reader.secret_access_key
    run = back_up(service)
    assert run.status == "succeeded"

    copy = next_automatic(service.worker)
    assert copy.kind == "offsite" and copy.status == "failed"
    assert "AccessDenied" in copy.error and s3_server.reader.secret_access_key not in copy.error
    backup = Backup.objects.get(id=run.backup_id)
    assert backup.status == "completed" and backup.verified
    assert backup.offsite_status == "failed" and backup.offsite["refused"] is True
    notice = event_log.wait_for(
        "system-notification", lambda data: data["level"] == "error" and run.backup_id in data["message"]
    )
    assert (
        "Off-site copy" in notice["message"] and s3_server.reader.secret_access_key not in notice["message"]
    )
    assert AuditEvent.objects.filter(action="backup.offsite", target=run.backup_id, outcome="failed").exists()
    document = api.get(f"/api/backup/{run.backup_id}").json()["offsite"]
    assert document["status"] == "failed" and "AccessDenied" in document["error"]
    # A refusal is not retried by itself: no second upload of this backup is started.
    assert not Run.objects.filter(kind="offsite", backup_id=run.backup_id, status="queued").exists()
    service.worker.automatic_jobs()
    assert Run.objects.filter(kind="offsite", backup_id=run.backup_id).count() == 1


def test_a_backup_whose_folder_is_gone_downloads_from_its_copy_with_and_without_identity(
    service: Service, api, settings, tmp_path: Path
) -> None:
    run = back_up(service)
    assert next_automatic(service.worker).status == "succeeded"
    originals = local_files(service.root / run.backup_id)
    shutil.rmtree(service.root / run.backup_id)

    listed = api.get("/api/backup/list").json()["results"]
    assert [(row["id"], row["local"], row["offsite"]["status"]) for row in listed] == [
        (run.backup_id, False, "ok")
    ]

    # Without the identity: the copy as the store holds it, which Debian's age decrypts.
    response = api.get(f"/api/backup/{run.backup_id}/download")
    assert response.status_code == 200 and response["X-Backup-Encrypted"] == "true"
    data = body_of(response)
    assert len(data) == int(response["Content-Length"])
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(tmp_path / "export", filter="data")
    export = tmp_path / "export" / run.backup_id
    assert "age -d -i key.txt" in (export / "README.txt").read_text()
    key = str(service.identity.key_file)
    manifest = json.loads(
        subprocess.run(
            ["age", "-d", "-i", key, str(export / f"{run.backup_id}.json.age")],
            capture_output=True,
            check=True,
        ).stdout
    )
    for item in manifest["files"]:
        plain = subprocess.run(
            ["age", "-d", "-i", key, str(export / f"{item['object']}")], capture_output=True, check=True
        ).stdout
        assert plain == originals[item["path"]], item["path"]
    assert api.get(f"/api/backup/{run.backup_id}/download?file=configs/app.env").status_code == 409

    # With the identity: the same tar as the local folder gave, decrypted and checked on the way.
    settings.OFFSITE_IDENTITY_PATH = service.identity.key_file
    response = api.get(f"/api/backup/{run.backup_id}/download")
    assert response.status_code == 200 and response["X-Backup-Encrypted"] == "false"
    data = body_of(response)
    assert len(data) == int(response["Content-Length"])
    assert tar_members(data) == {f"{run.backup_id}/{rel}": content for rel, content in originals.items()}
    one = api.get(f"/api/backup/{run.backup_id}/download?file=configs/app.env")
    assert one.status_code == 200 and body_of(one) == originals["configs/app.env"]
    assert api.get(f"/api/backup/{run.backup_id}/download?file=nope").status_code == 404
    # What a restore of it reads: in the service, and in a job process given the params and secrets.
    with services.open_remote_file(backup_id=run.backup_id, rel_path="configs/app.env") as stream:
        assert stream.read() == originals["configs/app.env"]
    params, secrets = services.remote_job_params()
    assert service.store.secret_access_key not in json.dumps(params)
    listing, open_file = job.open_remote_backup(params, run.backup_id, secrets)
    assert dict(listing) == {rel: len(content) for rel, content in originals.items()}
    with open_file("configs/app.env") as stream:
        assert stream.read() == originals["configs/app.env"]
    downloads = AuditEvent.objects.filter(action="backup.download", target=run.backup_id)
    assert {(event.details["source"], event.details["kind"]) for event in downloads} == {
        ("offsite", "tar"),
        ("offsite", "file"),
    }


def test_unchanged_files_are_sent_once_and_retention_removes_a_copy_whose_own_objects_are_collected(
    service: Service, settings
) -> None:
    settings.OFFSITE_GC_GRACE_SECONDS = 0
    older = back_up(service)
    assert next_automatic(service.worker).status == "succeeded"
    newer = back_up(service)
    copy = next_automatic(service.worker)
    assert copy.backup_id == newer.backup_id and copy.status == "succeeded", copy.error
    identities = [service.identity.identity]
    older_objects = set(fetch_manifest(service.store, older.backup_id, identities).object_keys)
    newer_objects = set(fetch_manifest(service.store, newer.backup_id, identities).object_keys)
    # The second backup's unchanged files (the reference script's archives are byte-identical when their
    # sources did not change) were not sent again.
    assert copy.result["objects_skipped"] == len(older_objects & newer_objects) >= 4
    assert (
        copy.result["skipped_bytes"] > 20_000 and copy.result["uploaded_bytes"] < copy.result["total_bytes"]
    )
    assert older_objects - newer_objects

    rules = {"daily": 1, "weekly": 0, "monthly": 0, "keepWithinHours": 0, "keepManual": False}
    config_update(document={"retention": rules}, actor=Actor("tester"), partial=True)
    assert [backup_id for backup_id, _ in retention_apply()] == [older.backup_id]
    assert list(RemoteDeletion.objects.values_list("backup_id", flat=True)) == [older.backup_id]
    assert {b.backup_id for b in list_backups(service.store)} == {older.backup_id, newer.backup_id}

    prune = next_automatic(service.worker)
    assert (prune.kind, prune.backup_id, prune.status) == ("offsite", "", "succeeded"), prune.error
    assert prune.result["removed"] == [older.backup_id]
    assert prune.result["gc"]["deleted_objects"] == len(older_objects - newer_objects)
    assert [b.backup_id for b in list_backups(service.store)] == [newer.backup_id]
    stored = set(keys_under(Store(service.store), "objects/"))
    assert newer_objects <= stored and not (older_objects - newer_objects) & stored
    assert referenced_objects(service.store)[0] == newer_objects
    assert not RemoteDeletion.objects.exists()
    assert AuditEvent.objects.filter(action="offsite.prune", outcome="ok").exists()
    assert drain(service.worker) == []


@pytest.mark.slow
def test_offsite_rebuild_fills_an_empty_database_from_the_bucket_alone(
    service: Service, tmp_path: Path
) -> None:
    run = back_up(service)
    assert next_automatic(service.worker).status == "succeeded"
    backup = Backup.objects.get(id=run.backup_id)

    elsewhere = tmp_path / "new-server"
    elsewhere.mkdir()
    env = server_env(
        elsewhere,
        DATABASE_URL=f"sqlite:///{elsewhere / 'db.sqlite3'}",
        OFFSITE_ACCESS_KEY_ID=service.store.access_key_id,
        OFFSITE_SECRET_ACCESS_KEY=service.store.secret_access_key,
        OFFSITE_IDENTITY_FILE=str(service.identity.key_file),
    )
    assert manage(env, "migrate", "--noinput").returncode == 0
    where = [
        "--endpoint",
        service.store.endpoint,
        "--bucket",
        service.store.bucket,
        "--prefix",
        service.store.prefix,
    ]
    done = manage(env, "offsite_rebuild", *where, "--audit-to", str(elsewhere / "audit.jsonl"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "added 1 backup(s)" in done.stdout and run.backup_id in done.stdout
    assert "config document: restored" in done.stdout
    assert service.store.secret_access_key not in done.stdout + done.stderr

    with sqlite3.connect(elsewhere / "db.sqlite3") as database:
        rows = database.execute(
            "SELECT id, local, offsite_status, size_bytes, type, description, file_count FROM backups_backup"
        ).fetchall()
        (document,) = database.execute("SELECT document FROM backups_backupconfig").fetchone()
    assert rows == [(backup.id, 0, "ok", backup.size_bytes, "manual", "nightly", backup.file_count)]
    assert json.loads(document)["offsite"]["bucket"] == service.store.bucket
    audit_lines = (elsewhere / "audit.jsonl").read_text().splitlines()
    assert any(json.loads(line)["action"] == "backup.verify" for line in audit_lines)
    assert oct((elsewhere / "audit.jsonl").stat().st_mode & 0o777) == "0o600"

    again = manage(env, "offsite_rebuild", *where)
    assert again.returncode != 0 and "--force" in again.stderr
