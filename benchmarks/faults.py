"""Fault injection on production's stores: two `manage.py serve --no-worker` and one `manage.py
backup_worker` on PostgreSQL (a fresh database, dropped at the end) and Redis (db 7), BACKUP_ROOT on a
2 MB tmpfs, and a backup script written into the temp dir whose behaviour a control file picks per run.

(a) SIGKILL the worker mid-run, start a new one: the run ends `interrupted`, no process carrying its
    BACKUP_RUN_ID survives (/proc/*/environ), the next run is taken by the new worker.
(b) PostgreSQL stopped and started (~6 s) under a client loop on /api/backup/status: at worst 503, never
    500, and the same server processes answer 200 again.
(c) Redis stopped: REST keeps answering 200, a WebSocket client gets an error/close, and a client that
    reconnects once Redis is back receives a run's events again.
(d) The backup root fills up: the run fails with an error naming no space, its folder is `incomplete`
    and not `latest`.

PostgreSQL and Redis are shared with other engineers' test suites: (b) and (c) first wait (up to 10 min)
until no pytest process runs, keep the outage under 15 s, and always start the store again.

Run (as root, for the tmpfs mount): .venv/bin/python benchmarks/faults.py [--only a,b,c,d]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import Report, Server, auth_headers, bench_tmpdir, http_post_json, migrate, server_env
from bench_load import Fleet, WorkerProcess, get, pg_admin, production_stores, token_for

PG_VERSION = sorted(os.listdir("/etc/postgresql"))[0] if os.path.isdir("/etc/postgresql") else "15"
PG_START = ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main", "start"]
PG_STOP = ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main", "stop"]
REDIS_START = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
]
REDIS_STOP = ["redis-cli", "-h", "127.0.0.1", "shutdown", "nosave"]
TMPFS_SIZE = "2m"
PYTEST_WAIT = 600.0
OUTAGE_MAX = 15.0

SCRIPT = r"""#!/usr/bin/env bash
# Fault-injection backup script. Mode from $FAULT_MODE_FILE (read at start): quick | long | fill.
set -euo pipefail
mode=$(cat "${FAULT_MODE_FILE:?}" 2>/dev/null || echo quick)
name="backup-$(date +%Y%m%d_%H%M%S)"
while [[ -e "$BACKUP_ROOT/$name" ]]; do sleep 1; name="backup-$(date +%Y%m%d_%H%M%S)"; done
dir="$BACKUP_ROOT/$name"
mkdir -p "$dir"
if [[ $mode == fill ]]; then
    # The dump is written before the script says anything, as a script that reports its folder at the
    # end would: more than the 2 MB root holds, so the disk is full before the service knows the folder.
    if ! head -c 8M /dev/zero > "$dir/database.sql"; then
        echo "Backup folder: $dir"
        echo "ERROR: database dump failed" >&2
        exit 1
    fi
fi
echo "Backup folder: $dir"
echo "[1/3] Dumping databases ($mode)"
case "$mode" in
  long)
    sleep 300 &           # a background child in the script's process group
    sleep 90              # the run is killed long before this ends
    ;;
  *)
    printf -- '-- dump\n' > "$dir/database.sql"
    sleep 0.5
    ;;
