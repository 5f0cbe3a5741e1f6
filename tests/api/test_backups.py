"""List, get, delete and download backups against real folders in tmp_path."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from backups.catalogue import sync
from backups.models import AuditEvent, Backup, Run, RunStatus
from tests.conftest import body_of, make_backup

pytestmark = pytest.mark.django_db

OLD, MID, NEW = "backup-20260101_030000", "backup-20260102_030000", "backup-20260103_030000"


@pytest.fixture
def three(backup_root: Path) -> Path:
    make_backup(backup_root, OLD, {"db.sql": "a" * 10, "configs/app.env": "b" * 5})
    make_backup(backup_root, MID, {"db.sql": "a" * 300})
    make_backup(backup_root, NEW, {"db.sql": "a" * 20, "system-info/uname.txt": "linux\n"})
    (backup_root / "latest").symlink_to(NEW)
    return backup_root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "secret.txt").write_text("do not leak")
    return secret


def listed(api, query: str = "") -> dict:
    response = api.get(f"/api/backup/list{query}")
    assert response.status_code == 200, response.content
    return response.json()


def test_list_is_paginated_newest_first_with_sizes_and_latest(api, three):
    body = listed(api)
    assert body["count"] == 3 and body["next"] is None
    assert [row["id"] for row in body["results"]] == [NEW, MID, OLD]
    sizes = {row["id"]: row["size_bytes"] for row in body["results"]}
    assert sizes == {OLD: 15, MID: 300, NEW: 26}
    assert [row["is_latest"] for row in body["results"]] == [True, False, False]
    assert {row["type"] for row in body["results"]} == {"external"}


def test_list_pages_orders_and_filters(api, three):
    page = listed(api, "?page_size=2")
    assert len(page["results"]) == 2 and page["next"]
    assert [r["id"] for r in listed(api, "?page_size=2&page=2")["results"]] == [OLD]
    assert [r["id"] for r in listed(api, "?ordering=size_bytes")["results"]] == [OLD, NEW, MID]
    assert [r["id"] for r in listed(api, "?ordering=-size_bytes")["results"]] == [MID, NEW, OLD]
    assert listed(api, "?status=failed")["count"] == 0
    assert listed(api, "?status=completed")["count"] == 3


@pytest.mark.parametrize(
    "query",
    [
        "?page_size=-1",
        "?page_size=0",
        "?page_size=501",
        "?page_size=99999999999",
        "?page_size=abc",
        "?ordering=name",
        "?status=gone",
    ],
)
def test_bad_list_parameters_are_400_with_a_message(api, three, query):
    response = api.get(f"/api/backup/list{query}")
    assert response.status_code == 400
    assert response.json()


def test_list_notices_folders_added_and_removed_on_disk(api, three):
    assert listed(api)["count"] == 3
    make_backup(three, "backup-20260104_030000")
    assert listed(api)["count"] == 4
    import shutil

    shutil.rmtree(three / OLD)
    assert [r["id"] for r in listed(api)["results"]][-1] == MID


def test_get_one_backup_lists_every_regular_file(api, three):
    response = api.get(f"/api/backup/{OLD}")
    assert response.status_code == 200
    assert response.json()["files"] == [
        {"path": "configs/app.env", "size_bytes": 5},
        {"path": "db.sql", "size_bytes": 10},
    ]


def test_latest_is_an_alias_of_the_newest_completed_backup(api, three):
    assert api.get("/api/backup/latest").json()["id"] == NEW
    response = api.get("/api/backup/latest/download")
    assert response.status_code == 200
    assert f'filename="{NEW}.tar"' in response["Content-Disposition"]


def test_hostile_root_lists_only_real_folders_and_touches_nothing_outside(api, three, outside):
    (three / "backup-20990101_000000").symlink_to(outside)
    (three / "backup-20990102_000000").write_text("a file named like a backup")
    (three / NEW / "escape").symlink_to(outside / "secret.txt")
    body = listed(api)
    assert [r["id"] for r in body["results"]] == [NEW, MID, OLD]
    files = api.get(f"/api/backup/{NEW}").json()["files"]
    assert "escape" not in [f["path"] for f in files]
    assert api.get("/api/backup/backup-20990101_000000").status_code == 404
    assert api.delete("/api/backup/backup-20990101_000000").status_code == 404
    assert api.get("/api/backup/backup-20990101_000000/download").status_code == 404
    assert api.delete(f"/api/backup/{NEW}").status_code == 204
    assert (outside / "secret.txt").read_text() == "do not leak"
    assert (three / "backup-20990102_000000").is_file()


@pytest.mark.parametrize(
    "bad_id",
    [
        "..",
        "...",
        "%2e%2e",
        "..%2F..%2Fetc",
        "%2Fetc%2Fpasswd",
        "a%00b",
        "backup-20260101_030000%2F..",
        ".backup-service",
        "%20",
        "x" * 300,
    ],
)
def test_hostile_ids_are_404_and_change_nothing(api, three, bad_id):
    before = sorted(p.name for p in three.iterdir())
    for method, suffix in (("get", ""), ("delete", ""), ("get", "/download")):
        response = getattr(api, method)(f"/api/backup/{bad_id}{suffix}")
        assert response.status_code == 404, (method, bad_id, response.status_code)
        assert str(three) not in response.content.decode(errors="replace")
    assert sorted(p.name for p in three.iterdir()) == before


def test_delete_of_the_latest_target_repoints_latest(api, three):
    assert api.delete(f"/api/backup/{NEW}").status_code == 204
    assert not (three / NEW).exists()
    assert os.readlink(three / "latest") == MID
    assert api.get("/api/backup/latest").json()["id"] == MID
    event = AuditEvent.objects.get(action="backup.delete", target=NEW)
    assert event.actor == "admin-1" and event.details["was_latest"] is True


def test_delete_of_the_last_backup_removes_latest(api, backup_root):
    make_backup(backup_root, OLD)
    (backup_root / "latest").symlink_to(OLD)
    assert api.delete(f"/api/backup/{OLD}").status_code == 204
    assert not os.path.lexists(backup_root / "latest")
    assert api.get("/api/backup/latest").status_code == 404


def test_delete_unknown_and_latest_alias_are_404(api, three):
    assert api.delete("/api/backup/backup-20200101_000000").status_code == 404
    assert api.delete("/api/backup/latest").status_code == 404
    assert (three / NEW).is_dir()


def test_delete_refuses_pinned_and_running_backups(api, three):
    assert api.post(f"/api/backup/{MID}/pin").json()["pinned"] is True
    response = api.delete(f"/api/backup/{MID}")
    assert response.status_code == 409 and "pinned" in response.json()["detail"]
    assert (three / MID).is_dir()
    Run.objects.create(triggered_by="x", status=RunStatus.RUNNING, backup_id=OLD)
    assert api.delete(f"/api/backup/{OLD}").status_code == 409
    assert (three / OLD).is_dir()
    assert AuditEvent.objects.filter(action="backup.delete", outcome="refused").count() == 2


def tar_members(content: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_download_streams_a_tar_of_the_folder_with_content_length(api, three):
    response = api.get(f"/api/backup/{OLD}/download")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-tar"
    assert response["Content-Disposition"] == f'attachment; filename="{OLD}.tar"'
    content = body_of(response)
    assert int(response["Content-Length"]) == len(content)
    members = tar_members(content)
    assert {name: hashlib.sha256(data).hexdigest() for name, data in members.items()} == {
        f"{OLD}/{rel}": hashlib.sha256((three / OLD / rel).read_bytes()).hexdigest()
        for rel in ("db.sql", "configs/app.env")
    }
    assert AuditEvent.objects.filter(action="backup.download", target=OLD).exists()


def test_download_one_file_with_range_etag_and_last_modified(api, three):
    (three / MID / "db.sql").write_bytes(bytes(range(256)) * 4)
    url = f"/api/backup/{MID}/download?file=db.sql"
    full = api.get(url)
    assert full.status_code == 200 and body_of(full) == bytes(range(256)) * 4
    assert full["Accept-Ranges"] == "bytes" and full["ETag"] and full["Last-Modified"]
    part = api.get(url, HTTP_RANGE="bytes=10-19")
    assert part.status_code == 206 and body_of(part) == bytes(range(10, 20))
    assert part["Content-Range"] == "bytes 10-19/1024" and part["Content-Length"] == "10"
    suffix = api.get(url, HTTP_RANGE="bytes=-4")
    assert suffix.status_code == 206 and body_of(suffix) == bytes(range(252, 256))
    open_end = api.get(url, HTTP_RANGE="bytes=1020-")
    assert body_of(open_end) == bytes(range(252, 256))
    beyond = api.get(url, HTTP_RANGE="bytes=5000-6000")
    assert beyond.status_code == 416 and beyond["Content-Range"] == "bytes */1024"
    assert api.get(url, HTTP_IF_NONE_MATCH=full["ETag"]).status_code == 304
    stale = api.get(url, HTTP_RANGE="bytes=0-0", HTTP_IF_RANGE='"other"')
    assert stale.status_code == 200


@pytest.mark.parametrize(
    "rel",
    [
        "../" + MID + "/db.sql",
        "/etc/passwd",
        "configs/../../x",
        "configs",
        "missing.sql",
        "db.sql\x00",
        "",
        "configs//app.env",
    ],
)
def test_download_file_refuses_paths_outside_or_missing(api, three, rel):
    response = api.get(f"/api/backup/{OLD}/download", {"file": rel})
    assert response.status_code == 404
    assert "/etc" not in response.content.decode() and str(three) not in response.content.decode()


def test_backups_survive_a_lost_database(api, three):
    listed(api)
    Backup.objects.all().delete()

    sync.reset()
    assert listed(api)["count"] == 3


def test_file_names_that_are_not_utf8_are_listed_escaped(api, backup_root):
    folder = make_backup(backup_root, OLD)
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.sql"), "wb") as handle:
        handle.write(b"x")
    paths = [f["path"] for f in api.get(f"/api/backup/{OLD}").json()["files"]]
    assert "caf\\xe9.sql" in paths
