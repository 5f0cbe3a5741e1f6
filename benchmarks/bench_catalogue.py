"""Catalogue scaling: GET /api/backup/list latency with 100, 1,000 and 10,000 backup folders, beside
GET /health, and the in-process cost of catalogue_sync() (first and unchanged re-sync) for 10,000 folders.

Run: .venv/bin/python benchmarks/bench_catalogue.py
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from _common import (
    PROJECT,
    Report,
    Server,
    admin_token,
    auth_headers,
    bench_tmpdir,
    median,
    migrate,
    running,
    server_env,
)

SIZES = (100, 1_000, 10_000)
REQUESTS = 50
WARMUP = 5
FILES = {
    "database.sql": b"-- PostgreSQL dump\nCREATE TABLE t (id int);\n" * 20,
    "uploads.tar.gz": b"\x1f\x8b" + b"u" * 2000,
    "system-info.txt": b"Linux bench 6.1 x86_64\n" * 10,
    "configs/app.env": b"DATABASE_URL=postgres://app@db/app\nDEBUG=0\n",
    "configs/nginx.conf": b"server { listen 80; }\n",
}


def make_root(root: Path, count: int) -> None:
    """`count` folders backup-YYYYmmdd_HHMMSS (distinct, 7 minutes apart) with FILES in each."""
    root.mkdir(parents=True)
    start = datetime(2023, 1, 1, 3, 0, 0)
    for index in range(count):
        make_folder(root / f"backup-{start + timedelta(minutes=7 * index):%Y%m%d_%H%M%S}")


def make_folder(folder: Path) -> None:
    (folder / "configs").mkdir(parents=True)
    for rel, content in FILES.items():
        (folder / rel).write_bytes(content)


def timed_get(conn: http.client.HTTPConnection, path: str, token: str | None) -> tuple[float, bytes]:
    started = time.perf_counter()
    conn.request("GET", path, headers=auth_headers(token))
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
    return elapsed, body


def measure_server(tmp: Path, root: Path, count: int) -> dict[str, float]:
    env = server_env(tmp, BACKUP_ROOT=str(root))
    migrate(env)
    token = admin_token(env)
    with running(Server(tmp, env)) as server:
        startup = server.start()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
        try:
            prime, body = timed_get(conn, "/api/backup/list", token)
            listed = json.loads(body)["count"]
            if listed != count:
                raise RuntimeError(f"list says {listed} backups, {count} on disk")
            list_path = "/api/backup/list?page_size=50"
            for _ in range(WARMUP):
                timed_get(conn, list_path, token)
                timed_get(conn, "/health", None)
            list_times: list[float] = []
            health_times: list[float] = []
            for _ in range(REQUESTS):  # interleaved, so machine noise hits both alike
                list_times.append(timed_get(conn, list_path, token)[0])
                health_times.append(timed_get(conn, "/health", None)[0])
        finally:
            conn.close()
    return {"startup": startup, "prime": prime, "list": median(list_times), "health": median(health_times)}


def measure_sync_in_process(
    tmp: Path, root: Path
) -> tuple[float, float, float, dict[str, int], dict[str, int]]:
    """Django set up in this process on a fresh SQLite database; the two full-sync timings, and a
    request's freshness check after one folder was added."""
    os.environ.update(server_env(tmp, BACKUP_ROOT=str(root)))
    os.environ["DJANGO_SETTINGS_MODULE"] = "backup_platform.settings"
    sys.path.insert(0, str(PROJECT))
    import django

    django.setup()
    from django.core.management import call_command

    from backups.catalogue import sync

    call_command("migrate", verbosity=0, interactive=False)
    started = time.perf_counter()
    first_result = sync.sync_all()
    first = time.perf_counter() - started
    started = time.perf_counter()
    second_result = sync.sync_all()
    second = time.perf_counter() - started
    make_folder(root / "backup-20991231_235900")
    started = time.perf_counter()
    sync.ensure_fresh()
    fresh = time.perf_counter() - started
    return first, second, fresh, first_result, second_result


def main() -> int:
    report = Report("Catalogue: list latency and sync cost")
    with bench_tmpdir("bench-catalogue-") as tmp:
        figures: dict[int, dict[str, float]] = {}
        for count in SIZES:
            root = tmp / f"root-{count}"
            started = time.perf_counter()
            make_root(root, count)
            made = time.perf_counter() - started
            (tmp / f"srv-{count}").mkdir()
            figures[count] = f = measure_server(tmp / f"srv-{count}", root, count)
            label = f"{count:,} folders"
            report.add(f"{label}: server start → /health 200 (incl. start-up sync)", f"{f['startup']:.2f} s")
            report.add(f"{label}: first GET /api/backup/list (prime)", f"{f['prime'] * 1000:.1f} ms")
            report.add(
                f"{label}: GET /api/backup/list?page_size=50, median of {REQUESTS}",
                f"{f['list'] * 1000:.2f} ms",
            )
            report.add(f"{label}: GET /health, median of {REQUESTS}", f"{f['health'] * 1000:.2f} ms")
            report.note(f"{count:,} folders × {len(FILES)} files created in {made:.1f} s")

        small, big = figures[SIZES[0]], figures[SIZES[-1]]
        ratio_small = big["list"] / small["list"]
        ratio_health = big["list"] / big["health"]
        report.add(
            f"list median {SIZES[-1]:,} / list median {SIZES[0]:,}",
            f"{ratio_small:.2f}×",
            "≤ 1.1×",
            ratio_small <= 1.1,
        )
        report.add(
            f"list median / /health median at {SIZES[-1]:,}",
            f"{ratio_health:.2f}×",
            "≤ 3×",
            ratio_health <= 3,
        )

        (tmp / "inproc").mkdir()
        biggest = tmp / f"root-{SIZES[-1]}"
        first, second, fresh, first_result, second_result = measure_sync_in_process(tmp / "inproc", biggest)
        label = f"in-process full sync, {SIZES[-1]:,} folders"
        report.add(f"{label}, empty DB", f"{first:.2f} s", "≤ 1.0 s", first <= 1.0)
        report.add(f"{label} again, nothing changed", f"{second * 1000:.0f} ms", "≤ 100 ms", second <= 0.1)
        report.add("re-sync / first sync", f"{second / first:.1%}", "< 20%", second / first < 0.2)
        report.add(
            f"a request's freshness check after one folder was added, {SIZES[-1]:,} folders",
            f"{fresh * 1000:.0f} ms",
        )
        report.note(f"first sync {first_result}, re-sync {second_result}")
    print(report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
