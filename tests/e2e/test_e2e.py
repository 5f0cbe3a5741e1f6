"""End to end: the real server (`manage.py serve`), real HTTP, real WebSocket clients, real scripts."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import io
import json
import os
import signal
import socket
import tarfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import websockets

from backups import runner
from tests.conftest import make_backup, manage

pytestmark = pytest.mark.slow


def token_for(server) -> str:
    done = manage(server.env, "create_admin_token", "e2e-admin")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def call(
    server, method: str, path: str, token: str | None, body: dict | None = None
) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), data


def long_script(tmp: Path) -> Path:
    path = tmp / "long-backup.sh"
    path.write_text(
        '#!/usr/bin/env bash\nd="$BACKUP_ROOT/backup-20990101_000000"; mkdir -p "$d"\n'
        'echo "Backup directory: $d"; echo "[1/3] dumping"; sleep 300 & wait\n'
    )
    path.chmod(0o755)
    return path


def test_download_over_http_matches_the_disk(start_server, tmp_path):
    root = tmp_path / "backups"
    files = {
        "db.sql": os.urandom(3 * 1024 * 1024 + 17),
        "configs/app.env": b"A=1\n",
        "system-info/" + "n" * 120 + ".txt": b"long name\n",
        "empty": b"",
    }
    make_backup(root, "backup-20260101_030000", files)
    server = start_server()
    token = token_for(server)
    request = urllib.request.Request(
        f"{server.base}/api/backup/backup-20260101_030000/download",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"] == "application/x-tar"
        data = response.read()
        assert int(response.headers["Content-Length"]) == len(data)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        got = {
            m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest()
            for m in tar.getmembers()
            if m.isfile()
        }
    assert got == {
        f"backup-20260101_030000/{rel}": hashlib.sha256(content).hexdigest() for rel, content in files.items()
    }


def test_fifty_concurrent_creates_give_exactly_one_202(start_server, tmp_path):
    server = start_server("--no-worker")
    token = token_for(server)
    with ThreadPoolExecutor(max_workers=50) as pool:
        codes = list(pool.map(lambda _: call(server, "POST", "/api/backup/create", token, {})[0], range(50)))
    assert codes.count(202) == 1 and codes.count(409) == 49, codes


async def subscribe(url: str, token: str):
    ws = await websockets.connect(url, open_timeout=10)
    await ws.send(json.dumps({"event": "authenticate", "data": {"token": token}}))
    assert json.loads(await ws.recv())["event"] == "authenticated"
    await ws.send(json.dumps({"event": "subscribe-backup-events", "data": {}}))
    assert json.loads(await ws.recv())["event"] == "subscribed"
    return ws


async def events_until_end(ws, run_id: str, timeout: float = 60) -> list[dict]:
    frames: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        if frame["data"].get("run_id") not in (None, run_id):
            continue
        frames.append(frame)
        if frame["event"] in ("backup-completed", "backup-error"):
            return frames
    raise AssertionError(f"no end event; got {frames}")


def check_progress(frames: list[dict]) -> list[int]:
    percents = [f["data"]["percent"] for f in frames if f["event"] == "backup-progress"]
    assert percents and percents == sorted(percents)
    assert 100 not in percents[:-1]
    return percents


@pytest.mark.parametrize("style", ["reference", "no-markers"])
def test_a_backup_run_is_watched_live_over_websocket(start_server, tmp_path, style):
    overrides = {"BACKUP_STEP_DELAY": "0.2"}
    if style == "no-markers":
        script = tmp_path / "quiet.sh"
        script.write_text(
            '#!/bin/sh\nd="$BACKUP_ROOT/nightly_$$"; mkdir -p "$d"\n'
            "for f in beauty_platform_new.sql beauty_audit.sql beauty-platform.tar.gz "
            'images-uploads.tar.gz; do sleep 0.5; echo data > "$d/$f"; done\n'
        )
        script.chmod(0o755)
        overrides["BACKUP_SCRIPT"] = str(script)
    server = start_server(**overrides)
    token = token_for(server)

    async def scenario() -> tuple[list[dict], dict]:
        ws = await subscribe(server.ws, token)
        status, _, body = call(server, "POST", "/api/backup/create", token, {"description": style})
        assert status == 202
        run_id = json.loads(body)["run"]["id"]
        frames = await events_until_end(ws, run_id)
        await ws.close()
        return frames, json.loads(call(server, "GET", f"/api/backup/runs/{run_id}", token)[2])

    frames, run = asyncio.run(scenario())
    assert frames[-1]["event"] == "backup-completed", frames[-1]
    completed = frames[-1]["data"]
    assert completed["backup_id"] == run["backup_id"] and completed["size_bytes"] > 0
    assert completed["duration_seconds"] > 0
    percents = check_progress(frames)
    assert percents[-1] == 100 and len(set(percents)) >= 3, percents
    progress = [f["data"] for f in frames if f["event"] == "backup-progress"]
    assert all(
        set(p) >= {"run_id", "backup_id", "percent", "stage", "message", "timestamp"} for p in progress
    )
    assert run["status"] == "succeeded" and run["progress"]["percent"] == 100
    listing = json.loads(call(server, "GET", "/api/backup/list", token)[2])
    assert [row["id"] for row in listing["results"]] == [run["backup_id"]]
    assert listing["results"][0]["is_latest"] is (style == "reference")


def gated_script(tmp: Path) -> tuple[Path, Path]:
    """A backup that waits, after its first step, until the test opens its gate (a file appears)."""
    gate = tmp / "gate"
    path = tmp / "gated-backup.sh"
    path.write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        'd="$BACKUP_ROOT/backup-20990101_000000"; mkdir -p "$d"; echo "Backup directory: $d"\n'
        'echo "[1/3] dumping"; echo data > "$d/db.sql"\n'
        'echo "[2/3] archiving"; echo data > "$d/files.tar.gz"\n'
        f'while [ ! -e "{gate}" ]; do sleep 0.1; done\n'
        'echo "[3/3] done"; ln -sfn backup-20990101_000000 "$BACKUP_ROOT/latest"\n'
    )
    path.chmod(0o755)
    return path, gate


def wait_run(server, token: str, run_id: str, until, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    run: dict = {}
    while time.monotonic() < deadline:
        status, _, body = call(server, "GET", f"/api/backup/runs/{run_id}", token)
        if status == 200:
            run = json.loads(body)
            if until(run):
                return run
        time.sleep(0.1)
    raise AssertionError(f"the run never got there: {run}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_restart_of_the_service_mid_run_follows_the_same_script_to_its_success(start_server, tmp_path, sig):
    script, gate = gated_script(tmp_path)
    server = start_server(BACKUP_SCRIPT=str(script), SHUTDOWN_GRACE_SECONDS="1")
    token = token_for(server)
    run_id = json.loads(call(server, "POST", "/api/backup/create", token, {})[2])["run"]["id"]
    before = wait_run(server, token, run_id, lambda run: run["progress"]["percent"] >= 33)
    groups = {os.getpgid(pid) for pid in _pids_with_run_id(run_id)}
    os.killpg(server.process.pid, sig) if sig == signal.SIGKILL else os.kill(server.process.pid, sig)
    assert server.process.wait(30) == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    survivors = _pids_with_run_id(run_id)
    assert survivors, "the script must outlive the service"
    groups |= {os.getpgid(pid) for pid in survivors}

    restarted = start_server(env=server.env, migrate=False)

    async def scenario() -> list[dict]:
        ws = await subscribe(restarted.ws, token)
        wait_run(restarted, token, run_id, lambda run: run["status"] == "running")
        gate.touch()
        frames = await events_until_end(ws, run_id)
        await ws.close()
        return frames

    frames = asyncio.run(scenario())
    assert frames[-1]["event"] == "backup-completed", frames[-1]
    percents = check_progress(frames)
    assert percents[0] >= before["progress"]["percent"] and percents[-1] == 100  # never backwards
    run = json.loads(call(restarted, "GET", f"/api/backup/runs/{run_id}", token)[2])
    assert run["status"] == "succeeded" and run["exit_code"] == 0, run
    assert len(groups) == 1, f"more than one process group ran this backup: {groups}"
    listing = json.loads(call(restarted, "GET", "/api/backup/list", token)[2])["results"]
    assert [(row["id"], row["status"], row["is_latest"]) for row in listing] == [
        ("backup-20990101_000000", "completed", True)
    ]


def test_a_script_that_ended_while_the_service_was_down_gets_its_real_outcome(start_server, tmp_path):
    script, gate = gated_script(tmp_path)
    server = start_server(BACKUP_SCRIPT=str(script))
    token = token_for(server)
    run_id = json.loads(call(server, "POST", "/api/backup/create", token, {})[2])["run"]["id"]
    wait_run(server, token, run_id, lambda run: run["progress"]["percent"] >= 33)
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(10)
    gate.touch()
    deadline = time.monotonic() + 20
    while _pids_with_run_id(run_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pids_with_run_id(run_id), "the script should have finished by itself"
    restarted = start_server(env=server.env, migrate=False)
    run = wait_run(restarted, token, run_id, lambda run: run["status"] != "running")
    assert run["status"] == "succeeded" and run["progress"]["percent"] == 100, run
    backup = json.loads(call(restarted, "GET", "/api/backup/backup-20990101_000000", token)[2])
    assert backup["status"] == "completed" and backup["is_latest"] is True


def test_a_run_whose_script_died_with_the_service_is_interrupted_and_a_new_one_accepted(
    start_server, tmp_path
):
    server = start_server(BACKUP_SCRIPT=str(long_script(tmp_path)))
    token = token_for(server)
    run_id = json.loads(call(server, "POST", "/api/backup/create", token, {})[2])["run"]["id"]
    deadline = time.monotonic() + 20
    pids: list[int] = []
    while time.monotonic() < deadline and not pids:
        time.sleep(0.2)
        pids = _pids_with_run_id(run_id)
    assert pids, "the script never started"
    os.killpg(server.process.pid, signal.SIGKILL)
    for pid in pids:  # the supervisor and the script too: nothing left to follow
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.process.wait(10)
    restarted = start_server(env=server.env, migrate=False)
    run = wait_run(restarted, token, run_id, lambda run: run["status"] != "running", timeout=20)
    assert run["status"] == "interrupted", run
    assert not _pids_with_run_id(run_id)
    assert call(restarted, "POST", "/api/backup/create", token, {})[0] == 202


def test_two_servers_share_events_through_redis(start_server, tmp_path):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 6379)) != 0:
            pytest.skip("no Redis server on 127.0.0.1:6379")
    redis_url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/5")
    first = start_server(REDIS_URL=redis_url, BACKUP_STEP_DELAY="0.1")
    second = start_server(env={**first.env}, migrate=False)
    token = token_for(first)

    async def scenario() -> list[dict]:
        ws = await subscribe(second.ws, token)
        run_id = json.loads(call(first, "POST", "/api/backup/create", token, {})[2])["run"]["id"]
        frames = await events_until_end(ws, run_id)
        await ws.close()
        return frames

    frames = asyncio.run(scenario())
    assert frames[-1]["event"] == "backup-completed"
    assert check_progress(frames)[-1] == 100


def _pids_with_run_id(run_id: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and runner.process_has_run_id(int(entry), run_id):
            pids.append(int(entry))
    return pids
