"""A restore of a backup whose folder was removed after its off-site copy was made: the archive is read
back from the store (decrypted with the age identity, checked against its sha256 as it streams) and
extracted into a new folder, like a local one; without the identity the run fails saying why. Its
events are the jobs' (`job-progress`, `job-completed`, `job-error` with `kind: "restore"`)."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from tests.conftest import EventLog
from tests.offsite.conftest import Service
from tests.offsite.test_service import back_up, next_automatic

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_archive_is_restored_from_the_off_site_copy_once_the_folder_is_gone(
    service: Service, api, settings, tmp_path: Path, event_log: EventLog
) -> None:
    run = back_up(service)
    assert next_automatic(service.worker).status == "succeeded"  # the off-site copy
    archive = service.root / run.backup_id / "images-uploads.tar.gz"
    with tarfile.open(fileobj=io.BytesIO(archive.read_bytes())) as opened:
        expected = {m.name: opened.extractfile(m).read() for m in opened.getmembers() if m.isfile()}
    assert expected
    shutil.rmtree(service.root / run.backup_id)
    staging = tmp_path / "restore"
    staging.mkdir()
    settings.RESTORE_DIRECTORIES = {"staging": str(staging)}
    body = {"component": "files", "archive": "images-uploads.tar.gz", "target": "staging"}

    # Without the identity the encrypted copy cannot be read: the run fails, saying so, writing nothing.
    response = api.post(f"/api/backup/{run.backup_id}/restore", body, format="json")
    assert response.status_code == 202, response.json()
    assert service.worker.run_next_queued()
    failed = api.get(f"/api/backup/runs/{response.json()['run']['id']}").json()
    assert failed["status"] == "failed" and "identity" in failed["error"]
    assert failed["result"]["complete"] is False
    assert list(staging.iterdir()) == []
    error = event_log.wait_for("job-error", lambda data: data["run_id"] == failed["id"])
    assert error["kind"] == "restore" and "identity" in error["error"]

    settings.OFFSITE_IDENTITY_PATH = service.identity.key_file
    response = api.post(f"/api/backup/{run.backup_id}/restore", body, format="json")
    assert response.status_code == 202
    assert service.worker.run_next_queued()
    done = api.get(f"/api/backup/runs/{response.json()['run']['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["from_offsite_copy"] is True and done["result"]["complete"] is True
    folder = staging / done["result"]["files"]["folder"]
    restored = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert restored == expected
    progress = [d for d in event_log.of("job-progress") if d.get("run_id") == done["id"]]
    assert progress and all(d["kind"] == "restore" for d in progress)
    completed = event_log.wait_for("job-completed", lambda data: data["run_id"] == done["id"])
    assert completed["kind"] == "restore" and completed["backup_id"] == run.backup_id
    assert not [d for d in event_log.of("backup-progress") if d.get("run_id") == done["id"]]
