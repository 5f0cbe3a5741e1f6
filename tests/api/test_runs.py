"""POST /create, the runs endpoints, cancel, logs and test-script."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest

from backups.audit import Actor
from backups.errors import Conflict
from backups.models import AuditEvent, Run, RunStatus
from backups.runs.services import run_enqueue

pytestmark = pytest.mark.django_db


def test_create_queues_a_run_and_answers_202(api, backup_root):
    response = api.post(
        "/api/backup/create", {"type": "manual", "description": "before release"}, format="json"
    )
    assert response.status_code == 202
    run = response.json()["run"]
    assert run["status"] == "queued" and run["type"] == "manual" and run["triggered_by"] == "admin-1"
    assert run["description"] == "before release" and run["progress"]["percent"] == 0
    assert Run.objects.get(id=run["id"]).status == RunStatus.QUEUED
    assert AuditEvent.objects.filter(action="run.create", target=run["id"]).exists()


def test_create_with_an_empty_body_is_fine(api, backup_root):
    assert api.post("/api/backup/create").status_code == 202


def test_second_create_while_one_is_queued_is_409_with_the_current_run(api, backup_root):
    first = api.post("/api/backup/create", {}, format="json").json()["run"]
    response = api.post("/api/backup/create", {}, format="json")
    assert response.status_code == 409
    assert response.json()["run"]["id"] == first["id"] and response.json()["detail"]
    assert Run.objects.count() == 1


def test_the_database_refuses_a_second_active_run_even_without_the_service():
    from django.db import IntegrityError, transaction

    Run.objects.create(triggered_by="a", status=RunStatus.RUNNING)
    with pytest.raises(IntegrityError), transaction.atomic():
        Run.objects.create(triggered_by="b", status=RunStatus.QUEUED)
    Run.objects.create(triggered_by="c", status=RunStatus.FAILED)  # ended runs are not limited


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "scheduled"},
        {"type": "full"},
        {"description": "x" * 501},
        {"description": 5},
        {"description": "line\x00break"},
        # What splits a log line or a terminal row, or reorders the text around it.
        {"description": "line\u2028separator"},
        {"description": "paragraph\u2029separator"},
        {"description": "next\x85line"},
        {"description": "before release \u202egnp.exe"},
        {"description": "isolate \u2066x\u2069"},
        {"unexpected": 1},
        ["manual"],
        "manual",
    ],
)
def test_bad_create_bodies_are_400_and_queue_nothing(api, backup_root, payload):
    response = api.post("/api/backup/create", payload, format="json")
    assert response.status_code == 400, response.content
    assert Run.objects.count() == 0


def test_runs_list_and_detail(api, backup_root):
    run_id = api.post("/api/backup/create", {}, format="json").json()["run"]["id"]
    listing = api.get("/api/backup/runs").json()
    assert listing["count"] == 1 and listing["results"][0]["id"] == run_id
    detail = api.get(f"/api/backup/runs/{run_id}").json()
    assert set(detail["progress"]) >= {"percent", "stage", "message"}
    assert api.get(f"/api/backup/runs/{uuid.uuid4()}").status_code == 404
    assert api.get("/api/backup/runs/not-a-uuid").status_code == 404


def test_cancel_a_queued_run_ends_it_and_a_new_one_can_start(api, backup_root):
    run_id = api.post("/api/backup/create", {}, format="json").json()["run"]["id"]
    response = api.post(f"/api/backup/runs/{run_id}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    assert api.post(f"/api/backup/runs/{run_id}/cancel").status_code == 409
    assert api.post("/api/backup/create", {}, format="json").status_code == 202


def test_cancel_a_running_run_flags_it_for_the_worker(api, backup_root):
    run = Run.objects.create(triggered_by="x", status=RunStatus.RUNNING)
    response = api.post(f"/api/backup/runs/{run.id}/cancel")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True


def test_logs_of_the_script_are_read_from_the_end(api, backup_root, settings):
    log = Path(settings.BACKUP_SCRIPT_LOG)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(
        "".join(f"[2026-01-01 03:00:{i % 60:02d}] INFO step {i}\n" for i in range(100000))
        + "[2026-01-01 03:01:00] ERROR disk full\n"
    )
    body = api.get("/api/backup/logs?lines=3").json()
    assert body["source"] == "script"
    assert [e["message"] for e in body["entries"]] == ["step 99998", "step 99999", "disk full"]
    assert (
        body["entries"][-1]["level"] == "error" and body["entries"][-1]["timestamp"] == "2026-01-01T03:01:00"
    )


def test_logs_of_audit_and_run(api, backup_root):
    run_id = api.post("/api/backup/create", {}, format="json").json()["run"]["id"]
    audit = api.get("/api/backup/logs?source=audit").json()["entries"]
    assert audit[-1]["action"] == "run.create"
    Run.objects.filter(id=run_id).update(output="out: hello\nerr: oops")
    entries = api.get(f"/api/backup/logs?source=run&run={run_id}").json()["entries"]
    assert [(e["message"], e["level"]) for e in entries] == [("hello", "info"), ("oops", "error")]


@pytest.mark.parametrize(
    "query", ["?source=nginx", "?lines=0", "?lines=5001", "?lines=x", "?source=run", "?source=run&run=nope"]
)
def test_bad_log_queries_are_400(api, backup_root, query):
    assert api.get(f"/api/backup/logs{query}").status_code == 400


def test_test_script_checks_without_running_a_backup(api, backup_root):
    response = api.post("/api/backup/test-script")
    body = response.json()
    assert response.status_code == 200 and body["ok"] is True
    assert {c["name"] for c in body["checks"]} == {
        "exists",
        "executable",
        "syntax",
        "backup_root_writable",
        "free_disk",
        "log_writable",
    }
    assert list(backup_root.iterdir()) == [] and Run.objects.count() == 0


def test_test_script_reports_a_broken_script(api, backup_root, settings, tmp_path):
    script = tmp_path / "broken.sh"
    script.write_text("#!/bin/bash\nif then fi (\n")
    script.chmod(0o644)
    settings.BACKUP_SCRIPT = script
    body = api.post("/api/backup/test-script").json()
    checks = {c["name"]: c for c in body["checks"]}
    assert body["ok"] is False and not checks["executable"]["ok"] and not checks["syntax"]["ok"]
    assert str(tmp_path) not in str(body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    assert {c["name"]: c["ok"] for c in api.post("/api/backup/test-script").json()["checks"]}["executable"]
    os.remove(script)
    health = api.get("/health").json()
    assert health["checks"]["script"]["ok"] is False and health["status"] != "ok"


def test_run_enqueue_is_the_single_judge(backup_root):
    run_enqueue(actor=Actor("a"))
    with pytest.raises(Conflict):
        run_enqueue(actor=Actor("b"))


def test_create_with_no_worker_seen_still_queues_and_says_so(api, backup_root):
    from backups.worker.lease import Lease

    first = api.post("/api/backup/create", {}, format="json")
    assert first.status_code == 202 and first.json()["run"]["status"] == "queued"
    assert first.json()["warnings"] == ["No worker has been seen ever; the run starts when one is running."]
    api.post(f"/api/backup/runs/{first.json()['run']['id']}/cancel")

    lease = Lease("worker-test")
    assert lease.hold(False)[0]  # a worker holding a fresh lease: nothing to warn about
    second = api.post("/api/backup/create", {}, format="json")
    assert second.status_code == 202 and "warnings" not in second.json()
