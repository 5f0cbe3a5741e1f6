"""Catalogue scaling: GET /api/backup/list latency with 100, 1,000 and 10,000 backup folders, beside
GET /health, and the in-process cost of catalogue_sync() (first and unchanged re-sync) for 10,000 folders.

Run: .venv/bin/python benchmarks/bench_catalogue.py
     .venv/bin/python benchmarks/bench_catalogue.py --sync-only [--before REV]

`--sync-only` measures only the in-process syncs of 10,000 folders, with their parts (the walk, the
rows, the write); `--before REV` measures the code of commit REV on the same tree in the same run,
alternating with this code, best of two rounds each (the machine may be shared). Wall and CPU time.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from _common import (
    PROJECT,
    PYTHON,
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


ROUNDS = 2


def _timed(call: Callable[[], Any]) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = call()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def sync_child(code: Path, tmp: Path, root: Path) -> dict[str, float]:
    """The in-process syncs of the code in `code` (this tree or an older commit's) on a fresh SQLite
    database: the first and the unchanged re-syncs, then the parts of a first sync timed one by one."""
    os.environ.update(server_env(tmp, BACKUP_ROOT=str(root)))
    os.environ["DJANGO_SETTINGS_MODULE"] = "backup_platform.settings"
    sys.path.insert(0, str(code))
    for module in [name for name in sys.modules if name == "backups" or name.startswith("backups.")]:
        del sys.modules[module]
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import transaction

    from backups.catalogue import scan, sidecar, sync
    from backups.catalogue.models import Backup

    call_command("migrate", verbosity=0, interactive=False)
    figures: dict[str, float] = {}
    figures["first"], figures["first_cpu"], _ = _timed(sync.sync_all)
    again = sorted(_timed(sync.sync_all)[:2] for _ in range(3))
    figures["again"], figures["again_cpu"] = again[1]  # the median of three
    checks = sorted(
        _timed(lambda: scan.list_and_scan(root, lambda name, signature: False))[:2] for _ in range(3)
    )
    figures["checks"], figures["checks_cpu"] = checks[1]  # the disk's part of a re-sync
    forget = getattr(scan, "forget_seen", lambda: None)  # older code kept nothing between syncs
    forget()
    figures["walk"], figures["walk_cpu"], (_, found) = _timed(
        lambda: scan.list_and_scan(root, lambda n, s: True)
    )

    def rows():  # type: ignore[no-untyped-def]
        walked = [(name, folder, sidecar.read_metadata(root, name)) for name, folder in found.items()]
        return sync._catalogue_rows(walked)

    figures["rows"], figures["rows_cpu"], _ = _timed(rows)
    figures["write"] = figures["first"] - figures["walk"] - figures["rows"]
    figures["write_cpu"] = figures["first_cpu"] - figures["walk_cpu"] - figures["rows_cpu"]
    figures["rows_in_db"] = Backup.objects.count()
    with transaction.atomic():
        Backup.objects.all().delete()
    return figures


def compare_syncs(tmp: Path, root: Path, before: str | None) -> Report:
    report = Report(f"Catalogue: in-process syncs of {SIZES[-1]:,} folders")
    codes = {"after": PROJECT}
    if before:
        old = tmp / "before-code"
        old.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(PROJECT), "archive", before], capture_output=True, check=True
        ).stdout
        archive_path = tmp / "before.tar"
        archive_path.write_bytes(archive)
        with tarfile.open(archive_path) as tar:
            tar.extractall(old, filter="data")
        codes = {"before": old, "after": PROJECT}
    best: dict[str, dict[str, float]] = {}
    for round_ in range(ROUNDS):
        for label, code in codes.items():
            work = tmp / f"sync-{label}-{round_}"
            work.mkdir()
            done = subprocess.run(
                [PYTHON, __file__, "--sync-child", str(code), str(work), str(root)],
                capture_output=True,
                text=True,
                check=False,
                timeout=900,
            )
            if done.returncode != 0:
                raise RuntimeError(f"sync child ({label}) failed:\n{done.stderr[-3000:]}")
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            kept = best.get(label, figures)
            # The parts of the fastest first sync; the fastest re-sync of any round.
            best[label] = {
                **(figures if figures["first"] <= kept["first"] else kept),
                "again": min(figures["again"], kept["again"]),
                "again_cpu": min(figures["again_cpu"], kept["again_cpu"]),
                "checks": min(figures["checks"], kept["checks"]),
                "checks_cpu": min(figures["checks_cpu"], kept["checks_cpu"]),
            }
    for label, f in best.items():
        name = f"{label} ({before})" if label == "before" else label
        if f["rows_in_db"] != SIZES[-1]:
            raise RuntimeError(f"{name}: {f['rows_in_db']} rows for {SIZES[-1]} folders")
        report.add(
            f"{name}: first full sync, empty database (CPU)",
            f"{f['first']:.2f} s ({f['first_cpu']:.2f} s)",
            "≤ 1.0 s",
            f["first"] <= 1.0,
        )
        report.add(
            f"{name}: full sync again, nothing changed, median of 3 (CPU)",
            f"{f['again'] * 1000:.0f} ms ({f['again_cpu'] * 1000:.0f} ms)",
            "≤ 100 ms",
            f["again"] <= 0.1,
        )
        report.add(
            f"{name}: part of the re-sync: listing the root and checking each folder (CPU)",
            f"{f['checks'] * 1000:.0f} ms ({f['checks_cpu'] * 1000:.0f} ms)",
        )
        report.add(f"{name}: part: walking every folder (CPU)", f"{f['walk']:.2f} s ({f['walk_cpu']:.2f} s)")
        report.add(f"{name}: part: metadata and rows (CPU)", f"{f['rows']:.2f} s ({f['rows_cpu']:.2f} s)")
        report.add(
            f"{name}: part: the write and the rest (first − walk − rows) (CPU)",
            f"{f['write']:.2f} s ({f['write_cpu']:.2f} s)",
        )
    report.note(f"best of {ROUNDS} rounds, the codes alternating; {len(FILES)} files per folder")
    return report


def main() -> int:
    if sys.argv[1:2] == ["--sync-child"]:
        code, work, root = (Path(arg) for arg in sys.argv[2:5])
        print(json.dumps(sync_child(code, work, root)))
        return 0
    if "--sync-only" in sys.argv:
        before = sys.argv[sys.argv.index("--before") + 1] if "--before" in sys.argv else None
        with bench_tmpdir("bench-catalogue-") as tmp:
            root = tmp / "root"
            started = time.perf_counter()
            make_root(root, SIZES[-1])
            made = time.perf_counter() - started
            time.sleep(2.5)  # older than a listing's racy window, as folders of earlier runs are
            report = compare_syncs(tmp, root, before)
            report.note(f"{SIZES[-1]:,} folders created in {made:.1f} s")
        print(report.render())
        return 0
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
