"""`POST /api/backup/<id>/verify`, the backup's `verification` document, and the one-at-a-time lane
shared with backups: an automatic job makes way for a backup request, an admin's does not."""

from __future__ import annotations

import pytest

from backups.audit import Actor
from backups.catalogue import sync
from backups.models import Backup, Run, RunStatus
from backups.runs.services import PREEMPTED, job_enqueue
from backups.worker.loop import Worker
from tests.conftest import make_backup

pytestmark = pytest.mark.django_db(transaction=True)

GOOD = {"db.sql": "-- dump\n", "configs/app.env": "A=1\n"}


@pytest.fixture
def worker(backup_root, settings):
    settings.AUTOMATIC_JOBS_DELAY_SECONDS = 0
    w = Worker(label="test")
    assert w.hold_lease()
    yield w
    w.release_lease()


def running_automatic_verify(backup_id: str) -> Run:
    """The worker's own deep verification of the backup, as if it were running now."""
    job = job_enqueue(
        kind="verify", actor=Actor("worker"), params={"level": "deep"}, backup_id=backup_id, automatic=True
    )
    Run.objects.filter(id=job.id).update(status=RunStatus.RUNNING)
    return job


def test_an_asked_verification_runs_as_a_verify_job_and_fills_the_backup_document(api, backup_root, worker):
    make_backup(backup_root, "backup-20260101_030000", GOOD)
    response = api.post("/api/backup/backup-20260101_030000/verify", {"level": "quick"}, format="json")
    assert response.status_code == 202
    run = response.json()["run"]
    assert run["kind"] == "verify" and run["status"] == "queued" and run["automatic"] is False
    assert worker.run_next_queued()
    done = api.get(f"/api/backup/runs/{run['id']}").json()
    assert done["status"] == "succeeded" and done["progress"]["percent"] == 100
    backup = api.get("/api/backup/backup-20260101_030000").json()
    # No MANIFEST.sha256 from the script: the first check wrote one beside the folder, and passed.
    assert backup["verified"] is True
    assert backup["verification"]["status"] == "ok" and backup["verification"]["level"] == "quick"
    assert backup["verification"]["problems"] == [] and backup["verification"]["at"]
    (backup_root / "backup-20260101_030000" / "db.sql").write_text("-- tampered\n")
    sync.sync()
    api.post("/api/backup/backup-20260101_030000/verify", {"level": "quick"}, format="json")
    assert worker.run_next_queued()
    backup = api.get("/api/backup/backup-20260101_030000").json()
    assert backup["verified"] is False and backup["verification"]["status"] == "failed"
    assert any(p.startswith("db.sql: digest mismatch") for p in backup["verification"]["problems"])


@pytest.mark.parametrize(
    ("body", "code"),
    [({"level": "thorough"}, 400), ({"level": "deep", "extra": 1}, 400), ([], 400)],
)
def test_a_bad_verify_request_is_a_400_and_queues_nothing(api, backup_root, body, code):
    make_backup(backup_root, "backup-20260101_030000", GOOD)
    response = api.post("/api/backup/backup-20260101_030000/verify", body, format="json")
    assert response.status_code == code
    assert not Run.objects.exists()


def test_verify_of_an_unknown_backup_is_a_404(api, backup_root):
    assert api.post("/api/backup/backup-20990101_000000/verify", {}, format="json").status_code == 404


def test_a_backup_request_cancels_an_automatic_job_and_is_accepted(api, backup_root):
    make_backup(backup_root, "backup-20260101_030000", GOOD)
    sync.sync()
    job = running_automatic_verify("backup-20260101_030000")
    response = api.post("/api/backup/create", {}, format="json")
    assert response.status_code == 202
    job.refresh_from_db()
    assert job.status == RunStatus.CANCELLED and job.cancel_requested and job.error == PREEMPTED
    assert Run.objects.get(id=response.json()["run"]["id"]).status == RunStatus.QUEUED


def test_a_verification_an_admin_asked_for_makes_a_backup_request_wait(api, backup_root):
    make_backup(backup_root, "backup-20260101_030000", GOOD)
    assert api.post("/api/backup/backup-20260101_030000/verify", {}, format="json").status_code == 202
    response = api.post("/api/backup/create", {}, format="json")
    assert response.status_code == 409 and response.json()["run"]["kind"] == "verify"
    assert api.post("/api/backup/backup-20260101_030000/verify", {}, format="json").status_code == 409


def test_an_automatic_job_cancelled_for_a_backup_is_owed_again(api, backup_root, worker):
    make_backup(backup_root, "backup-20260101_030000", GOOD)
    sync.sync()
    Backup.objects.update(verification_due="quick")
    assert worker.automatic_jobs()
    job = Run.objects.get(kind="verify")
    assert job.automatic and job.params["level"] == "quick"
    assert api.post("/api/backup/create", {}, format="json").status_code == 202
    assert Backup.objects.get().verification_due == "quick"  # still owed: tried again later


def test_a_verify_job_says_its_progress_and_end_as_job_events_never_as_backup_events(
    api, backup_root, worker, event_log
):
    make_backup(backup_root, "backup-20260101_030000", GOOD)
    run_id = api.post("/api/backup/backup-20260101_030000/verify", {"level": "quick"}, format="json").json()[
        "run"
    ]["id"]
    assert worker.run_next_queued()
    completed = event_log.wait_for("job-completed", lambda data: data["run_id"] == run_id)
    assert completed["kind"] == "verify" and completed["backup_id"] == "backup-20260101_030000"
    last = event_log.wait_for("job-progress", lambda data: data["percent"] == 100)
    assert last["run_id"] == run_id and last["kind"] == "verify"
    assert not [name for name, _ in event_log.seen if name.startswith("backup-")]

    # A job that ends otherwise (here: an automatic one making way for a backup request) is a job-error.
    job = running_automatic_verify("backup-20260101_030000")
    assert api.post("/api/backup/create", {}, format="json").status_code == 202
    error = event_log.wait_for("job-error", lambda data: data["run_id"] == str(job.id))
    assert error == {"run_id": str(job.id), "error": PREEMPTED, "exit_code": None, "kind": "verify"}


def test_a_verify_run_is_cancelled_through_the_runs_endpoint_and_frees_the_lane(api, backup_root):
    make_backup(backup_root, "backup-20260101_030000", GOOD)
    asked = api.post("/api/backup/backup-20260101_030000/verify", {"level": "deep"}, format="json")
    run = asked.json()["run"]
    assert api.post("/api/backup/create", {}, format="json").status_code == 409
    cancelled = api.post(f"/api/backup/runs/{run['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert api.get("/api/backup/backup-20260101_030000").json()["verification"]["status"] == "never"
    assert api.post("/api/backup/create", {}, format="json").status_code == 202
