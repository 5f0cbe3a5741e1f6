"""What the catalogue and the lane do with off-site copies, without a store: rows of vanished folders
kept for their copy, deletions that owe a removal in the store, `POST /offsite` refused until copies are
ready, a lost job ending through its kind, and the folder's facts taken from backup runs only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from django.db import transaction
from django.utils import timezone

from backups import runner
from backups.audit import Actor
from backups.catalogue import sidecar, sync
from backups.catalogue.services import backup_delete
from backups.config.services import config_update
from backups.models import Backup, RemoteDeletion, Run
from backups.offsite import services
from backups.worker.loop import Worker
from tests.servers import make_backup

pytestmark = pytest.mark.django_db(transaction=True)

A, B, C = "backup-20260101_030000", "backup-20260102_030000", "backup-20260103_030000"


@pytest.fixture
def three(backup_root: Path) -> Path:
    for name in (A, B, C):
        make_backup(backup_root, name)
    sync.sync()
    return backup_root


def enable_offsite(settings, *, credentials: bool = True) -> None:
    settings.OFFSITE_ACCESS_KEY_ID = "AKIDEXAMPLE" if credentials else ""
    settings.OFFSITE_SECRET_ACCESS_KEY = "not-a-real-secret" if credentials else ""
    config_update(
        document={"offsite": {"enabled": True, "endpoint": "http://127.0.0.1:9", "bucket": "copies"}},
        actor=Actor("tester"),
        partial=True,
    )


def test_a_vanished_folder_keeps_its_row_only_with_a_complete_copy(
    three: Path, backup_root: Path, api
) -> None:
    D = "backup-20260104_030000"
    make_backup(backup_root, D)
    sync.sync()
    Backup.objects.filter(id=A).update(offsite_status="ok", offsite_at=timezone.now(), offsite_bytes=12)
    Backup.objects.filter(id=B).update(offsite_status="failed")  # an unfinished copy may be in the store
    # A copy made earlier, and a new upload of it owed: the earlier copy is what is left.
    Backup.objects.filter(id=D).update(offsite_status="pending", offsite_at=timezone.now(), offsite_bytes=12)
    for name in (A, B, C, D):
        shutil.rmtree(three / name)
    sync.sync()

    assert sorted(Backup.objects.values_list("id", "local", "offsite_status")) == [
        (A, False, "ok"),
        (D, False, "ok"),
    ]
    assert list(RemoteDeletion.objects.values_list("backup_id", flat=True)) == [B]  # C never had a copy
    rows = api.get("/api/backup/list").json()["results"]
    assert [(row["id"], row["local"], row["offsite"]["status"]) for row in rows] == [
        (D, False, "ok"),
        (A, False, "ok"),
    ]
    assert api.get(f"/api/backup/{A}").json()["files"] == [
        {"path": "configs/app.env", "size_bytes": 4},
        {"path": "database.sql", "size_bytes": 8},
    ]

    make_backup(three, A)  # the folder is back (a restore into the root): local again, copy kept
    sync.sync()
    assert Backup.objects.get(id=A).local is True and Backup.objects.get(id=A).offsite_status == "ok"


def test_deleting_a_backup_owes_the_removal_of_its_copy(three: Path, api) -> None:
    Backup.objects.filter(id__in=[A, B]).update(offsite_status="ok", offsite_at=timezone.now())
    backup_delete(backup_id=A, actor=Actor("admin-1"))
    backup_delete(backup_id=C, actor=Actor("admin-1"))  # no copy: nothing owed
    assert list(RemoteDeletion.objects.values_list("backup_id", flat=True)) == [A]

    shutil.rmtree(three / B)
    sync.sync()
    assert Backup.objects.get(id=B).local is False
    assert api.delete(f"/api/backup/{B}").status_code == 204  # only its copy was left
    assert not Backup.objects.exists()
    assert sorted(RemoteDeletion.objects.values_list("backup_id", flat=True)) == [A, B]
    assert api.delete(f"/api/backup/{B}").status_code == 404


def test_copy_now_is_refused_until_off_site_copies_are_ready(three: Path, api, settings) -> None:
    answer = api.post(f"/api/backup/{A}/offsite")
    assert answer.status_code == 409 and "disabled" in answer.json()["detail"]
    assert api.post("/api/backup/backup-19990101_000000/offsite").status_code == 404

    enable_offsite(settings, credentials=False)
    answer = api.post(f"/api/backup/{A}/offsite")
    assert answer.status_code == 409 and "OFFSITE_ACCESS_KEY_ID" in answer.json()["detail"]

    enable_offsite(settings)
    answer = api.post(f"/api/backup/{A}/offsite")
    assert answer.status_code == 202
    run = answer.json()["run"]
    assert (run["kind"], run["backup_id"], run["automatic"], run["status"]) == ("offsite", A, False, "queued")
    # An off-site copy an admin asked for is not pushed aside by a backup request.
    blocked = api.post("/api/backup/create", {}, format="json")
    assert blocked.status_code == 409 and blocked.json()["run"]["id"] == run["id"]
    Run.objects.filter(id=run["id"]).update(status="cancelled")

    Backup.objects.filter(id=B).update(offsite_status="ok", offsite_at=timezone.now(), local=False)
    answer = api.post(f"/api/backup/{B}/offsite")
    assert answer.status_code == 409 and "gone" in answer.json()["detail"]


def test_the_automatic_step_owes_verified_backups_their_copy_newest_first(three: Path, settings) -> None:
    Backup.objects.filter(id__in=[A, B]).update(verified=True)
    assert services.offsite_start_due() is None  # disabled: nothing owed, nothing started
    assert set(Backup.objects.values_list("offsite_status", flat=True)) == {"none"}

    enable_offsite(settings)
    run = services.offsite_start_due()
    assert (run.kind, run.backup_id, run.automatic, run.params) == ("offsite", B, True, {"action": "upload"})
    assert dict(Backup.objects.values_list("id", "offsite_status")) == {A: "pending", B: "pending", C: "none"}
    assert services.offsite_start_due() is None  # the lane is busy


def test_a_lost_offsite_job_ends_through_its_kind_and_leaves_the_folder_facts_alone(
    three: Path, settings, tmp_path: Path
) -> None:
    settings.BACKUP_STATE_DIR = tmp_path / "state"
    backup_run = Run.objects.create(
        status="succeeded", triggered_by="admin-1", backup_id=A, description="before"
    )
    Backup.objects.filter(id=A).update(
        run=backup_run, offsite_status="uploading", type="manual", description="before"
    )
    sidecar.write_metadata(three, A, {"run_id": str(backup_run.id), "type": "manual", "status": "completed"})
    lost = Run.objects.create(
        kind="offsite",
        status="running",
        automatic=True,
        type="scheduled",
        triggered_by="worker",
        backup_id=A,
        worker="gone-worker",
        started_at=timezone.now(),
        params={"action": "upload"},
    )
    assert isinstance(runner.inspect(settings.BACKUP_STATE_DIR, str(lost.id)), runner.Gone)

    worker = Worker(label="next")
    assert worker.hold_lease()  # start-up: runs nobody follows are ended
    worker.release_lease()
    lost.refresh_from_db()
    assert lost.status == "interrupted" and "offsite job" in lost.error
    backup = Backup.objects.get(id=A)
    assert backup.offsite_status == "pending" and backup.offsite["attempts"] == 1
    assert sidecar.read_metadata(three, A)["run_id"] == str(backup_run.id)
    assert (backup.status, backup.type, backup.description) == ("completed", "manual", "before")


def test_a_folder_takes_its_facts_from_the_backup_run_that_made_it(three: Path) -> None:
    made = Run.objects.create(status="succeeded", triggered_by="admin-1", backup_id=A, description="nightly")
    Run.objects.create(
        kind="offsite",
        status="cancelled",
        automatic=True,
        type="scheduled",
        triggered_by="worker",
        backup_id=A,
        error="Cancelled to make way for a backup; it is tried again later.",
    )
    Run.objects.create(kind="verify", status="running", type="scheduled", triggered_by="worker", backup_id=B)
    Backup.objects.all().delete()  # a lost database: the rows are made again from the folders
    sync.sync()
    rows = {row.id: row for row in Backup.objects.all()}
    assert (rows[A].status, rows[A].type, rows[A].description, rows[A].run_id) == (
        "completed",
        "manual",
        "nightly",
        made.id,
    )
    assert rows[B].status == "completed"  # a verification of it runs; the folder itself is not being written


def test_the_admin_copies_a_backup_off_site_now_and_owes_a_selection_its_copies(
    three: Path, admin_client, settings
) -> None:
    Backup.objects.filter(id=A).update(verified=True)
    page = admin_client.get(f"/admin/backups/backup/{A}/change/")
    assert b"Copy off-site now" in page.content
    assert b"not ready" in admin_client.post(f"/admin/backups/backup/{A}/offsite/", follow=True).content

    enable_offsite(settings)
    assert admin_client.get(f"/admin/backups/backup/{A}/offsite/").status_code == 200  # the confirmation
    done = admin_client.post(f"/admin/backups/backup/{A}/offsite/", follow=True)
    assert b"Off-site copy queued" in done.content
    run = Run.objects.get(kind="offsite")
    assert (run.backup_id, run.automatic, run.triggered_by) == (A, False, "admin")
    Run.objects.filter(id=run.id).update(status="cancelled")

    admin_client.post(
        "/admin/backups/backup/", {"action": "copy_offsite", "_selected_action": [B, C]}, follow=True
    )
    assert dict(Backup.objects.values_list("id", "offsite_status")) == {A: "none", B: "pending", C: "pending"}
    listing = admin_client.get("/admin/backups/backup/?offsite_status__exact=pending")
    assert B.encode() in listing.content and A.encode() not in listing.content


def test_no_secret_reaches_the_off_site_jobs_arguments(three: Path, settings, tmp_path: Path) -> None:
    enable_offsite(settings)
    settings.BACKUP_STATE_DIR = tmp_path / "state"
    run = services.offsite_request(backup_id=A, actor=Actor("admin-1"))
    params, secrets = services.job_prepare(run)
    assert secrets["OFFSITE_SECRET_ACCESS_KEY"] == "not-a-real-secret"
    assert "not-a-real-secret" not in json.dumps(params) and "AKIDEXAMPLE" not in json.dumps(params)
    assert Backup.objects.get(id=A).offsite_status == "uploading"


def test_a_failed_new_upload_keeps_the_earlier_complete_copy(three: Path, api) -> None:
    copied_at = timezone.now()
    Backup.objects.filter(id=A).update(offsite_status="uploading", offsite_at=copied_at, offsite_bytes=12)
    Backup.objects.filter(id=B).update(offsite_status="uploading")
    for backup_id in (A, B):
        run = Run.objects.create(
            kind="offsite",
            status="failed",
            triggered_by="admin-1",
            backup_id=backup_id,
            params={"action": "upload"},
            result={
                "error": "PutObject refused by the store: AccessDenied",
                "transient": False,
                "refused": True,
            },
        )
        with transaction.atomic():
            services.job_record(run)
    kept = api.get(f"/api/backup/{A}").json()["offsite"]
    assert kept["status"] == "ok" and kept["bytes"] == 12 and "AccessDenied" in kept["error"]
    assert api.get(f"/api/backup/{B}").json()["offsite"]["status"] == "failed"
    assert Backup.objects.get(id=A).offsite_at == copied_at


def test_a_backup_only_off_site_is_never_given_a_verification_of_its_folder(three: Path, api) -> None:
    from backups.verification import services as verification

    Backup.objects.filter(id__in=[A, B, C]).update(
        verified=True, verification_status="ok", verified_at=timezone.now()
    )
    Backup.objects.filter(id=A).update(
        local=False,
        offsite_status="ok",
        offsite_at=timezone.now(),
        verified=False,
        verification_status="never",
    )
    assert verification.mark_unseen_backups_due() == 0
    assert verification.verification_start_due() is None  # nor the daily re-read
    answer = api.post(f"/api/backup/{A}/verify", {"level": "quick"}, format="json")
    assert answer.status_code == 409 and "off-site copy" in answer.json()["detail"]
