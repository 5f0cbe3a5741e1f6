"""/health: a database that refuses writes is not healthy, and folders the catalogue could not read
completely make it `degraded` (while every other folder stays listed and usable)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection

from backups.catalogue import scan
from tests.conftest import make_backup

pytestmark = pytest.mark.django_db


@contextlib.contextmanager
def read_only_database() -> Iterator[None]:
    """The service's own connection made read-only the way each engine has it."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA query_only = ON")
        else:
            cursor.execute("SET default_transaction_read_only = on")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute("PRAGMA query_only = OFF")
            else:
                cursor.execute("SET default_transaction_read_only = off")


# Transactional: PostgreSQL's read-only setting applies to the transactions that start after it.
@pytest.mark.django_db(transaction=True)
def test_health_is_not_ok_when_the_database_does_not_accept_writes(anonymous, backup_root):
    assert anonymous.get("/health").json()["checks"]["database"] == {"ok": True}
    with read_only_database():
        response = anonymous.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error"
    assert body["checks"]["database"] == {"ok": False, "detail": "database does not accept writes"}
    assert anonymous.get("/health").json()["checks"]["database"]["ok"] is True


def _branching_tree(folder: Path, levels: int) -> None:
    current = folder / "system-info"
    for level in range(levels):
        (current / f"z-side{level}").mkdir(parents=True)
        (current / f"z-side{level}" / "f.txt").write_text("x")
        current = current / f"a-down{level}"
    current.mkdir(parents=True)
    (current / "bottom.txt").write_text("bottom")


def test_a_folder_that_cannot_be_read_completely_is_listed_with_problems_and_health_degrades(
    api, anonymous, backup_root, monkeypatch
):
    monkeypatch.setattr(scan, "MAX_OPEN_DIRS", 4)
    make_backup(backup_root, "backup-20260101_030000", {"db.sql": "one\n"})
    odd = make_backup(backup_root, "backup-20260102_030000", {"db.sql": "two\n"})
    _branching_tree(odd, levels=8)
    make_backup(backup_root, "backup-20260103_030000", {"db.sql": "three\n"})
    listing = api.get("/api/backup/list").json()
    assert listing["count"] == 3
    problems = {row["id"]: row["problems"] for row in listing["results"]}
    assert problems["backup-20260101_030000"] == [] and problems["backup-20260103_030000"] == []
    assert problems["backup-20260102_030000"] and "nested too deep" in problems["backup-20260102_030000"][0]
    detail = api.get("/api/backup/backup-20260102_030000").json()
    assert "db.sql" in [f["path"] for f in detail["files"]] and detail["problems"]
    assert api.get("/api/backup/backup-20260103_030000/download?file=db.sql").status_code == 200
    assert api.get("/api/backup/status").status_code == 200
    health = anonymous.get("/health").json()
    assert health["status"] == "degraded"
    assert health["checks"]["catalogue"] == {
        "ok": False,
        "unreadable_folders": 1,
        "detail": "1 backup folder could not be read completely",
    }


def test_a_folder_deeper_than_path_max_does_not_take_the_catalogue_down(api, anonymous, backup_root):
    make_backup(backup_root, "backup-20260101_030000", {"db.sql": "one\n"})
    deep = make_backup(backup_root, "backup-20260102_030000", {"db.sql": "two\n"})
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    for level in range(25):
        name = f"{level:03d}" + "d" * 197
        os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    os.close(fd)
    listing = api.get("/api/backup/list")
    assert listing.status_code == 200 and listing.json()["count"] == 2
    assert all(row["problems"] == [] for row in listing.json()["results"])
    assert api.get("/api/backup/status").status_code == 200
    assert anonymous.get("/health").json()["checks"]["catalogue"] == {"ok": True}


def test_an_unreachable_redis_degrades_health_and_a_working_one_is_ok(anonymous, backup_root, settings):
    import socket

    with socket.socket() as probe:  # a port nothing listens on: bound, never accepting
        probe.bind(("127.0.0.1", 0))
        settings.REDIS_URL = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
        answer = anonymous.get("/health")
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "degraded"
    assert body["checks"]["redis"]["ok"] is False
    assert "REDIS_URL" in body["checks"]["redis"]["detail"]
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 6379)) != 0:
            pytest.skip("no Redis server on 127.0.0.1:6379")
    settings.REDIS_URL = "redis://127.0.0.1:6379/9"
    assert anonymous.get("/health").json()["checks"]["redis"] == {"ok": True}
    settings.REDIS_URL = ""
    assert "redis" not in anonymous.get("/health").json()["checks"]


@pytest.mark.django_db(transaction=True)
def test_unapplied_migrations_make_health_an_error_until_migrate_runs(anonymous, backup_root):
    from django.core.management import call_command

    from backups.status import documents

    assert anonymous.get("/health").json()["checks"]["migrations"] == {"ok": True}
    call_command("migrate", "backups", "0005", verbosity=0)
    try:
        documents._migrations_answer = None  # the cached answer is reused for a while: ask again now
        answer = anonymous.get("/health")
        body = answer.json()
        assert answer.status_code == 503 and body["status"] == "error"
        assert body["checks"]["migrations"]["ok"] is False and body["checks"]["migrations"]["unapplied"] >= 1
        assert "manage.py migrate" in body["checks"]["migrations"]["detail"]
    finally:
        call_command("migrate", "backups", verbosity=0)
    assert anonymous.get("/health").json()["checks"]["migrations"] == {"ok": True}
