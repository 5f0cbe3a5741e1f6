"""End to end: the real server (`manage.py serve`), real HTTP, real WebSocket clients, real scripts."""

from __future__ import annotations

import asyncio
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


def test_sigkill_during_a_run_then_restart_interrupts_it_and_accepts_a_new_one(start_server, tmp_path):
    server = start_server(BACKUP_SCRIPT=str(long_script(tmp_path)))
    token = token_for(server)
    run_id = json.loads(call(server, "POST", "/api/backup/create", token, {})[2])["run"]["id"]
    deadline = time.monotonic() + 20
    pgid = None
    while time.monotonic() < deadline and pgid is None:
        time.sleep(0.2)
        pgid = next((pid for pid in _pids_with_run_id(run_id)), None)
    assert pgid, "the script never started"
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(10)
    assert _pids_with_run_id(run_id), "the script's group outlives a SIGKILLed server"
    restarted = start_server(env=server.env, migrate=False)
    deadline = time.monotonic() + 20
    run = {}
    while time.monotonic() < deadline:
        run = json.loads(call(restarted, "GET", f"/api/backup/runs/{run_id}", token)[2])
        if run["status"] != "running":
            break
        time.sleep(0.2)
    assert run["status"] == "interrupted", run
    assert not _pids_with_run_id(run_id)
    assert call(restarted, "POST", "/api/backup/create", token, {})[0] == 202


def test_sigterm_gives_the_run_its_grace_then_interrupts_it_and_tells_the_clients(start_server, tmp_path):
    server = start_server(BACKUP_SCRIPT=str(long_script(tmp_path)), SHUTDOWN_GRACE_SECONDS="1")
    token = token_for(server)

    async def scenario() -> list[dict]:
        ws = await subscribe(server.ws, token)
        run_id = json.loads(call(server, "POST", "/api/backup/create", token, {})[2])["run"]["id"]
        deadline = time.monotonic() + 20
        while not _pids_with_run_id(run_id) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        os.kill(server.process.pid, signal.SIGTERM)
        frames = await events_until_end(ws, run_id, timeout=30)
        return frames

    frames = asyncio.run(scenario())
    assert frames[-1]["event"] == "backup-error" and "shut down" in frames[-1]["data"]["error"]
    assert any(
        f["event"] == "system-notification" and "shutting down" in f["data"]["message"] for f in frames
    )
    assert server.process.wait(30) == 0


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
