"""Output-heavy script: a backup script printing 1,000,000 lines as fast as it can (`seq 1000000`), run
through the service (POST /api/backup/create → `backup-completed` on a WebSocket) against the same script
run directly with stdout to /dev/null, plus the same script without the million lines through the service
(the fixed cost of a run). RSS of the serve process is sampled every 50 ms during each run.

Run: .venv/bin/python benchmarks/bench_output.py
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _common import (
    Report,
    RssSampler,
    Server,
    admin_token,
    bench_tmpdir,
    cpu_seconds,
    http_get,
    http_post_json,
    median,
    migrate,
    running,
    server_env,
)
from websockets.asyncio.client import ClientConnection, connect

LINES = 1_000_000
REPEATS = 3
RUN_TIMEOUT = 60.0

SCRIPT = """#!/usr/bin/env bash
# Benchmark backup script: a folder, then as many lines as $BENCH_LINES_FILE says, as fast as `seq` writes.
set -euo pipefail
folder="$BACKUP_ROOT/backup-$(date +%Y%m%d_%H%M%S)"
mkdir -p "$folder"
echo "Backup folder: $folder"
seq "$(cat "$BENCH_LINES_FILE")"
echo "-- dump" > "$folder/database.sql"
echo "Backup complete"
"""


@dataclass
class ServiceRun:
    wall: float  # POST /api/backup/create → backup-completed arrives
    duration: float  # the run's own duration_seconds
    output_lines: int
    rss_growth_mb: float
    cpu: float  # CPU seconds of the serve process during the run


async def subscribe(url: str, token: str) -> ClientConnection:
    ws = await connect(url, open_timeout=20, max_queue=None)
    for frame in (
        {"event": "authenticate", "data": {"token": token}},
        {"event": "subscribe-backup-events", "data": {}},
    ):
        await ws.send(json.dumps(frame))
        json.loads(await asyncio.wait_for(ws.recv(), 10))
    return ws


class RunFailed(Exception):
    """The run did not reach backup-completed; the message says how it ended (or that it hung)."""


def last_server_error(server: Server) -> str | None:
    """The last line of the last ERROR record's traceback in the server's JSON log, if any."""
    for line in reversed(server.log().splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") == "ERROR":
            trace = str(record.get("exc_info") or "").strip().splitlines()
            return f"{record.get('message')}: {trace[-1] if trace else ''}"
    return None


async def watch_run(server: Server, token: str, run_id: str) -> str:
    """Poll the run every 0.5 s; returns why it will not complete (failed, or the worker crashed)."""
    while True:
        await asyncio.sleep(0.5)
        status, body = await asyncio.to_thread(http_get, server.port, f"/api/backup/runs/{run_id}", token)
        run = json.loads(body) if status == 200 else {}
        if run.get("status") not in (None, "queued", "running", "succeeded"):
            return f"run ended {run.get('status')}: {str(run.get('error'))[:200]}"
        error = last_server_error(server)
        if run.get("status") == "running" and error:
            return f"run left `running` after a server error: {error}"


async def run_once(server: Server, token: str) -> tuple[float, str]:
    """Create a run and wait for its backup-completed; (seconds, run id). RunFailed otherwise."""
    ws = await subscribe(server.ws, token)
    watcher: asyncio.Task[str] | None = None
    try:
        started = time.perf_counter()
        status, body = await asyncio.to_thread(
            http_post_json, server.port, "/api/backup/create", {"description": "bench_output"}, token
        )
        if status != 202:
            raise RunFailed(f"create answered {status}: {body}")
        run_id = str(body["run"]["id"])
        watcher = asyncio.create_task(watch_run(server, token, run_id))
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            receive = asyncio.create_task(ws.recv())
            done, _ = await asyncio.wait(
                {receive, watcher}, timeout=deadline - time.monotonic(), return_when=asyncio.FIRST_COMPLETED
            )
            if watcher in done:
                receive.cancel()
                raise RunFailed(f"run {run_id}: {watcher.result()}")
            if receive not in done:
                receive.cancel()
                break
            frame = json.loads(receive.result())
            data = frame.get("data", {})
            if data.get("run_id") != run_id:
                continue
            if frame.get("event") == "backup-completed":
                return time.perf_counter() - started, run_id
            if frame.get("event") == "backup-error":
                raise RunFailed(f"run {run_id}: backup-error {data}")
        raise RunFailed(f"run {run_id} did not complete in {RUN_TIMEOUT:.0f} s")
    finally:
        if watcher is not None:
            watcher.cancel()
        await ws.close()


def service_run(server: Server, token: str) -> ServiceRun:
    cpu_before = cpu_seconds(server.pid)
    with RssSampler(server.pid) as sampler:
        wall, run_id = asyncio.run(run_once(server, token))
    cpu = cpu_seconds(server.pid) - cpu_before
    status, body = http_get(server.port, f"/api/backup/runs/{run_id}", token)
    run = json.loads(body)
    if status != 200 or run["status"] != "succeeded":
        raise RunFailed(f"run {run_id}: {status} {run}")
    time.sleep(1.1)  # the next run's folder name (to the second) must differ
    return ServiceRun(wall, float(run["duration_seconds"]), int(run["output_lines"]), sampler.growth_mb, cpu)


def cancel_active_run(server: Server, token: str) -> None:
    """After a failure: cancel whatever is still queued or running, so the server stops cleanly."""
    status, body = http_get(server.port, "/api/backup/status", token)
    current = json.loads(body).get("current_run") if status == 200 else None
    if current:
        http_post_json(server.port, f"/api/backup/runs/{current['id']}/cancel", {}, token)


def bare_run(script: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([str(script)], env=env, stdout=subprocess.DEVNULL, check=True, timeout=RUN_TIMEOUT)
    return time.perf_counter() - started


def add_figures(
    report: Report, bare: list[float], loud: list[ServiceRun], quiet: list[ServiceRun], failure: str | None
) -> None:
    bare_s = median(bare)
    report.add(f"bare script, stdout → /dev/null, median of {len(bare)}", f"{bare_s * 1000:.0f} ms")
    if failure:
        report.add(
            f"run through the service ({len(loud)} of {REPEATS} loud runs completed before)",
            "FAILED",
            "completes",
            False,
        )
        report.note(f"failure: {failure}")
    if not loud:
        report.add("service wall / bare", "n/a (no run completed)", "≤ 1.3×", False)
        report.add("server RSS growth during the run", "n/a (no run completed)", "< 50 MB", False)
        return
    wall = median([r.wall for r in loud])
    duration = median([r.duration for r in loud])
    report.add(
        f"through the service: create → backup-completed (WebSocket), median of {len(loud)}", f"{wall:.2f} s"
    )
    report.add("through the service: the run's duration_seconds", f"{duration:.2f} s")
    report.add("service wall / bare", f"{wall / bare_s:.1f}×", "≤ 1.3×", wall / bare_s <= 1.3)
    ratio = duration / bare_s
    report.add("run duration_seconds / bare", f"{ratio:.1f}×", "(≤ 1.3×)", ratio <= 1.3)
    if quiet:
        fixed = median([r.wall for r in quiet])
        marginal = wall - fixed
        report.add("the same script without the lines, create → backup-completed", f"{fixed:.2f} s")
        report.add(
            f"cost of the {LINES:,} lines in the service (wall − wall without lines)",
            f"{marginal:.2f} s = {LINES / max(marginal, 1e-9) / 1e6:.2f} M lines/s",
        )
    report.add("serve process CPU during the run with lines", f"{median([r.cpu for r in loud]):.2f} s")
    growth = max(r.rss_growth_mb for r in loud)
    report.add(
        f"server RSS growth during the run (max of {len(loud)})", f"{growth:.1f} MB", "< 50 MB", growth < 50
    )
    report.note(f"output_lines recorded by the service: {sorted({r.output_lines for r in loud})}")


def main() -> int:
    report = Report(f"Output-heavy run: {LINES:,} lines through the service")
    with bench_tmpdir("bench-output-") as tmp:
        script = tmp / "loud-backup.sh"
        script.write_text(SCRIPT)
        script.chmod(0o755)
        lines_file = tmp / "lines"
        env = server_env(tmp, BACKUP_SCRIPT=str(script), BENCH_LINES_FILE=str(lines_file))
        (tmp / "backups").mkdir()
        bare_env = {**env, "BACKUP_ROOT": str(tmp / "bare")}
        (tmp / "bare").mkdir()
        migrate(env)
        token = admin_token(env)
        loud: list[ServiceRun] = []
        quiet: list[ServiceRun] = []
        bare: list[float] = []
        failure: str | None = None
        with running(Server(tmp, env)) as server:
            server.start()
            try:
                for _ in range(REPEATS):  # interleaved, so noise hits every row alike
                    lines_file.write_text(str(LINES))
                    bare.append(bare_run(script, bare_env))
                    loud.append(service_run(server, token))
                    lines_file.write_text("0")
                    quiet.append(service_run(server, token))
            except RunFailed as error:
                failure = str(error)
                cancel_active_run(server, token)
        add_figures(report, bare, loud, quiet, failure)
    print(report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
