"""Progress fan-out latency: 50 WebSocket clients subscribed to the backup events while a script prints
`PROGRESS: <n> ts=<time.time()>` every 20 ms for ~10 s. Latency = arrival at the client − the `ts` in the
event's `message`. Embedded (in-memory channel layer), then with REDIS_URL (channels_redis) when Redis
answers on 127.0.0.1:6379.

Run: .venv/bin/python benchmarks/bench_progress.py
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from _common import (
    PYTHON,
    Report,
    Server,
    admin_token,
    bench_tmpdir,
    cpu_seconds,
    http_post_json,
    migrate,
    percentile,
    running,
    server_env,
)
from websockets.asyncio.client import ClientConnection, connect

CLIENTS = 50
SCRIPT_SECONDS = 10.0
LINE_INTERVAL = 0.02
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
TS = re.compile(r"ts=(\d+\.\d+)")

SCRIPT = '''#!{python}
"""Benchmark backup script: a folder, then a PROGRESS marker with a timestamp every {interval} s."""
import os
import sys
import time

folder = os.path.join(os.environ["BACKUP_ROOT"], time.strftime("backup-%Y%m%d_%H%M%S"))
os.makedirs(folder, exist_ok=True)
print("Backup folder: " + folder, flush=True)
start = time.time()
for _ in range({max_lines}):
    elapsed = time.time() - start
    if elapsed >= {seconds}:
        break
    n = 1 + int(98 * elapsed / {seconds})
    sys.stdout.write("PROGRESS: %d ts=%.6f\\n" % (n, time.time()))
    sys.stdout.flush()
    time.sleep({interval})
with open(os.path.join(folder, "database.sql"), "w") as dump:
    dump.write("-- done\\n")
print("Backup complete", flush=True)
'''


@dataclass
class ClientLog:
    arrivals: list[tuple[float, str]] = field(default_factory=list)  # (time.time(), raw frame)
    finished: bool = False


@dataclass
class Latencies:
    """Seconds, one entry per received backup-progress event carrying a ts."""

    total: list[float] = field(default_factory=list)  # arrival − ts printed by the script
    to_publish: list[float] = field(default_factory=list)  # payload `timestamp` (set by the worker) − ts
    to_client: list[float] = field(default_factory=list)  # arrival − payload `timestamp`
    printed: list[float] = field(default_factory=list)  # the ts itself, to see a trend over the run
    client_lag: list[float] = field(default_factory=list)  # this process's event-loop lag (10 ms sleeps)
    ping_rtt: list[float] = field(default_factory=list)  # WebSocket ping → pong through the server's loop
    server_cpu: float = 0.0  # share of one core the serve process used while the run went on


def write_script(tmp: Path) -> Path:
    script = tmp / "progress-backup.py"
    max_lines = int(SCRIPT_SECONDS / LINE_INTERVAL) * 2
    script.write_text(
        SCRIPT.format(python=PYTHON, interval=LINE_INTERVAL, seconds=SCRIPT_SECONDS, max_lines=max_lines)
    )
    script.chmod(0o755)
    return script


async def expect(ws: ClientConnection, event: str) -> None:
    frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
    if frame.get("event") != event:
        raise RuntimeError(f"expected {event}, got {frame}")


async def subscribe(url: str, token: str) -> ClientConnection:
    ws = await connect(url, open_timeout=20, max_queue=None)
    await ws.send(json.dumps({"event": "authenticate", "data": {"token": token}}))
    await expect(ws, "authenticated")
    await ws.send(json.dumps({"event": "subscribe-backup-events", "data": {}}))
    await expect(ws, "subscribed")
    return ws


async def listen(ws: ClientConnection, log: ClientLog, run_id: asyncio.Future[str]) -> None:
    """Record every frame's arrival until this run's backup-completed / backup-error. Parsing beyond
    the event name is left for later, so the client adds as little as possible to the latency."""
    async for raw in ws:
        arrived = time.time()
        text = raw if isinstance(raw, str) else raw.decode()
        log.arrivals.append((arrived, text))
        if '"backup-completed"' in text or '"backup-error"' in text:
            data = json.loads(text)["data"]
            if run_id.done() and data.get("run_id") == run_id.result():
                log.finished = True
                return


async def probe_loops(ws: ClientConnection, latencies: Latencies, stop: asyncio.Event) -> None:
    """Every ~50 ms: how late a 10 ms sleep wakes up here (client side), and a ping's round trip (the
    pong is written by the server's event loop, so it shows how busy that loop is)."""
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        latencies.client_lag.append(time.perf_counter() - started - 0.01)
        started = time.perf_counter()
        pong = await ws.ping()
        await asyncio.wait_for(pong, 10)
        latencies.ping_rtt.append(time.perf_counter() - started)
        await asyncio.sleep(0.04)


