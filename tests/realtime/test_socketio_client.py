"""The real `socket.io-client` (Node, tests/realtime/js) against real `manage.py serve` processes: both
transports, both ways to authenticate, a real run of the reference script, and two servers sharing
events through Redis."""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ServerProcess, manage, server_env

pytestmark = pytest.mark.slow

JS = Path(__file__).resolve().parent / "js"
CLIENT = JS / "client.mjs"
END_EVENTS = ["backup-completed", "backup-error"]


@pytest.fixture(scope="module", autouse=True)
def _node_client() -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the Socket.IO client tests need it (.ci/run installs it)")
    if not (JS / "node_modules" / "socket.io-client").is_dir():
        pytest.fail(
            "socket.io-client is not installed: run `npm ci --prefix tests/realtime/js` (.ci/run does)"
        )


def start(tmp: Path, *args: str, env: dict[str, str] | None = None, **overrides: str) -> ServerProcess:
    environment = env or server_env(tmp, **overrides)
    (tmp / "backups").mkdir(exist_ok=True)
    if env is None:
        done = manage(environment, "migrate", "--noinput")
        assert done.returncode == 0, done.stderr[-2000:]
    return ServerProcess(tmp, environment, list(args)).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    process = start(tmp_path_factory.mktemp("socketio"), BACKUP_STEP_DELAY="0.05")
    yield process
    process.stop()


def token_for(server: ServerProcess) -> str:
    done = manage(server.env, "create_admin_token", "sio-admin")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