esac
echo "[2/3] Configs"
printf 'A=1\n' > "$dir/app.env"
echo "[3/3] Done"
ln -sfn -- "$name" "$BACKUP_ROOT/.latest.tmp.$$"
mv -Tf -- "$BACKUP_ROOT/.latest.tmp.$$" "$BACKUP_ROOT/latest"
"""


# --- small helpers ----------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = predicate()
            if value:
                return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def pids_with_run_id(run_id: str) -> list[int]:
    """Every process whose environment carries BACKUP_RUN_ID=<run_id> (zombies have an empty environ)."""
    wanted = f"BACKUP_RUN_ID={run_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if wanted in handle.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def other_pytest_running() -> list[str]:
    done = subprocess.run(["pgrep", "-af", "pytest"], capture_output=True, text=True, check=False)
    mine = {str(os.getpid()), str(os.getppid())}
    return [line for line in done.stdout.splitlines() if line.split(" ", 1)[0] not in mine]


def wait_until_no_pytest(report_note: Callable[[str], None], label: str) -> bool:
    started = time.monotonic()
    while time.monotonic() - started < PYTEST_WAIT:
        busy = other_pytest_running()
        if not busy:
            waited = time.monotonic() - started
            if waited > 1:
                report_note(f"({label}) waited {waited:.0f} s for other pytest runs to end")
            return True
        time.sleep(5)
    report_note(f"({label}) other pytest runs still going after {PYTEST_WAIT:.0f} s: scenario not run")
    return False


_MARK = f"FAULTS_BENCH_OWNER={os.getpid()}"


def kill_leftovers() -> None:
    """SIGKILL anything still carrying this run's marker (a script a failed scenario left behind)."""
    wanted = _MARK.encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    if wanted in handle.read().split(b"\0"):
                        os.kill(int(entry), 9)
            except OSError:
                continue


def sh(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def pg_ready() -> bool:
    return sh(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], 10).returncode == 0


