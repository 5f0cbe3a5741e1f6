"""Deep verification through the service: the reference script's real pg_dump restored into a scratch
database by the automatic verify job after the run, counted, and the scratch database gone — also when
the job is killed mid-restore (the next worker drops what it left)."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from backups.verification.pg import SCRATCH_PREFIX
from tests.servers import manage, server_env, start_worker
from tests.verification.backup_fixtures import (
    SERVER_URL,
    SOURCE_ROWS,
    databases_like,
    drop_database,
    make_source_database,
    unique_name,
)


@pytest.fixture
def source(request) -> str:
    name = unique_name("bsvc_svcverify_")
    make_source_database(name, extra_mb=getattr(request, "param", 0))
    yield name
    drop_database(name)


def query(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db, timeout=10) as connection:
        return connection.execute(sql).fetchall()


def wait_for(predicate, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s:\n{log.read_text()[-3000:]}")


def service(tmp_path: Path, source: str) -> dict[str, str]:
    env = server_env(
        tmp_path,
        BACKUP_PG_DATABASES=source,
        BACKUP_PG_PORT="5432",
        BACKUP_PG_HOST="127.0.0.1",
        BACKUP_PG_USER="postgres",
        RESTORE_TEST_DATABASE_URL=SERVER_URL,
        AUTOMATIC_JOBS_DELAY_SECONDS="0",
    )
    (tmp_path / "backups").mkdir(exist_ok=True)
    assert manage(env, "migrate", "--noinput").returncode == 0
    queued = manage(
        env,
        "shell",
        "-c",
        "from backups.audit import Actor; from backups.runs.services import run_enqueue; "
        "run_enqueue(actor=Actor('test'))",
    )
    assert queued.returncode == 0, queued.stderr
    return env


def verification_of(db: Path) -> tuple | None:
    rows = query(db, "SELECT verification_status, verification FROM backups_backup")
    return rows[0] if rows and rows[0][0] in ("ok", "failed") else None


@pytest.mark.slow
def test_every_database_dump_of_a_new_backup_is_restore_tested_and_counted(tmp_path, source):
    env = service(tmp_path, source)
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        status, document = wait_for(
            lambda: verification_of(tmp_path / "db.sqlite3"), 120, "deep verification", log
        )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
    import json

    document = json.loads(document)
    assert status == "ok", document["problems"]
    tested = [db for db in document["databases"] if db["dump"] == f"{source}.sql"]
    assert len(tested) == 1, document
    [tested] = tested
    assert tested["ok"] is True and tested["tables"] == len(SOURCE_ROWS)
    assert tested["rows"] == sum(SOURCE_ROWS.values())
    assert document["restore_tested"] is True
    assert databases_like(SCRATCH_PREFIX) == []


@pytest.mark.slow
@pytest.mark.parametrize("source", [40], indirect=True)
def test_a_restore_test_killed_with_its_job_leaves_no_scratch_database_behind(tmp_path, source):
    env = service(tmp_path, source)
    db = tmp_path / "db.sqlite3"
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        wait_for(lambda: databases_like(SCRATCH_PREFIX), 120, "a scratch database", log)
        [(job,)] = query(db, "SELECT id FROM backups_run WHERE kind = 'verify' AND status = 'running'")
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        # The machine "crashes": the job, its psql and its supervisor die too.
        job_id = str(uuid.UUID(job))
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    environ = Path(f"/proc/{entry}/environ").read_bytes()
                except OSError:
                    continue
                if f"BACKUP_RUN_ID={job_id}".encode() in environ.split(b"\0"):
                    os.kill(int(entry), signal.SIGKILL)
        assert databases_like(SCRATCH_PREFIX), "the killed restore-test left its scratch database"
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    restarted = start_worker(env, log)
    try:
        wait_for(lambda: not databases_like(SCRATCH_PREFIX) or None, 60, "the leftover dropped", log)
        status, _ = wait_for(lambda: verification_of(db), 180, "the verification done again", log)
    finally:
        os.killpg(restarted.pid, signal.SIGTERM)
        restarted.wait(60)
    assert status == "ok"
    assert query(db, f"SELECT status FROM backups_run WHERE id = '{job}'") == [("interrupted",)]
    assert databases_like(SCRATCH_PREFIX) == []
