"""The restore endpoints' refusals and what they show: named targets without a URL or path, a
backup's contents and an archive's pages, and every bad request a 400 (or 404) that queues nothing."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from backups.models import Run
from tests.conftest import make_backup
from tests.servers import PROJECT

pytestmark = pytest.mark.django_db(transaction=True)

BACKUP = "backup-20260101_030000"
URL = "postgres://restorer:s3cret-pw@db.internal:5432/beauty_staging"


def _archive(count: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        for index in range(count):
            data = f"file {index}\n".encode()
            info = tarfile.TarInfo(f"uploads/{index:04d}.txt")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def backup(backup_root: Path, tmp_path: Path, settings) -> Path:
    folder = make_backup(backup_root, BACKUP, {"beauty.sql": "-- PostgreSQL database dump\n"})
    (folder / "images-uploads.tar.gz").write_bytes(_archive(7))
    staging = tmp_path / "restore"
    staging.mkdir()
    settings.RESTORE_TARGETS = {"staging": URL, "scratch": "postgres://postgres@127.0.0.1:5432/nothing"}
    settings.RESTORE_DIRECTORIES = {"staging": str(staging), "files-only": str(staging)}
    return folder


def test_the_targets_are_listed_by_name_and_kind_without_url_path_or_password(api, backup) -> None:
    response = api.get("/api/backup/restore/targets")
    assert response.status_code == 200
    assert response.json() == {
        "targets": [
            {"name": "scratch", "kind": "database"},
            {"name": "staging", "kind": "database"},
            {"name": "files-only", "kind": "files"},
            {"name": "staging", "kind": "files"},
        ]
    }
    text = response.content.decode()
    for secret in ("s3cret", "restorer", "db.internal", "postgres://", "/restore"):
        assert secret not in text


def test_the_targets_need_a_super_admin(anonymous, backup) -> None:
    assert anonymous.get("/api/backup/restore/targets").status_code == 401


def test_contents_list_dumps_and_archives_and_an_archive_page_by_page(api, backup) -> None:
    contents = api.get(f"/api/backup/{BACKUP}/contents").json()
    assert contents["dumps"] == [
        {"path": "beauty.sql", "size_bytes": 28, "format": "plain", "database": "beauty", "demo": False}
    ]
    assert [a["path"] for a in contents["archives"]] == ["images-uploads.tar.gz"]
    first = api.get(f"/api/backup/{BACKUP}/contents", {"archive": "images-uploads.tar.gz", "page_size": 3})
    assert first.status_code == 200
    page = first.json()
    assert [m["path"] for m in page["members"]] == [
        "uploads/0000.txt",
        "uploads/0001.txt",
        "uploads/0002.txt",
    ]
    assert page["members"][0] == {"path": "uploads/0000.txt", "size_bytes": 7, "type": "file"}
    assert page["count"] is None and page["previous"] is None and "page=2" in page["next"]
    last = api.get(page["next"].replace("page=2", "page=3")).json()
    assert [m["path"] for m in last["members"]] == ["uploads/0006.txt"]
    assert last["next"] is None and last["count"] == 7 and "page=2" in last["previous"]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"archive": "nope.tar.gz"}, 404),
        ({"archive": "beauty.sql"}, 404),
        ({"archive": "../../etc/passwd.tar"}, 404),
        ({"archive": ""}, 400),
        ({"archive": "images-uploads.tar.gz", "page": "0"}, 400),
        ({"archive": "images-uploads.tar.gz", "page": "x"}, 400),
        ({"archive": "images-uploads.tar.gz", "page_size": "501"}, 400),
        ({"page": "2"}, 400),
    ],
)
def test_bad_contents_queries(api, backup, query, code) -> None:
    assert api.get(f"/api/backup/{BACKUP}/contents", query).status_code == code


def test_contents_of_an_unknown_backup_is_a_404(api, backup) -> None:
    assert api.get("/api/backup/backup-20990101_000000/contents").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        [],
        {},
        {"component": "database", "target": "staging"},
        {"component": "tables", "dump": "beauty.sql", "target": "staging"},
        {"component": "database", "dump": "beauty.sql", "target": "staging", "typo": 1},
        {"component": "database", "dump": "beauty.sql", "target": "nowhere"},
        {"component": "database", "dump": "beauty.sql", "target": "files-only"},
        {"component": "database", "dump": "missing.sql", "target": "staging"},
        {"component": "database", "dump": "images-uploads.tar.gz", "target": "staging"},
        {"component": "database", "dump": "beauty.sql", "target": "staging", "archive": "x.tar.gz"},
        {"component": "database", "dump": "beauty.sql", "target": "staging", "paths": ["a"]},
        {"component": "database", "dump": "beauty.sql", "target": "staging", "dryRun": "maybe"},
        {"component": "database", "dump": 5, "target": "staging"},
        {"component": "database", "dump": "beauty.sql", "target": URL},
        {"component": "files", "archive": "images-uploads.tar.gz", "target": "scratch"},
        {"component": "files", "archive": "beauty.sql", "target": "staging"},
        {"component": "files", "archive": "images-uploads.tar.gz", "target": "/tmp"},
        {"component": "files", "archive": "images-uploads.tar.gz", "target": "staging", "paths": ["../x"]},
        {"component": "files", "archive": "images-uploads.tar.gz", "target": "staging", "paths": ["/etc"]},
        {"component": "files", "archive": "images-uploads.tar.gz", "target": "staging", "dump": "beauty.sql"},
    ],
)
def test_a_bad_restore_request_is_a_400_and_queues_nothing(api, backup, body) -> None:
    response = api.post(f"/api/backup/{BACKUP}/restore", body, format="json")
    assert response.status_code == 400, response.json()
    assert "s3cret" not in response.content.decode()
    assert not Run.objects.exists()


def test_a_restore_of_an_unknown_backup_is_a_404(api, backup) -> None:
    body = {"component": "files", "archive": "images-uploads.tar.gz", "target": "staging"}
    assert api.post("/api/backup/backup-20990101_000000/restore", body, format="json").status_code == 404


def test_an_unreachable_database_target_is_a_409_naming_no_password(api, backup) -> None:
    body = {"component": "database", "dump": "beauty.sql", "target": "staging"}
    response = api.post(f"/api/backup/{BACKUP}/restore", body, format="json")
    assert response.status_code == 409
    assert "s3cret" not in response.content.decode()
    assert not Run.objects.exists()


def test_a_files_restore_is_queued_as_a_restore_run(api, backup) -> None:
    body = {"component": "files", "archive": "images-uploads.tar.gz", "target": "staging", "dryRun": True}
    response = api.post(f"/api/backup/{BACKUP}/restore", body, format="json")
    assert response.status_code == 202
    run = response.json()["run"]
    assert run["kind"] == "restore" and run["status"] == "queued" and run["backup_id"] == BACKUP
    assert Run.objects.get().params == {
        "component": "files",
        "path": "images-uploads.tar.gz",
        "target": "staging",
        "dry_run": True,
        "paths": [],
    }


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("RESTORE_TARGETS", "staging", "RESTORE_TARGETS: entry 1 must look like name=value"),
        ("RESTORE_TARGETS", "a=postgres://h/db,a=postgres://h/db2", "the name 'a' is given twice"),
        ("RESTORE_TARGETS", "staging=mysql://u:pw@h/db", "'staging' must be a postgres://"),
        ("RESTORE_TARGETS", "staging=postgres://u:pw@h:99999/db", "'staging' is not a postgres:// URL"),
        ("RESTORE_TARGETS", "staging=postgres://u:pw@h", "naming its database"),
        (
            "RESTORE_DIRECTORIES",
            "staging=relative/dir",
            "RESTORE_DIRECTORIES: 'staging' must be an absolute path",
        ),
        ("RESTORE_DIRECTORIES", "bad name=/srv", "RESTORE_DIRECTORIES: entry 1 must look like name=value"),
    ],
)
def test_a_malformed_target_variable_stops_start_up_with_one_clear_line(variable, value, message) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=PROJECT,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "backup_platform.settings", variable: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert message in done.stderr, done.stderr[-2000:]
    assert "pw@" not in done.stderr
