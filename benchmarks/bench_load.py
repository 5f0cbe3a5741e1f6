"""Load on production's stores: two `manage.py serve --no-worker` processes and one `manage.py
backup_worker` on PostgreSQL (a fresh database, dropped at the end) and Redis (db 7, flushed before and
after), 50 concurrent clients for 60 s alternating GET /api/backup/status and GET /api/backup/list across
both processes (rate limit raised) — zero errors expected; then both servers restarted with the default
RATE_LIMIT (200/15m): one client's 201st request inside the window is 429 with Retry-After, whichever
process it lands on.

Run: .venv/bin/python benchmarks/bench_load.py [--clients 50] [--seconds 60]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from _common import (
    ManagedProcess,
    Report,
    Server,
    auth_headers,
    bench_tmpdir,
    manage,
    migrate,
    percentile,
    rss_kib,
    server_env,
)

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 7
ENDPOINTS = ("/api/backup/status", "/api/backup/list")
SEED_BACKUPS = 30
MAX_REQUESTS_PER_CLIENT = 200_000  # a bound besides the time
REQUEST_TIMEOUT = 30.0


# --- production's stores (also used by faults.py) -------------------------------------------------------


def pg_admin(sql: str, dbname: str = "postgres") -> list[tuple]:
    import psycopg

    with psycopg.connect(
        f"postgresql://postgres@127.0.0.1:5432/{dbname}", autocommit=True, connect_timeout=10
    ) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def redis_client():
    import redis

    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_timeout=5)


@contextlib.contextmanager
def production_stores(prefix: str) -> Iterator[tuple[str, str, str]]:
    """A fresh PostgreSQL database and an empty Redis db 7; both cleaned up at the end.
    Yields (database name, DATABASE_URL, REDIS_URL)."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    pg_admin(f'CREATE DATABASE "{name}"')
    with contextlib.suppress(Exception):
        redis_client().flushdb()
    try:
        yield (
            name,
            f"postgres://postgres@127.0.0.1:5432/{name}",
            f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}",
        )
    finally:
        for attempt in range(10):  # PostgreSQL may be on its way back up (faults.py)
            try:
                pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except Exception as exc:
                if attempt == 9:
                    print(f"WARNING: could not drop database {name}: {exc}", file=sys.stderr)
                time.sleep(2)
        with contextlib.suppress(Exception):
            redis_client().flushdb()