def redis_ready() -> bool:
    done = sh(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping"], 10)
    return done.returncode == 0 and "PONG" in done.stdout


def ensure_pg_started() -> None:
    if not pg_ready():
        sh(PG_START, 120)
        wait_for(pg_ready, 60, 0.3)


def ensure_redis_started() -> None:
    if not redis_ready():
        Path("/var/lib/redis").mkdir(parents=True, exist_ok=True)
        Path("/var/log/redis").mkdir(parents=True, exist_ok=True)
        sh(REDIS_START, 60)
        wait_for(redis_ready, 30, 0.2)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = sh(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)])
    if done.returncode != 0:
        raise RuntimeError(f"mount tmpfs failed (run as root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        if sh(["umount", str(path)]).returncode != 0:
            sh(["umount", "-l", str(path)])


@dataclass
class Api:
    ports: list[int]
    token: str

    def get(self, path: str, port: int | None = None) -> tuple[int, Any]:
        status, _, body = get(port or self.ports[0], path, self.token)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def create(self, description: str, port: int | None = None) -> tuple[int, Any]:
        return http_post_json(
            port or self.ports[0], "/api/backup/create", {"description": description}, self.token
        )

    def run(self, run_id: str) -> dict[str, Any]:
        status, body = self.get(f"/api/backup/runs/{run_id}")
        if status != 200:
            raise RuntimeError(f"GET run {run_id}: {status} {body!r}")
        return body

    def wait_run(self, run_id: str, statuses: set[str], timeout: float) -> dict[str, Any] | None:
        return wait_for(
            lambda: (lambda run: run if run["status"] in statuses else None)(self.run(run_id)), timeout, 0.3
        )

    def backup(self, backup_id: str) -> tuple[int, Any]:
        return self.get(f"/api/backup/{backup_id}")


@dataclass
class Scenario:
    name: str
    checks: list[tuple[str, str, bool]] = field(default_factory=list)  # what, evidence, ok
    error: str = ""

    def check(self, what: str, evidence: str, ok: bool) -> bool:
        self.checks.append((what, evidence, bool(ok)))
        return bool(ok)

    @property
    def passed(self) -> bool:
        return not self.error and bool(self.checks) and all(ok for _, _, ok in self.checks)


# --- (a) the worker is SIGKILLed mid-run ------------------------------------------------------------------


def scenario_worker_killed(ctx: Context, out: Scenario) -> None:
    ctx.mode("long")
    status, body = ctx.api.create("faults (a): killed mid-run")
    if not out.check("POST /create", f"{status}", status == 202):
        return
    run_id = body["run"]["id"]
    running = wait_for(
        lambda: (lambda r: r if r["status"] == "running" and "Dumping" in str(r["progress"]) else None)(
            ctx.api.run(run_id)
        ),
        30,
    )
    group = wait_for(lambda: pids_with_run_id(run_id) if len(pids_with_run_id(run_id)) >= 3 else None, 10)
    progress = running["progress"] if running else {}
    out.check(
        "run `running` at step [1/3], script processes up",
        f"status {running and running['status']}, progress {progress.get('percent')}% "
        f"{progress.get('message')!r}; {len(group or [])} processes with BACKUP_RUN_ID",
        bool(running) and bool(group),
    )
    old = ctx.worker
    old.kill(9)  # the worker alone: the script lives in its own process group
    old.process.wait(10)
    time.sleep(1.0)
    orphans = pids_with_run_id(run_id)
    out.check(
        "after SIGKILL of the worker the script's group is orphaned (still alive)",
        f"worker exit {old.process.returncode}; {len(orphans)} processes still carry the run id",
        old.process.returncode == -9,
    )
    new = ctx.fleet.add(WorkerProcess(ctx.tmp, ctx.env, "worker-2").start())
    ctx.worker = new
    started = time.monotonic()
    ended = ctx.api.wait_run(run_id, {"interrupted", "failed", "succeeded", "cancelled"}, 60)
    took = time.monotonic() - started
    out.check(
        "the new worker marks the run `interrupted`",
        f"{ended and ended['status']} after {took:.1f} s; error: {ended and ended['error']!r}",
        bool(ended) and ended["status"] == "interrupted",
    )
    wait_for(lambda: not pids_with_run_id(run_id), 10)
    survivors = pids_with_run_id(run_id)
    out.check(
        "no process with the run's BACKUP_RUN_ID survives (/proc/*/environ)",
        f"{len(survivors)} survivors {survivors}",
        not survivors,
    )
    ctx.mode("quick")
    status, body = ctx.api.create("faults (a): next run")
    if not out.check("next POST /create", str(status), status == 202):
        return
    next_id = body["run"]["id"]
    done = ctx.api.wait_run(next_id, {"succeeded", "failed", "interrupted", "cancelled"}, 60)
    rows = pg_admin(f"SELECT worker FROM backups_run WHERE id = '{next_id}'", ctx.dbname)
    worker_id = rows[0][0] if rows else ""
    out.check(
        "the next run is taken and finished by the new worker",
        f"{done and done['status']} by `{worker_id}` (new worker pid {new.pid})",
        bool(done) and done["status"] == "succeeded" and f":{new.pid}:" in worker_id,
    )


# --- (b) PostgreSQL restarted under load ------------------------------------------------------------------


def status_loop(
    ports: list[int],
    token: str,
    stop: threading.Event,
    samples: list[tuple[float, int, str]],
    index: int,
    limit: int = 20_000,
) -> None:
    conns: dict[int, http.client.HTTPConnection] = {}
    for k in range(limit):
        if stop.is_set():
            break
        port = ports[(k + index) % len(ports)]
        conn = conns.get(port) or http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        conns[port] = conn
        started = time.monotonic()
        try:
            conn.request("GET", "/api/backup/status", headers=auth_headers(token))
            response = conn.getresponse()
            response.read()
            outcome = str(response.status)
        except (OSError, http.client.HTTPException) as exc:
            outcome = type(exc).__name__
            conn.close()
            conns.pop(port, None)
        samples.append((started, port, outcome))
        time.sleep(0.02)
    for conn in conns.values():
        conn.close()


def scenario_postgres_restart(ctx: Context, out: Scenario) -> None:
    if not wait_until_no_pytest(ctx.report.note, "b"):
        out.error = "not run: other pytest runs kept using PostgreSQL"
        return
    pids_before = [server.pid for server in ctx.servers]
    stop = threading.Event()
    samples: list[tuple[float, int, str]] = []
    threads = [
        threading.Thread(
            target=status_loop, args=(ctx.api.ports, ctx.api.token, stop, samples, i), daemon=True
        )
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    stopped_at = ready_at = None
    try:
        time.sleep(4)
        stopped_at = time.monotonic()
        done = sh(PG_STOP, 30)
        out.check(
            "PostgreSQL stopped",
            f"`{' '.join(PG_STOP)}` → {done.returncode} {done.stderr.strip()[:100]}",
            done.returncode == 0,
        )
        time.sleep(max(0.0, 6 - (time.monotonic() - stopped_at)))
    finally:
        sh(PG_START, 60)
        wait_for(pg_ready, 30, 0.2)
        ready_at = time.monotonic()
    outage = ready_at - (stopped_at or ready_at)
    out.check("outage (stop issued → pg_isready)", f"{outage:.1f} s", outage <= OUTAGE_MAX)
    time.sleep(10)
    stop.set()
    for thread in threads:
        thread.join(30)
    phases: dict[str, Counter] = {"before": Counter(), "during": Counter(), "after": Counter()}
    recovered: dict[int, float] = {}
    for started, port, outcome in sorted(samples):
        phase = "before" if started < (stopped_at or 0) else "during" if started < ready_at else "after"
        phases[phase][outcome] += 1
        if phase == "after" and outcome == "200" and port not in recovered:
            recovered[port] = started - ready_at
    everything = sum(phases.values(), Counter())
    bad = {code: n for code, n in everything.items() if code not in ("200", "503")}
    tail = [outcome for started, _, outcome in samples if started > ready_at + 5]
    out.check(
        "status codes before / during / after the outage",
        " / ".join(f"{dict(phases[p])}" for p in ("before", "during", "after")),
        not bad,
    )
    out.check("no 500 (nor anything but 200/503)", f"{bad or 'none'}", not bad)
    out.check(
        "recovered without a restart: first 200 after PostgreSQL is back, per process",
        ", ".join(f":{port} +{sec:.1f} s" for port, sec in sorted(recovered.items())) or "never",
        len(recovered) == len(ctx.api.ports),
    )
    out.check(
        "last 5 s all 200, same server pids",
        f"{Counter(tail)}; pids {pids_before} → {[s.pid for s in ctx.servers]}, alive "
        f"{[s.process.poll() is None for s in ctx.servers]}",
        bool(tail) and all(o == "200" for o in tail) and all(s.process.poll() is None for s in ctx.servers),
    )
    health = [get(port, "/health", None)[0] for port in ctx.api.ports]
    ctx.mode("quick")
    status, body = ctx.api.create("faults (b): after the restart")
    ended = {"succeeded", "failed", "interrupted"}
    run = ctx.api.wait_run(body["run"]["id"], ended, 60) if status == 202 else None
    out.check(
        "after: /health on both, worker alive, a backup succeeds",
        f"health {health}, worker alive {ctx.worker.alive()}, run {run and run['status']}",
        all(code == 200 for code in health)
        and ctx.worker.alive()
        and bool(run)
        and run["status"] == "succeeded",
    )


# --- (c) Redis stopped ------------------------------------------------------------------------------------


async def ws_session(url: str, token: str) -> Any:
    from websockets.asyncio.client import connect

    ws = await connect(url, open_timeout=10, close_timeout=5)
    await ws.send(json.dumps({"event": "authenticate", "data": {"token": token}}))
    await ws.send(json.dumps({"event": "subscribe-backup-events", "data": {}}))
    return ws


async def ws_frames(ws: Any, until: Callable[[list[dict]], bool], timeout: float) -> tuple[list[dict], str]:
    """Frames until `until(frames)` or the timeout; returns them and how it ended."""
    from websockets.exceptions import ConnectionClosed

    frames: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = await asyncio.wait_for(ws.recv(), max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            break
        except ConnectionClosed as closed:
            if closed.rcvd is not None:
                return frames, f"closed by the server with code {closed.rcvd.code} {closed.rcvd.reason!r}"
            return frames, "closed: connection dropped without a close frame (1006)"
        frames.append(json.loads(text))
        if until(frames):
            return frames, "condition met"
    return frames, "timeout (open)"


def event_names(frames: list[dict]) -> list[str]:
    return [frame.get("event", "?") for frame in frames]


async def redis_scenario(ctx: Context, out: Scenario) -> None:
    servers = ctx.servers
    token = ctx.api.token
    before = await ws_session(servers[0].ws, token)
    frames, how = await ws_frames(before, lambda f: "subscribed" in event_names(f), 10)
    out.check(
        "WebSocket subscribed before the outage",
        f"{event_names(frames)} ({how})",
        "subscribed" in event_names(frames),
    )
    stopped_at = ready_at = None
    rest: Counter = Counter()
    try:
        stopped_at = time.monotonic()
        done = sh(REDIS_STOP, 15)
        gone = wait_for(lambda: not redis_ready(), 5, 0.1)
        out.check(
            "Redis stopped",
            f"`{' '.join(REDIS_STOP)}` → {done.returncode}; ping fails: {bool(gone)}",
            bool(gone),
        )
        # The client that was subscribed: does it hear about the outage?
        old_frames, old_how = await ws_frames(before, lambda f: "error" in event_names(f), 3)
        rest_until = time.monotonic() + 4
        while time.monotonic() < rest_until:  # REST for ~4 s of the outage, on both processes
            for port in ctx.api.ports:
                for endpoint in ("/api/backup/status", "/api/backup/list"):
                    status, _, _ = await asyncio.to_thread(get, port, endpoint, token)
                    rest[f"{endpoint.rsplit('/', 1)[1]} {status}"] += 1
            await asyncio.sleep(0.1)
        # A client connecting during the outage.
        during_how, during_frames = "", []
        try:
            during = await ws_session(servers[1].ws, token)
            during_frames, during_how = await ws_frames(during, lambda f: "subscribed" in event_names(f), 6)
            with contextlib.suppress(Exception):
                await during.close()
        except Exception as exc:
            during_how = f"refused: {type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await before.close()
        await asyncio.to_thread(sh, REDIS_START, 30)
        await asyncio.to_thread(wait_for, redis_ready, 20, 0.1)
        ready_at = time.monotonic()
    outage = ready_at - (stopped_at or ready_at)
    out.check("outage (shutdown → PONG)", f"{outage:.1f} s", outage <= OUTAGE_MAX)
    out.check(
        "REST during the outage (~4 s of status and list on each process)",
        f"{dict(rest)}",
        all(key.endswith(" 200") for key in rest),
    )
    out.check(
        "the client subscribed before the outage gets an error/close",
        f"{event_names(old_frames)} ({old_how})",
        "error" in event_names(old_frames) or old_how.startswith("closed"),
    )
    out.check(
        "client connecting during the outage gets an error/close",
        f"{event_names(during_frames)} ({during_how})",
        "error" in event_names(during_frames) or during_how.startswith(("closed", "refused")),
    )
    # Back: a new client on the other process hears a run the separate worker makes.
    await asyncio.sleep(1)
    after = await ws_session(servers[1].ws, token)
    frames, how = await ws_frames(after, lambda f: "subscribed" in event_names(f), 10)
    subscribed = "subscribed" in event_names(frames)
    ctx.mode("quick")
    status, body = await asyncio.to_thread(ctx.api.create, "faults (c): after Redis is back")
    run_id = body["run"]["id"] if status == 202 else "?"

    def finished(seen: list[dict]) -> bool:
        return any(
            f.get("event") in ("backup-completed", "backup-error")
            and f.get("data", {}).get("run_id") == run_id
            for f in seen
        )

    events, how = await ws_frames(after, finished, 45)
    with contextlib.suppress(Exception):
        await after.close()
    names = Counter(f.get("event") for f in events if f.get("data", {}).get("run_id") == run_id)
    out.check(
        "reconnected after Redis is back: subscribed, then the new run's events",
        f"subscribed {subscribed}; run {status}: {dict(names)} ({how})",
        subscribed and names.get("backup-completed", 0) == 1 and names.get("backup-progress", 0) >= 1,
    )


def scenario_redis_stopped(ctx: Context, out: Scenario) -> None:
    if not wait_until_no_pytest(ctx.report.note, "c"):
        out.error = "not run: other pytest runs kept using Redis"
        return
    try:
        asyncio.run(asyncio.wait_for(redis_scenario(ctx, out), 150))
    finally:
        ensure_redis_started()


# --- (d) the backup root fills up -------------------------------------------------------------------------


def scenario_disk_full(ctx: Context, out: Scenario) -> None:
    status, latest_before = ctx.api.backup("latest")
    latest_before_id = latest_before.get("id") if status == 200 else None
    ctx.mode("fill")
    status, body = ctx.api.create("faults (d): disk full")
    if not out.check("POST /create", str(status), status == 202):
        return
    run = ctx.api.wait_run(body["run"]["id"], {"succeeded", "failed", "interrupted", "cancelled"}, 60)
    if not out.check("the run ends", f"{run and run['status']}", bool(run)):
        return
    error = run["error"] or ""
    out.check(
        "run `failed` with an error naming no space",
        f"{run['status']}, exit {run['exit_code']}: {error.splitlines()[0] if error else ''!r}",
        run["status"] == "failed" and "no space" in error.lower(),
    )
    backup_id = run["backup_id"]
    status, backup = ctx.api.backup(backup_id) if backup_id else (0, {})
    out.check(
        "its folder is `incomplete`, not latest",
        f"{backup_id}: {status} status {backup.get('status')}, is_latest {backup.get('is_latest')}",
        status == 200 and backup.get("status") == "incomplete" and backup.get("is_latest") is False,
    )
    status, latest_after = ctx.api.backup("latest")
    link = ctx.root / "latest"
    target = os.readlink(link) if link.is_symlink() else None
    out.check(
        "`latest` still the previous completed backup (API and link)",
        f"API {latest_after.get('id') if status == 200 else status}, link → {target}, before "
        f"{latest_before_id}",
        latest_after.get("id") == latest_before_id and target not in (backup_id, str(ctx.root / backup_id)),
    )
    statuses = [get(port, "/api/backup/status", ctx.api.token)[0] for port in ctx.api.ports]
    out.check(
        "the service still answers with the root full",
        f"status {statuses}",
        all(code == 200 for code in statuses),
    )
    # The API promises: deleting `latest`'s target re-points it to the newest remaining *completed* backup.
    if latest_before_id:
        code = delete(ctx.api, latest_before_id)
        status, now_latest = ctx.api.backup("latest")
        target = os.readlink(link) if link.is_symlink() else None
        out.check(
            "after DELETE of the latest backup, `latest` is not the failed run's folder",
            f"DELETE {code}; latest now {now_latest.get('id') if status == 200 else status}, link → {target}",
            now_latest.get("id") != backup_id and target != backup_id,
        )


def delete(api: Api, backup_id: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", api.ports[0], timeout=30)
    try:
        conn.request("DELETE", f"/api/backup/{backup_id}", headers=auth_headers(api.token))
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def log_summary(text: str) -> list[str]:
    """`level logger: message — last line of the traceback` of the WARNING/ERROR JSON lines, distinct."""
    seen: dict[str, None] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("level") not in ("WARNING", "ERROR", "CRITICAL"):
            continue
        last = (record.get("exc_info") or "").strip().splitlines()[-1:] or [""]
        entry = f"{record['level']} {record.get('logger')}: {record.get('message')}"
        seen[entry + (f" — {last[0][:200]}" if last[0] else "")] = None
    return list(seen)


# --- the whole -------------------------------------------------------------------------------------------


@dataclass
class Context:
    tmp: Path
    root: Path
    env: dict[str, str]
    dbname: str
    fleet: Fleet
    servers: list[Server]
    worker: WorkerProcess
    api: Api
    report: Report
    mode_file: Path

    def mode(self, mode: str) -> None:
        self.mode_file.write_text(mode)


SCENARIOS = {
    "a": ("(a) worker SIGKILLed mid-run", scenario_worker_killed),
    "b": ("(b) PostgreSQL restarted under load", scenario_postgres_restart),
    "c": ("(c) Redis stopped", scenario_redis_stopped),
    "d": ("(d) backup root full", scenario_disk_full),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="a,b,c,d", help="comma list of scenarios (a,b,c,d)")
    args = parser.parse_args()
    chosen = [key.strip() for key in args.only.split(",") if key.strip() in SCENARIOS]
    if os.geteuid() != 0:
        print("faults.py needs root (tmpfs mount, pg_ctlcluster, redis-server)", file=sys.stderr)
        return 2
    report = Report("Faults on PostgreSQL + Redis: 2 × `serve --no-worker` + `backup_worker`")
    results: list[Scenario] = []
    try:
        with (
            bench_tmpdir("faults-") as tmp,
            tmpfs(tmp / "root", TMPFS_SIZE) as root,
            production_stores("backup_faults") as (dbname, db_url, redis_url),
            Fleet() as fleet,
        ):
            script = tmp / "fault-backup.sh"
            script.write_text(SCRIPT)
            script.chmod(0o755)
            mode_file = tmp / "mode"
            mode_file.write_text("quick")
            env = server_env(
                tmp,
                BACKUP_ROOT=str(root),
                DATABASE_URL=db_url,
                REDIS_URL=redis_url,
                BACKUP_SCRIPT=str(script),
                FAULT_MODE_FILE=str(mode_file),
                RATE_LIMIT="1000000/15m",
                BACKUP_RUN_TIMEOUT="180",
                FAULTS_BENCH_OWNER=str(os.getpid()),
            )
            migrate(env)
            worker = fleet.add(WorkerProcess(tmp, env, "worker-1").start())
            servers = [fleet.add(Server(tmp, env, ["--no-worker"])) for _ in range(2)]
            for server in servers:
                server.start()
            api = Api([server.port for server in servers], token_for(env, "faults"))
            ctx = Context(tmp, root, env, dbname, fleet, servers, worker, api, report, mode_file)
            # One completed backup first, so `latest` exists for (d).
            status, body = api.create("faults: first")
            first = api.wait_run(body["run"]["id"], {"succeeded", "failed"}, 60) if status == 202 else None
            if not first or first["status"] != "succeeded":
                raise RuntimeError(f"the first backup did not succeed: {status} {first}\n{worker.log()}")
            for key in chosen:
                title, function = SCENARIOS[key]
                scenario = Scenario(title)
                results.append(scenario)
                started = time.monotonic()
                try:
                    function(ctx, scenario)
                except Exception as exc:
                    scenario.error = f"{type(exc).__name__}: {exc}"
                scenario.checks.append(("duration", f"{time.monotonic() - started:.0f} s", True))
            logs = {
                f"{path.stem}": path.read_text(errors="replace")
                for path in [
                    *(w.log_path for w in fleet.items if isinstance(w, WorkerProcess)),
                    *(s.log_path for s in servers),
                ]
            }
    finally:
        ensure_pg_started()
        ensure_redis_started()
        kill_leftovers()
    print("| scenario | check | evidence | ok |")
    print("| --- | --- | --- | --- |")
    for scenario in results:
        for what, evidence, ok in scenario.checks:
            mark = "yes" if ok else "**NO**"
            print(f"| {scenario.name} | {what} | {evidence.replace('|', '/')} | {mark} |")
        if scenario.error:
            print(f"| {scenario.name} | error | {scenario.error.replace('|', '/')[:400]} | **NO** |")
    print()
    for scenario in results:
        report.add(scenario.name, "pass" if scenario.passed else "FAIL", "pass", scenario.passed)
    report.note(
        f"stores: PostgreSQL {PG_VERSION} on 127.0.0.1:5432 (fresh database, dropped), "
        f"Redis 127.0.0.1:6379 db 7; BACKUP_ROOT a {TMPFS_SIZE} tmpfs"
    )
    print(report.render())
    failed = [scenario for scenario in results if not scenario.passed]
    if failed:
        for name, text in logs.items():
            summary = log_summary(text)
            if summary:
                print(
                    f"\n#### {name}: warnings and errors in its log (distinct, last 8)\n\n```\n"
                    + "\n".join(summary[-8:])
                    + "\n```"
                )
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