async def one_round(server: Server, token: str) -> tuple[Latencies, list[ClientLog], dict[str, object]]:
    sockets = await asyncio.gather(*(subscribe(server.ws, token) for _ in range(CLIENTS + 1)))
    probe_ws = sockets.pop()
    await probe_ws.send(json.dumps({"event": "get-realtime-status", "data": {}}))  # unsubscribed: no events
    await expect(probe_ws, "realtime-status")
    latencies = Latencies()
    stop_probe = asyncio.Event()
    probe = asyncio.create_task(probe_loops(probe_ws, latencies, stop_probe))
    logs = [ClientLog() for _ in sockets]
    run_id: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    listeners = [asyncio.create_task(listen(ws, log, run_id)) for ws, log in zip(sockets, logs, strict=True)]
    try:
        status, body = await asyncio.to_thread(
            http_post_json, server.port, "/api/backup/create", {"description": "bench_progress"}, token
        )
        if status != 202:
            raise RuntimeError(f"create: {status} {body}")
        run: dict[str, object] = body["run"]
        run_id.set_result(str(run["id"]))
        cpu_before, wall_before = cpu_seconds(server.pid), time.perf_counter()
        await asyncio.wait(listeners, timeout=SCRIPT_SECONDS + 60)
        latencies.server_cpu = (cpu_seconds(server.pid) - cpu_before) / (time.perf_counter() - wall_before)
    finally:
        stop_probe.set()
        for task in listeners:
            task.cancel()
        await asyncio.gather(probe, *listeners, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in [*sockets, probe_ws]), return_exceptions=True)
    for log in logs:
        for arrived, text in log.arrivals:
            frame = json.loads(text)
            data = frame.get("data", {})
            if frame.get("event") != "backup-progress" or data.get("run_id") != run["id"]:
                continue
            match = TS.search(str(data.get("message", "")))
            if match:
                printed = float(match.group(1))
                published = datetime.fromisoformat(data["timestamp"]).timestamp()
                latencies.total.append(arrived - printed)
                latencies.to_publish.append(published - printed)
                latencies.to_client.append(arrived - published)
                latencies.printed.append(printed)
    return latencies, logs, run


def redis_reachable(url: str) -> bool:
    match = re.match(r"redis://([^:/]+):(\d+)", url)
    if not match:
        return False
    try:
        with socket.create_connection((match.group(1), int(match.group(2))), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def measure(tmp: Path, script: Path, report: Report, label: str, goal_ms: float, **overrides: str) -> None:
    tmp.mkdir()
    env = server_env(tmp, BACKUP_SCRIPT=str(script), **overrides)
    (tmp / "backups").mkdir()
    migrate(env)
    token = admin_token(env)
    with running(Server(tmp, env)) as server:
        server.start()
        latencies, logs, run = asyncio.run(one_round(server, token))
    if not latencies.total:
        raise RuntimeError(f"{label}: no backup-progress event carried a ts (run {run})")
    finished = sum(log.finished for log in logs)
    count = len(latencies.total)
    p50, p99 = (percentile(latencies.total, pct) * 1000 for pct in (50, 99))
    report.add(
        f"{label}: backup-progress latency p50 ({count:,} events, {count / len(logs):.0f}/client)",
        f"{p50:.1f} ms",
    )
    report.add(f"{label}: backup-progress latency p99", f"{p99:.1f} ms", f"< {goal_ms:.0f} ms", p99 < goal_ms)
    report.add(f"{label}: max", f"{max(latencies.total) * 1000:.1f} ms")
    for part, values in (
        ("script line → worker publish", latencies.to_publish),
        ("worker publish → client", latencies.to_client),
    ):
        report.add(
            f"{label}: of which {part}, p50 / p99",
            f"{percentile(values, 50) * 1000:.1f} / {percentile(values, 99) * 1000:.1f} ms",
        )
    for part, values in (
        ("client event-loop lag (10 ms sleep overshoot)", latencies.client_lag),
        ("WebSocket ping RTT via the server loop", latencies.ping_rtt),
    ):
        report.add(
            f"{label}: {part}, p50 / p99",
            f"{percentile(values, 50) * 1000:.1f} / {percentile(values, 99) * 1000:.1f} ms",
        )
    report.add(f"{label}: serve process CPU while the run went on", f"{latencies.server_cpu:.0%} of a core")
    first = min(latencies.printed)
    for window in (0, 1, 2, 3):  # trend: median per quarter of the run
        low, high = first + window * SCRIPT_SECONDS / 4, first + (window + 1) * SCRIPT_SECONDS / 4
        part = [t for t, p in zip(latencies.total, latencies.printed, strict=True) if low <= p < high]
        if part:
            report.add(
                f"{label}: p50 in quarter {window + 1} of the run", f"{percentile(part, 50) * 1000:.1f} ms"
            )
    report.add(
        f"{label}: clients that got backup-completed",
        f"{finished}/{len(logs)}",
        f"{len(logs)}",
        finished == len(logs),
    )


def main() -> int:
    report = Report(f"Progress events to {CLIENTS} WebSocket clients")
    with bench_tmpdir("bench-progress-") as tmp:
        script = write_script(tmp)
        measure(tmp / "embedded", script, report, "embedded (in-memory layer)", 100)
        if redis_reachable(REDIS_URL):
            measure(tmp / "redis", script, report, f"Redis ({REDIS_URL})", 150, REDIS_URL=REDIS_URL)
        else:
            report.add(f"Redis ({REDIS_URL})", "skipped: Redis not reachable", "< 150 ms", None)
    report.note(
        f"script: a PROGRESS line every {LINE_INTERVAL * 1000:.0f} ms for {SCRIPT_SECONDS:.0f} s; "
        "the service coalesces progress (≤ 1 event / 50 ms), so not every line becomes an event"
    )
    report.note(
        "latency = client time.time() at arrival − ts printed by the script (same clock); the 50 "
        "clients share one asyncio process, so their own scheduling is included"
    )
    print(report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
