"""Production shape: PostgreSQL + Redis, two `serve --no-worker` processes and `backup_worker`
processes. One truth across processes; a second worker never runs a second backup and takes over."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import manage, server_env, start_worker
from tests.e2e.test_e2e import _pids_with_run_id, call, events_until_end, subscribe, token_for

pytestmark = [pytest.mark.slow, pytest.mark.redis]

PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"


def reachable(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def production_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    if not (reachable(5432) and reachable(6379)):
        pytest.skip("needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379")
    import psycopg

    name = f"backup_mp_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    script = tmp_path / "backup.sh"
    script.write_text(f"""#!/usr/bin/env bash
d="$BACKUP_ROOT/backup-$(date +%Y%m%d_%H%M%S)_$$"; mkdir -p "$d"; echo "Backup directory: $d"
echo "[1/2] dumping"; echo dump > "$d/db.sql"
while [ -f {tmp_path}/slow ]; do sleep 0.2; done
echo "[2/2] done"
""")
    script.chmod(0o755)
    env = server_env(
        tmp_path,
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{name}",
        REDIS_URL="redis://127.0.0.1:6379/6",
        BACKUP_SCRIPT=str(script),
    )
    done = manage(env, "migrate", "--noinput")
    assert done.returncode == 0, done.stderr[-2000:]
    yield env
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_run(server, token: str, run_id: str, statuses: set[str], timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    run: dict = {}
    while time.monotonic() < deadline:
        run = json.loads(call(server, "GET", f"/api/backup/runs/{run_id}", token)[2])
        if run["status"] in statuses:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run never reached {statuses}: {run}")


def test_a_run_created_on_one_process_is_run_by_the_worker_and_seen_on_another(
    production_env, start_server, tmp_path
):
    first = start_server("--no-worker", env=production_env, migrate=False)
    second = start_server("--no-worker", env=production_env, migrate=False)
    worker = start_worker(production_env, tmp_path / "worker.log")
    token = token_for(first)
    try:

        async def scenario() -> list[dict]:
            ws = await subscribe(second.ws, token)
            status, _, body = call(first, "POST", "/api/backup/create", token, {"description": "across"})
            assert status == 202
            frames = await events_until_end(ws, json.loads(body)["run"]["id"])
            await ws.close()
            return frames

        frames = asyncio.run(scenario())
        assert frames[-1]["event"] == "backup-completed", frames[-1]
        backup_id = frames[-1]["data"]["backup_id"]
        listing = json.loads(call(second, "GET", "/api/backup/list", token)[2])
        assert [row["id"] for row in listing["results"]] == [backup_id]
        health = json.loads(call(second, "GET", "/health", None)[2])
        assert health["checks"]["worker"]["ok"] is True
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)


def test_a_second_worker_waits_then_follows_the_run_of_the_first_when_it_is_killed(
    production_env, start_server, tmp_path
):
    (tmp_path / "slow").touch()
    web = start_server("--no-worker", env=production_env, migrate=False)
    token = token_for(web)
    first = start_worker(production_env, tmp_path / "worker1.log")
    second = None
    try:
        run_id = json.loads(call(web, "POST", "/api/backup/create", token, {})[2])["run"]["id"]
        wait_run(web, token, run_id, {"running"})
        deadline = time.monotonic() + 20
        while not _pids_with_run_id(run_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        second = start_worker(production_env, tmp_path / "worker2.log")
        time.sleep(3)  # the second worker is up and polling, but must not touch the running run
        assert wait_run(web, token, run_id, {"running"})["status"] == "running"
        assert call(web, "POST", "/api/backup/create", token, {})[0] == 409
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        assert _pids_with_run_id(run_id), "the script goes on under its supervisor"
        (tmp_path / "slow").unlink()
        # The second worker takes the lease and follows the same script to its end.
        run = wait_run(web, token, run_id, {"succeeded", "failed", "interrupted"}, timeout=60)
        assert run["status"] == "succeeded", run
        assert not _pids_with_run_id(run_id)
        next_id = json.loads(call(web, "POST", "/api/backup/create", token, {})[2])["run"]["id"]
        assert wait_run(web, token, next_id, {"succeeded", "failed"})["status"] == "succeeded"
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)