def pg_connections(dbname: str) -> int:
    rows = pg_admin(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{dbname}'")
    return int(rows[0][0])


class WorkerProcess(ManagedProcess):
    """`manage.py backup_worker` in its own process group."""

    def __init__(self, tmp: Path, env: dict[str, str], name: str = "worker") -> None:
        super().__init__(env, tmp / f"{name}-{secrets.token_hex(3)}.log")

    def start(self) -> WorkerProcess:
        self.spawn("backup_worker")
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


class Fleet:
    """Everything started, stopped in reverse order at the end whatever happens."""

    def __init__(self) -> None:
        self.items: list[Server | WorkerProcess] = []

    def add(self, item):
        self.items.append(item)
        return item

    def stop_all(self) -> None:
        for item in reversed(self.items):
            with contextlib.suppress(Exception):
                item.stop()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def seed_backups(root: Path, count: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    start = datetime(2025, 1, 1, 3, 0, 0)
    for index in range(count):
        folder = root / f"backup-{start + timedelta(days=index):%Y%m%d_%H%M%S}"
        (folder / "configs").mkdir(parents=True)
        (folder / "database.sql").write_bytes(b"-- dump\n" * (100 + index))
        (folder / "configs" / "app.env").write_bytes(b"APP_ENV=prod\n")
    (root / "latest").symlink_to(f"backup-{start + timedelta(days=count - 1):%Y%m%d_%H%M%S}")


def token_for(env: dict[str, str], user: str) -> str:
    done = manage(env, "create_admin_token", user, "--ttl", "7200")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"create_admin_token failed:\n{done.stderr[-2000:]}")
    return lines[-1].strip()


# --- load ---------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    endpoint: str
    port: int
    outcome: str  # "200", "503", "ConnectionResetError", ...
    seconds: float


@dataclass
class ClientLog:
    samples: list[Sample] = field(default_factory=list)
    first_error: str = ""


def load_client(index: int, ports: list[int], token: str, stop_at: float, log: ClientLog) -> None:
    connections: dict[int, http.client.HTTPConnection] = {}
    headers = auth_headers(token)
    for k in range(MAX_REQUESTS_PER_CLIENT):
        if time.monotonic() >= stop_at:
            break
        endpoint = ENDPOINTS[k % 2]
        port = ports[(k // 2 + index) % len(ports)]
        conn = connections.get(port) or http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        connections[port] = conn
        started = time.perf_counter()
        try:
            conn.request("GET", endpoint, headers=headers)
            response = conn.getresponse()
            body = response.read()
            outcome = str(response.status)
            if response.status != 200 and not log.first_error:
                log.first_error = f"{endpoint} on :{port}: {response.status} {body[:200]!r}"
            if response.will_close:
                conn.close()
                connections.pop(port, None)
        except (OSError, http.client.HTTPException) as exc:
            outcome = type(exc).__name__
            if not log.first_error:
                log.first_error = f"{endpoint} on :{port}: {exc!r}"
            conn.close()
            connections.pop(port, None)
        log.samples.append(Sample(endpoint, port, outcome, time.perf_counter() - started))
    for conn in connections.values():
        conn.close()


def run_load(
    ports: list[int], token: str, clients: int, seconds: float
) -> tuple[list[Sample], list[str], float]:
    logs = [ClientLog() for _ in range(clients)]
    stop_at = time.monotonic() + seconds
    threads = [
        threading.Thread(target=load_client, args=(i, ports, token, stop_at, logs[i]), daemon=True)
        for i in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + REQUEST_TIMEOUT + 30)
    elapsed = time.perf_counter() - started
    samples = [sample for log in logs for sample in log.samples]
    return samples, [log.first_error for log in logs if log.first_error], elapsed


def get(port: int, path: str, token: str | None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", path, headers=auth_headers(token))
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def rate_limit_probe(ports: list[int], token: str, limit: int = 200) -> dict:
    """`limit` requests alternating between the processes, then a few more: the first past the limit must
    be 429 with Retry-After, on whichever process."""
    statuses: list[tuple[int, int, dict[str, str]]] = []
    for k in range(limit + 4):
        port = ports[k % len(ports)]
        status, headers, _ = get(port, "/api/backup/status", token)
        statuses.append((port, status, headers))
    return {
        "ok_within": sum(1 for _, status, _ in statuses[:limit] if status == 200),
        "first_over": statuses[limit],
        "after": statuses[limit + 1 :],
        "remaining_seen": [h.get("x-ratelimit-remaining") for _, _, h in statuses[:limit]],
        "limit_header": statuses[0][2].get("x-ratelimit-limit"),
        "health": get(ports[0], "/health", None)[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    report = Report(
        f"Load: {args.clients} clients × {args.seconds:.0f} s on 2 × `serve --no-worker` + "
        "`backup_worker`, PostgreSQL + Redis"
    )
    latency_lines: list[str] = []
    with bench_tmpdir("bench-load-") as tmp, production_stores("backup_bench") as (dbname, db_url, redis_url):
        root = tmp / "backups"
        seed_backups(root, SEED_BACKUPS)
        base_env = server_env(
            tmp, BACKUP_ROOT=str(root), DATABASE_URL=db_url, REDIS_URL=redis_url, RATE_LIMIT="1000000/15m"
        )
        migrate(base_env)
        with Fleet() as fleet:
            worker = fleet.add(WorkerProcess(tmp, base_env).start())
            servers = [fleet.add(Server(tmp, base_env, ["--no-worker"])) for _ in range(2)]
            for server in servers:
                server.start()
            ports = [server.port for server in servers]
            token = token_for(base_env, "bench-load")
            for port in ports:  # warm-up (first catalogue sync, connections)
                for endpoint in ENDPOINTS:
                    status, _, body = get(port, endpoint, token)
                    if status != 200:
                        raise RuntimeError(f"warm-up {endpoint} on :{port}: {status} {body[:300]!r}")
            listed = json.loads(get(ports[0], "/api/backup/list", token)[2])["count"]
            rss_before = {server.port: rss_kib(server.pid) for server in servers}
            samples, first_errors, elapsed = run_load(ports, token, args.clients, args.seconds)
            rss_after = {server.port: rss_kib(server.pid) for server in servers}
            connections = pg_connections(dbname)
            worker_alive = worker.alive()

            total = len(samples)
            errors = [s for s in samples if s.outcome != "200"]
            outcomes = Counter(s.outcome for s in samples)
            latency_lines += [
                "| endpoint | process | requests | errors | p50 ms | p99 ms | max ms |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            by_key: dict[tuple[str, str], list[Sample]] = defaultdict(list)
            for sample in samples:
                by_key[(sample.endpoint, f":{sample.port}")].append(sample)
                by_key[(sample.endpoint, "both")].append(sample)
            for endpoint in ENDPOINTS:
                for where in [f":{port}" for port in ports] + ["both"]:
                    rows = by_key[(endpoint, where)]
                    ok_times = [s.seconds * 1000 for s in rows if s.outcome == "200"]
                    bad = sum(1 for s in rows if s.outcome != "200")
                    latency_lines.append(
                        f"| `GET {endpoint}` | {where} | {len(rows)} | {bad} | "
                        f"{percentile(ok_times, 50):.1f} | "
                        f"{percentile(ok_times, 99):.1f} | {max(ok_times, default=float('nan')):.1f} |"
                    )
            report.add(
                "requests in the window (both endpoints, both processes)",
                f"{total} in {elapsed:.1f} s ({total / elapsed:.0f}/s)",
            )
            report.add("errors (non-200 or transport)", f"{len(errors)} ({dict(outcomes)})", "0", not errors)
            report.add("backups listed", str(listed), str(SEED_BACKUPS), listed == SEED_BACKUPS)
            report.add(
                "serve RSS before → after (MB)",
                ", ".join(
                    f":{port} {rss_before[port] / 1024:.0f} → {rss_after[port] / 1024:.0f}" for port in ports
                ),
            )
            # Each serve process keeps one connection per kept request thread (backups.asgi_threads: 8);
            # the worker process holds a few of its own. More than that would be connections piling up.
            report.add(
                "PostgreSQL connections to the database after the load",
                str(connections),
                "≤ 24 (2 × 8 kept + the worker's)",
                connections <= 24,
            )
            report.add("backup_worker still running", str(worker_alive), "True", worker_alive)
            for line in first_errors[:3]:
                report.note(f"first error of a client: {line}")

            # --- the default rate limit, shared by both processes through Redis --------------------------
            for server in servers:
                server.stop()
            with contextlib.suppress(Exception):
                redis_client().flushdb()
            limited_env = dict(base_env)
            limited_env.pop("RATE_LIMIT")  # the service's default, 200/15m
            limited = [fleet.add(Server(tmp, limited_env, ["--no-worker"])) for _ in range(2)]
            for server in limited:
                server.start()
            lports = [server.port for server in limited]
            probe = None
            for attempt in range(2):  # a fixed window may turn over during the probe: then once more
                user = f"ratelimit-{attempt}-{secrets.token_hex(3)}"
                probe = rate_limit_probe(lports, token_for(limited_env, user))
                remaining = [int(v) for v in probe["remaining_seen"] if v is not None]
                if all(a >= b for a, b in zip(remaining, remaining[1:], strict=False)):
                    break
                report.note("the rate-limit window turned over during the probe; probed again, new user")
            assert probe is not None
            port, status, headers = probe["first_over"]
            which = "A" if port == lports[0] else "B"
            after = ", ".join(f"{'A' if p == lports[0] else 'B'}:{s}" for p, s, _ in probe["after"])
            retry_after = headers.get("retry-after")
            report.add(
                "default RATE_LIMIT: requests 1–200 alternating A/B that got 200",
                f"{probe['ok_within']} (X-RateLimit-Limit {probe['limit_header']})",
                "200",
                probe["ok_within"] == 200,
            )
            report.add(
                "request 201",
                f"{status} on process {which}, Retry-After {retry_after}",
                "429 with Retry-After",
                status == 429 and bool(retry_after),
            )
            report.add(
                "requests 202–205 (alternating)",
                after,
                "all 429",
                all(s == 429 for _, s, _ in probe["after"]) and any(p != port for p, _, _ in probe["after"]),
            )
            report.add("/health while limited", str(probe["health"]), "200 (exempt)", probe["health"] == 200)
    print("\n".join(latency_lines))
    print()
    print(report.render())
    return 0 if all(met != "**NO**" for *_, met in report.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
