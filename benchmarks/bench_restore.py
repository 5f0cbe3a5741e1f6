"""Restoring a generated ~1 GiB plain dump into a fresh database: restore_dump() (streamed by Python into psql
inside one transaction, then every table counted) vs `psql -f` of the same file, in the same run, and the peak
RSS of the restoring process and of its psql.

Run: .venv/bin/python benchmarks/bench_restore.py [--rounds 2] [--mib 1024]
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import Report, RssSampler, bench_tmpdir, median, rss_kib
from bench_verify import write_dump

from backups.restore.database import restore_dump

HOST, PORT = "127.0.0.1", "5432"
PSQL = ["psql", "-X", "-q", "-h", HOST, "-p", PORT, "-U", "postgres"]


def psql(sql: str, database: str = "postgres") -> None:
    subprocess.run(
        [*PSQL, "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql], check=True, stdout=subprocess.DEVNULL
    )


class ChildrenPeak:
    """The largest RSS any child of this process reached (the psql that restore_dump starts)."""

    def __init__(self) -> None:
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ChildrenPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        me = str(os.getpid())
        while not self._stop.wait(0.05):
            for tid in os.listdir(f"/proc/{me}/task"):
                try:
                    with open(f"/proc/{me}/task/{tid}/children") as children:
                        pids = children.read().split()
                except OSError:
                    continue
                for pid in pids:
                    self.peak_kib = max(self.peak_kib, rss_kib(int(pid)))


def run_psql_f(dump: Path, database: str) -> tuple[float, int]:
    started = time.perf_counter()
    process = subprocess.Popen(
        [*PSQL, "-v", "ON_ERROR_STOP=1", "-d", database, "-f", str(dump)], stdout=subprocess.DEVNULL
    )
    with RssSampler(process.pid) as rss:
        code = process.wait()
    if code != 0:
        raise RuntimeError(f"psql -f exited {code}")
    return time.perf_counter() - started, rss.peak_kib


def run_restore_dump(dump: Path, database: str) -> tuple[float, float, float, int, dict[str, int]]:
    url = f"postgresql://postgres@{HOST}:{PORT}/{database}"
    with RssSampler(os.getpid()) as rss, ChildrenPeak() as children, open(dump, "rb") as handle:
        started = time.perf_counter()
        result = restore_dump(url, dump.name, handle, size_bytes=dump.stat().st_size)
        seconds = time.perf_counter() - started
    if not result.ok:
        raise RuntimeError(f"restore_dump failed: {result.error}")
    return seconds, rss.peak_mb, rss.growth_mb, children.peak_kib, result.tables


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mib", type=int, default=1024)
    args = parser.parse_args()
    report = Report(f"Restore: a generated {args.mib} MiB plain dump into a fresh database")
    prefix = f"bsvc_bench_restore_{secrets.token_hex(3)}_"
    made: list[str] = []

    def fresh() -> str:
        name = f"{prefix}{len(made)}"
        psql(f'CREATE DATABASE "{name}" TEMPLATE template0')
        made.append(name)
        return name

    try:
        with bench_tmpdir("bench-restore-") as tmp:
            dump = tmp / "beauty_platform_new.sql"
            started = time.perf_counter()
            rows = write_dump(dump, args.mib)
            size = dump.stat().st_size
            report.note(
                f"dump generated in {time.perf_counter() - started:.0f} s: {size / 1e9:.2f} GB, "
                f"{rows:,} rows in one table with one index (pg_dump's layout)"
            )
            with open(dump, "rb") as warm:  # page cache: both sides read the file from memory
                while warm.read(1 << 24):
                    pass
            psql_times: list[float] = []
            psql_peaks: list[int] = []
            ours: list[float] = []
            peaks: list[float] = []
            growths: list[float] = []
            child_peaks: list[int] = []
            for index in range(args.rounds):
                order = ("psql", "ours") if index % 2 == 0 else ("ours", "psql")
                for side in order:
                    database = fresh()
                    if side == "psql":
                        seconds, peak = run_psql_f(dump, database)
                        psql_times.append(seconds)
                        psql_peaks.append(peak)
                    else:
                        seconds, peak_mb, growth, child_peak, tables = run_restore_dump(dump, database)
                        if tables != {"public.bench_rows": rows}:
                            raise RuntimeError(f"restored counts {tables}, expected {rows}")
                        ours.append(seconds)
                        peaks.append(peak_mb)
                        growths.append(growth)
                        child_peaks.append(child_peak)
                    psql(f'DROP DATABASE "{database}"')
                    made.remove(database)
            ratio = median(ours) / median(psql_times)
            report.add(
                f"`psql -f` of the dump, median of {args.rounds}",
                f"{median(psql_times):.1f} s ({size / median(psql_times) / 1e6:.0f} MB/s)",
            )
            report.add(
                f"restore_dump() incl. target check and row counts, median of {args.rounds}",
                f"{median(ours):.1f} s ({size / median(ours) / 1e6:.0f} MB/s)",
            )
            report.add("restore_dump / psql -f", f"{ratio:.2f}×", "≤ 1.2×", ratio <= 1.2)
            report.add("restore_dump: peak RSS of the restoring process", f"{max(peaks):.0f} MB")
            report.add(
                "restore_dump: RSS growth of the restoring process",
                f"{max(growths):.1f} MB",
                "flat (< 50 MB)",
                max(growths) < 50,
            )
            report.add("restore_dump: peak RSS of its psql", f"{max(child_peaks) / 1024:.0f} MiB")
            report.add("psql -f: peak RSS of psql", f"{max(psql_peaks) / 1024:.0f} MiB")
            report.note(
                "restore_dump runs the dump inside one transaction (BEGIN … COMMIT, see "
                "backups/verification/pg.py); psql -f runs it in autocommit"
            )
    finally:
        for database in made:
            psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    print(report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
