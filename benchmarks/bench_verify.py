"""Verification of a generated ~2 GiB backup: quick verify vs `sha256sum` of the same files in the same run,
deep verify (archives decompressed and walked, the dump checked and, unless --no-restore-test, restored into a
scratch database), each file read once, and the RSS growth of the verifying process.

Run: .venv/bin/python benchmarks/bench_verify.py [--rounds 3] [--no-restore-test]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, BinaryIO

from _common import Report, RssSampler, bench_tmpdir, median

from backups.verification.checks import Verdict, verify_backup
from backups.verification.pg import Pg, PgError

MIB = 1 << 20
DUMP_MIB = 1024
UPLOADS_MIB = 1024
APP_MIB = 128
SERVER_URL = os.environ.get("RESTORE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

DUMP_HEAD = """--
-- PostgreSQL database dump
--

-- Dumped from database version 15
-- Dumped by pg_dump version 15

SET statement_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);

CREATE TABLE public.bench_rows (id bigint NOT NULL, name text, payload text);

COPY public.bench_rows (id, name, payload) FROM stdin;
"""
DUMP_TAIL = """\\.


CREATE INDEX bench_rows_id ON public.bench_rows USING btree (id);

--
-- PostgreSQL database dump complete
--

"""


def write_dump(path: Path, mib: int) -> int:
    """A plain dump in pg_dump's shape, `mib` MiB of COPY rows; returns the row count."""
    rows = 0
    filler = "p" * 150
    with open(path, "w") as out:
        out.write(DUMP_HEAD)
        written = 0
        while written < mib * MIB:
            block = "".join(f"{rows + i}\tname {rows + i}\t{filler}\n" for i in range(5000))
            rows += 5000
            out.write(block)
            written += len(block)
        out.write(DUMP_TAIL)
    return rows


def write_archive(path: Path, source: Path, compresslevel: int) -> None:
    with tarfile.open(path, "w:gz", compresslevel=compresslevel) as archive:
        archive.add(source, arcname=source.name)


def make_backup(tmp: Path) -> Path:
    folder = tmp / "backup-20260101_030000"
    (folder / "configs").mkdir(parents=True)
    (folder / "system-info").mkdir()
    uploads = tmp / "uploads"
    uploads.mkdir()
    for index in range(UPLOADS_MIB // 64):  # incompressible, like photos
        (uploads / f"photo-{index:03d}.jpg").write_bytes(os.urandom(64 * MIB))
    app = tmp / "app"
    app.mkdir()
    for index in range(APP_MIB // 16):  # hex text: compresses about 2:1, so inflating it is real work
        (app / f"module-{index:03d}.js").write_bytes(os.urandom(8 * MIB).hex().encode())
    write_dump(folder / "beauty_platform_new.sql", DUMP_MIB)
    write_archive(folder / "images-uploads.tar.gz", uploads, 1)
    write_archive(folder / "beauty-platform.tar.gz", app, 6)
    (folder / "configs" / "app.env").write_text("NODE_ENV=production\n")
    (folder / "system-info" / "uname.txt").write_text("Linux bench\n")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    manifest = subprocess.run(["sha256sum", "--", *files], cwd=folder, capture_output=True, check=True).stdout
    (folder / "MANIFEST.sha256").write_bytes(manifest)
    return folder


def listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


class CountingOpener:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.opens: dict[str, int] = {}
        self.bytes: dict[str, int] = {}

    def __call__(self, rel: str) -> BinaryIO:
        self.opens[rel] = self.opens.get(rel, 0) + 1
        opener = self

        class Counting:
            def __init__(self) -> None:
                self.handle = open(opener.folder / rel, "rb", buffering=0)  # noqa: SIM115

            def read(self, size: int = -1) -> bytes:
                data = self.handle.read(size)
                opener.bytes[rel] = opener.bytes.get(rel, 0) + len(data)
                return data

            def __enter__(self) -> Counting:
                return self

            def __exit__(self, *exc: object) -> None:
                self.handle.close()

        return Counting()  # type: ignore[return-value]  # a duck-typed BinaryIO


def sha256sum_seconds(folder: Path, files: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(["sha256sum", "--", *files], cwd=folder, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def timed_verify(folder: Path, **kwargs: Any) -> tuple[float, float, Verdict, CountingOpener]:
    opener = CountingOpener(folder)
    files = listing(folder)
    with RssSampler(os.getpid()) as rss:
        started = time.perf_counter()
        verdict = verify_backup(files, opener, **kwargs)
        seconds = time.perf_counter() - started
    return seconds, rss.growth_mb, verdict, opener


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-restore-test", action="store_true")
    args = parser.parse_args()
    report = Report("Verification: quick and deep on a generated ~2 GiB backup")
    with bench_tmpdir("bench-verify-") as tmp:
        started = time.perf_counter()
        folder = make_backup(tmp)
        files = listing(folder)
        total = sum(size for _, size in files)
        big = ", ".join(f"{path} {size / MIB:.0f} MiB" for path, size in files if size > MIB)
        report.note(
            f"backup generated in {time.perf_counter() - started:.0f} s: {len(files)} files, "
            f"{total / (1 << 30):.2f} GiB ({big})"
        )
        names = [path for path, _ in files if path != "MANIFEST.sha256"]
        sha256sum_seconds(folder, names)  # warm the page cache: both sides then read from memory

        sums: list[float] = []
        quicks: list[float] = []
        quick_growth: list[float] = []
        for _ in range(args.rounds):
            sums.append(sha256sum_seconds(folder, names))
            seconds, growth, verdict, _ = timed_verify(folder, level="quick")
            if not verdict.ok:
                raise RuntimeError(f"quick verify failed: {verdict.problems}")
            quicks.append(seconds)
            quick_growth.append(growth)
        ratio = median(quicks) / median(sums)
        report.add(
            f"`sha256sum` of the files, median of {args.rounds}",
            f"{median(sums):.2f} s ({total / median(sums) / 1e6:.0f} MB/s)",
        )
        report.add(
            f"quick verify, median of {args.rounds}",
            f"{median(quicks):.2f} s ({total / median(quicks) / 1e6:.0f} MB/s)",
        )
        report.add("quick verify / sha256sum", f"{ratio:.2f}×", "≤ 1.2×", ratio <= 1.2)
        report.add(
            "quick verify: RSS growth (max of rounds)",
            f"{max(quick_growth):.1f} MB",
            "< 50 MB",
            max(quick_growth) < 50,
        )

        seconds, growth, verdict, opener = timed_verify(folder, level="deep")
        once = all(opener.opens.get(p) == 1 for p, _ in files) and all(
            opener.bytes.get(p, 0) == size for p, size in files
        )
        report.add("deep verify (no restore-test)", f"{seconds:.2f} s ({total / seconds / 1e6:.0f} MB/s)")
        report.add(
            "deep verify: each file opened once, every byte read once",
            "yes" if once else "no",
            "each file once",
            once,
        )
        report.add("deep verify: RSS growth", f"{growth:.1f} MB", "< 50 MB", growth < 50)
        if not verdict.ok:
            report.note(f"deep verify problems: {verdict.problems}")

        if not args.no_restore_test:
            try:
                Pg.from_url(SERVER_URL).connect().close()
            except PgError as exc:
                report.note(f"restore-test skipped: {exc}")
            else:
                seconds, growth, verdict, opener = timed_verify(
                    folder, level="deep", restore_test_url=SERVER_URL
                )
                once = all(opener.opens.get(p) == 1 for p, _ in files)
                [database] = verdict.databases
                report.add("deep verify with restore-test of the dump", f"{seconds:.2f} s")
                report.add(
                    "  restore-test: tables / rows / seconds",
                    f"{len(database.tables)} / {database.rows:,} / {database.seconds:.1f} s",
                    "ok",
                    database.ok,
                )
                report.add(
                    "deep verify with restore-test: each file opened once",
                    "yes" if once else "no",
                    "each file once",
                    once,
                )
                report.add(
                    "deep verify with restore-test: RSS growth (this process)",
                    f"{growth:.1f} MB",
                    "< 50 MB",
                    growth < 50,
                )
    report.note(
        "page cache warm for both sides; sha256sum is coreutils' (no SHA-NI here), Python's hashlib "
        "uses OpenSSL"
    )
    print(report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