class NodeClient:
    """One `node client.mjs <plan>`; its JSON lines are read as they come."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            ["node", str(CLIENT), json.dumps(plan)],
            cwd=JS,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.queue.put(json.loads(raw))
        self.queue.put(None)

    def wait_for(self, kind: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {kind!r} within {timeout} s; got {self.lines}") from None
            if line is None:
                stderr = self.process.stderr.read() if self.process.stderr else ""
                raise AssertionError(f"the client ended before {kind!r}: {self.lines}\n{stderr}")
            self.lines.append(line)
            if line["type"] == kind:
                return line

    def finish(self, timeout: float = 60) -> list[dict[str, Any]]:
        self.wait_for("exit", timeout)
        self.process.wait(10)
        return self.lines

    def events(self, *names: str) -> list[dict[str, Any]]:
        return [
            line for line in self.lines if line["type"] == "event" and (not names or line["event"] in names)
        ]


def create_run(server: ServerProcess, token: str) -> str:
    import urllib.request

    request = urllib.request.Request(
        f"{server.base}/api/backup/create",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202
        return json.loads(response.read())["run"]["id"]


def watch_plan(server: ServerProcess, token: str, *, transports: list[str] | None, by_event: bool) -> dict:
    steps: list[list[Any]] = []
    if by_event:
        steps.append(["emit", "authenticate", {"token": token}, "authenticated"])
    steps += [
        ["emit", "subscribe-backup-events", {}, "subscribed"],
        ["ack", "get-realtime-status", {}],
    ]
    if transports is None:
        steps.append(["upgrade"])
    return {
        "url": server.base,
        "transports": transports,
        "auth": None if by_event else {"token": token},
        "steps": steps,
        "until": END_EVENTS,
        "timeoutMs": 60000,
    }


@pytest.mark.parametrize(
    "transports, by_event",
    [(None, False), (["websocket"], True)],
    ids=["polling-then-websocket, auth payload", "websocket only, authenticate event"],
)
def test_a_run_is_watched_live_with_the_real_client(server, transports, by_event):
    token = token_for(server)
    client = NodeClient(watch_plan(server, token, transports=transports, by_event=by_event))
    ready = client.wait_for("ready")
    run_id = create_run(server, token)
    lines = client.finish()

    kinds = [line["type"] for line in lines]
    opened = next(line for line in lines if line["type"] == "open")
    if transports is None:
        assert opened["transport"] == "polling" and "upgrade" in kinds, lines
    else:
        assert opened["transport"] == "websocket" and "upgrade" not in kinds
    assert ready["transport"] == "websocket"
    assert client.events("authenticated")[0]["data"] == {"user_id": "sio-admin"}
    assert client.events("subscribed")[0]["data"] == {}
    ack = next(line for line in lines if line["type"] == "ack")
    assert set(ack["data"]) >= {
        "running",
        "current_run",
        "last_backup",
        "backups",
        "disk",
        "script",
        "config",
    }
    assert not client.events("realtime-status")  # answered through the ack only

    run_events = [e for e in client.events(*END_EVENTS, "backup-progress") if e["data"]["run_id"] == run_id]
    assert run_events[-1]["event"] == "backup-completed", run_events[-1]
    completed = run_events[-1]["data"]
    assert completed["backup_id"].startswith("backup-") and completed["size_bytes"] > 0
    progress = [e["data"] for e in run_events if e["event"] == "backup-progress"]
    percents = [p["percent"] for p in progress]
    assert percents == sorted(percents) and percents[-1] == 100 and len(set(percents)) >= 3
    assert all(
        set(p) == {"run_id", "backup_id", "percent", "stage", "message", "timestamp"} for p in progress
    )


@pytest.mark.parametrize("by_event", [False, True], ids=["auth payload", "authenticate event"])
def test_a_bad_token_gets_an_error_then_is_disconnected(server, by_event):
    plan = {
        "url": server.base,
        "auth": None if by_event else {"token": "not-a-jwt"},
        "steps": [["emit", "authenticate", {"token": "not-a-jwt"}, "authenticated"]] if by_event else [],
        "timeoutMs": 10000,
    }
    lines = NodeClient(plan).finish(20)
    errors = [line for line in lines if line["type"] == "event" and line["event"] == "error"]
    assert errors and errors[0]["data"]["message"].startswith("invalid token"), lines
    disconnect = next(line for line in lines if line["type"] == "disconnect")
    assert disconnect["reason"] == "io server disconnect"
    assert lines.index(errors[0]) < lines.index(disconnect)
    assert not any(line["type"] == "event" and line["event"] == "authenticated" for line in lines)


@pytest.mark.parametrize("transports", [["polling"], ["websocket"]])
def test_a_page_on_another_port_is_refused_and_the_own_origin_accepted(server, transports):
    token = token_for(server)

    def outcome(origin: str) -> str:
        plan = {
            "url": server.base,
            "transports": transports,
            "auth": {"token": token},
            "extraHeaders": {"Origin": origin},
            "exitWhenReady": True,
            "timeoutMs": 10000,
        }
        client = NodeClient(plan)
        first = next(line for line in client.finish(20) if line["type"] in ("connect", "connect_error"))
        return first["type"]

    assert outcome(f"http://127.0.0.1:{server.port}") == "connect"
    assert outcome(f"http://127.0.0.1:{server.port + 1}") == "connect_error"
    assert outcome(f"https://127.0.0.1:{server.port}") == "connect_error"


def test_sigterm_ends_long_polls_at_once_and_clients_are_free_to_reconnect(tmp_path):
    server = start(tmp_path)
    token = token_for(server)
    polling = {"url": server.base, "transports": ["polling"], "auth": {"token": token}, "timeoutMs": 30000}
    # A tab that went away mid-poll, and one still open: neither may hold the shutdown.
    NodeClient({**polling, "exitWhenReady": True}).finish(20)
    staying = NodeClient(polling)
    staying.wait_for("ready")
    started = time.monotonic()
    assert server.stop() == 0
    took = time.monotonic() - started
    lines = staying.finish(20)
    assert took < 6, f"shutdown took {took:.1f} s"
    # A transport close or error, unlike "io server disconnect", lets socket.io-client reconnect by itself.
    reason = next(line for line in lines if line["type"] == "disconnect")["reason"]
    assert reason in ("transport close", "transport error"), reason


def test_a_client_on_a_second_server_receives_the_first_servers_run_through_redis(tmp_path):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 6379)) != 0:
            pytest.skip("no Redis server on 127.0.0.1:6379")
    redis_url = os.environ.get("SOCKETIO_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
    first = start(tmp_path, REDIS_URL=redis_url, BACKUP_STEP_DELAY="0.05")
    second = start(tmp_path, "--no-worker", env={**first.env})
    try:
        token = token_for(first)
        on_second = NodeClient(watch_plan(second, token, transports=None, by_event=False))
        on_first = NodeClient(watch_plan(first, token, transports=["websocket"], by_event=True))
        on_second.wait_for("ready")
        on_first.wait_for("ready")
        run_id = create_run(first, token)
        on_second.finish()
        on_first.finish()
    finally:
        second.stop()
        first.stop()

    def of_run(client: NodeClient) -> list[dict[str, Any]]:
        names = (*END_EVENTS, "backup-progress")
        return [e for e in client.events(*names) if e["data"]["run_id"] == run_id]

    remote, local = of_run(on_second), of_run(on_first)
    assert remote[-1]["event"] == "backup-completed"
    # Every event the worker's own process delivered also reached the other process, in the same order.
    assert [(e["event"], e["data"]) for e in remote] == [(e["event"], e["data"]) for e in local]
    latencies = [
        e["at"] / 1000 - datetime.fromisoformat(e["data"]["timestamp"]).timestamp()
        for e in remote
        if e["event"] == "backup-progress"
    ]
    median = sorted(latencies)[len(latencies) // 2]
    print(
        f"two servers through Redis: {len(remote)} events of the run arrived on the second server "
        f"({len(local)} on the first); progress latency median {median * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )
