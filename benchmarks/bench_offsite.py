"""Off-site upload to a real S3 server (SeaweedFS on loopback): a generated 2 GiB backup sent by
`upload_backup` (plain and age-encrypted) beside boto3's own `upload_file` of the same files, in the same
run and interleaved; RSS growth of this process during each upload (sampled every 50 ms); the staging
file's disk cost; a second, unchanged backup; and an encrypted upload cancelled half-way then resumed.

Run: .venv/bin/python benchmarks/bench_offsite.py [--repeats N]
The 2 GiB of data are written once to /tmp/bench-offsite-cache and reused by later runs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3.s3.transfer
from _common import Report, RssSampler, bench_tmpdir, cpu_seconds, median  # puts the project on sys.path
from pyrage import x25519

from backups.offsite import Cancelled, StoreSettings, upload_backup
from backups.offsite.store import Store
from backups.offsite.upload import DEFAULT_CONCURRENCY, DEFAULT_PART_SIZE
from tests.offsite.seaweed import SeaweedServer

CACHE = Path("/tmp/bench-offsite-cache")
GIB = 1 << 30
MIB = 1 << 20
LAYOUT: dict[str, int] = {
    "database-1.sql.gz": GIB,
    "database-2.sql.gz": 768 * MIB,
    "uploads.tar.gz": 256 * MIB - 4096,
    "configs/app.env": 2_000,
    "system-info/uname.txt": 500,
    "MANIFEST.sha256": 1_596,
}
BUCKET = "bench-offsite"
CANCEL_AT = 70  # percent


def ensure_data() -> Path:
    """Random (incompressible, like compressed dumps) files of LAYOUT's sizes, written once."""
    folder = CACHE / "backup-20261201_030000"
    paths = {folder / rel: size for rel, size in LAYOUT.items()}
    if all(path.is_file() and path.stat().st_size == size for path, size in paths.items()):
        return folder
    shutil.rmtree(CACHE, ignore_errors=True)
    for rel, size in LAYOUT.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            written = 0
            while written < size:
                piece = os.urandom(min(4 * MIB, size - written))
                out.write(piece)
                written += len(piece)
    return folder


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Run:
    seconds: float
    rss_growth_mb: float
    result: dict[str, Any]
    staging_peak: int = 0
    cpu_seconds: float = 0.0  # this process and its waited-for children (the encryptor)
    store_cpu_seconds: float = 0.0  # the weed server

    def mb_s(self, size: int) -> float:
        return size / self.seconds / 1e6


class DirectoryPeak:
    """Largest total size of the files in a directory, sampled every 50 ms in a thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DirectoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            total = 0
            try:
                for path in self.directory.iterdir():
                    with contextlib.suppress(FileNotFoundError):
                        total += path.stat().st_size
            except FileNotFoundError:
                continue
            self.peak = max(self.peak, total)


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


STORE_PID = 0  # the weed server's pid, once started


def measured(work: Callable[[], dict[str, Any]], staging: Path | None = None) -> Run:
    staging_watch = DirectoryPeak(staging) if staging is not None else None
    with RssSampler(os.getpid()) as rss:
        if staging_watch is not None:
            staging_watch.__enter__()
        cpu, store_cpu = _cpu(), cpu_seconds(STORE_PID)
        started = time.perf_counter()
        try:
            result = work()
        finally:
            seconds = time.perf_counter() - started
            cpu, store_cpu = _cpu() - cpu, cpu_seconds(STORE_PID) - store_cpu
            if staging_watch is not None:
                staging_watch.__exit__()
    return Run(seconds, rss.growth_mb, result, staging_watch.peak if staging_watch else 0, cpu, store_cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--pinned",
        action="store_true",
        help="SeaweedFS on CPU 0, this process (and its encryptor) on CPU 1: as if the store "
        "were another machine, so that client CPU does not slow the store down",
    )
    args = parser.parse_args()
    title = "Off-site upload to S3 (SeaweedFS on loopback): upload_backup vs boto3 upload_file"
    report = Report(title + (" — store and client on separate CPUs" if args.pinned else ""))
    started = time.perf_counter()
    folder = ensure_data()
    listing = sorted((rel, size) for rel, size in LAYOUT.items())
    total = sum(LAYOUT.values())
    report.note(
        f"data ready in {time.perf_counter() - started:.1f} s ({CACHE}, reused when present): "
        f"{total / GIB:.2f} GiB in {len(LAYOUT)} files"
    )
    hashes = {rel: sha256_of(folder / rel) for rel, _ in listing}  # as a verified MANIFEST.sha256 gives

    def opener(rel: str):
        return open(folder / rel, "rb")

    identity = x25519.Identity.generate()
    recipients = [str(identity.to_public())]

    with bench_tmpdir("bench-offsite-") as tmp, SeaweedServer(tmp / "weed", identities=False) as server:
        global STORE_PID
        assert server.process is not None
        STORE_PID = server.process.pid
        if args.pinned:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", "0", str(STORE_PID)], check=True, stdout=subprocess.DEVNULL
            )
            os.sched_setaffinity(0, {1})  # threads and children started from now on inherit it
        settings = StoreSettings(
            endpoint=server.endpoint, bucket=BUCKET, access_key_id="bench", secret_access_key="bench-secret"
        )
        client = Store(settings)
        client.call("CreateBucket", client.client.create_bucket, Bucket=BUCKET)
        transfer = boto3.s3.transfer.TransferConfig()  # boto3's defaults: 8 MiB parts, 10 threads

        def baseline(prefix: str) -> Callable[[], dict[str, Any]]:
            def work() -> dict[str, Any]:
                for rel, _ in listing:
                    client.client.upload_file(str(folder / rel), BUCKET, f"{prefix}/{rel}", Config=transfer)
                return {}

            return work

        def ours(
            prefix: str,
            backup_id: str,
            *,
            encrypted: bool,
            known: bool,
            should_stop: Callable[[], bool] | None = None,
            on_progress: Callable[[int, str], None] | None = None,
        ) -> Callable[[], dict[str, Any]]:
            def work() -> dict[str, Any]:
                store = StoreSettings(
                    endpoint=server.endpoint,
                    bucket=BUCKET,
                    prefix=prefix,
                    access_key_id="bench",
                    secret_access_key="bench-secret",
                )
                return upload_backup(
                    store,
                    backup_id,
                    listing,
                    opener,
                    metadata={"type": "full"},
                    state_dir=tmp / "state",
                    recipients=recipients if encrypted else [],
                    hashes=hashes if known else None,
                    should_stop=should_stop,
                    on_progress=on_progress,
                ).as_dict()

            return work

        def clean(prefix: str) -> None:
            client.delete_many([item["Key"] for item in client.list(prefix + "/")])

        for path in (folder / rel for rel, _ in listing):  # into page cache, like a fresh backup
            with open(path, "rb") as handle:
                while handle.read(8 * MIB):
                    pass

        modes = {  # name: (encrypted, hashes given)
            "plain": (False, False),
            "encrypted": (True, False),
            "plain, hashes given": (False, True),
            "encrypted, hashes given": (True, True),
        }
        runs: dict[str, list[Run]] = {"boto3": [], **{mode: [] for mode in modes}}
        for repeat in range(args.repeats):  # interleaved, so drifting load hits every row alike
            runs["boto3"].append(measured(baseline(f"r{repeat}/baseline")))
            clean(f"r{repeat}/baseline")
            for number, (mode, (encrypted, known)) in enumerate(modes.items()):
                prefix = f"r{repeat}/m{number}"
                runs[mode].append(
                    measured(
                        ours(prefix, "backup-1", encrypted=encrypted, known=known),
                        staging=tmp / "state" if encrypted else None,
                    )
                )
                if repeat < args.repeats - 1 or known:
                    clean(prefix)
        last = f"r{args.repeats - 1}"
        second_plain = measured(ours(f"{last}/m0", "backup-2", encrypted=False, known=False))
        second_enc = measured(ours(f"{last}/m1", "backup-2", encrypted=True, known=False))
        second_known = measured(ours(f"{last}/m1", "backup-3", encrypted=True, known=True))
        clean(f"{last}/m0")
        clean(f"{last}/m1")

        # Cancelled at 70 % (a third of the way into the second file, whose staging file is complete by
        # then: encryption runs far ahead of the upload), then resumed: what the second attempt still sends.
        progress = {"percent": 0}

        def note(percent: int, message: str) -> None:
            progress["percent"] = percent

        cancelled_at = time.perf_counter()
        try:
            ours(
                "resume",
                "backup-1",
                encrypted=True,
                known=True,
                on_progress=note,
                should_stop=lambda: progress["percent"] >= CANCEL_AT,
            )()
            raise RuntimeError("the upload was not cancelled")
        except Cancelled:
            cancelled_seconds = time.perf_counter() - cancelled_at
        resumed = measured(ours("resume", "backup-1", encrypted=True, known=True))

    boto3_rate = median([run.mb_s(total) for run in runs["boto3"]])
    report.add(
        f"boto3 upload_file of the {len(LAYOUT)} files (8 MiB parts, 10 threads), median of {args.repeats}",
        f"{boto3_rate:,.0f} MB/s",
    )
    for mode in modes:
        rate = median([run.mb_s(total) for run in runs[mode]])
        # Each run against the boto3 run of its own round: the load here drifts by 2× within minutes.
        ratio = median(
            [
                mine.mb_s(total) / base.mb_s(total)
                for mine, base in zip(runs[mode], runs["boto3"], strict=True)
            ]
        )
        note = "" if "given" in mode else ", files hashed first"
        report.add(
            f"upload_backup, {mode}{note}: MB/s and / boto3 (medians of {args.repeats})",
            f"{rate:,.0f} MB/s, {ratio:.2f}×",
            "≥ 0.8×",
            ratio >= 0.8,
        )
    for mode, values in runs.items():
        client = median([run.cpu_seconds for run in values]) / (total / GIB)
        store = median([run.store_cpu_seconds for run in values]) / (total / GIB)
        report.add(
            f"CPU s per GiB, {mode}: client (this process + encryptor) / SeaweedFS",
            f"{client:.1f} / {store:.1f} s",
        )
    growth = max(run.rss_growth_mb for mode in modes for run in runs[mode])
    report.add(
        "RSS growth of this process during upload_backup (max of all its 2 GiB runs)",
        f"{growth:.1f} MB",
        "< 100 MB",
        growth < 100,
    )
    report.add(
        "RSS growth during boto3 upload_file (for comparison)",
        f"{max(run.rss_growth_mb for run in runs['boto3']):.1f} MB",
    )
    staging = max(run.staging_peak for mode in modes for run in runs[mode])
    report.add(
        "encrypted: staging disk at its peak (the largest file, encrypted)",
        f"{staging / MIB:,.0f} MiB (largest file {max(LAYOUT.values()) / MIB:,.0f} MiB)",
    )
    extra = median(
        [enc.seconds / plain.seconds - 1 for enc, plain in zip(runs["encrypted"], runs["plain"], strict=True)]
    )
    report.add(
        "encrypted: extra time over plain (age + staging write/read), median of the rounds",
        f"{extra * 100:+.0f} %",
    )
    for label, run in (
        ("plain", second_plain),
        ("encrypted", second_enc),
        ("encrypted, hashes given", second_known),
    ):
        share = run.result["uploaded_bytes"] / run.result["total_bytes"]
        report.add(
            f"second, unchanged backup ({label}): bytes sent / backup bytes",
            f"{share * 100:.4f} % ({run.result['uploaded_bytes']:,} B in {run.seconds:.1f} s)",
            "< 1 %",
            share < 0.01,
        )
    share = resumed.result["uploaded_bytes"] / total
    report.add(
        f"encrypted upload cancelled at {CANCEL_AT} %, then resumed: bytes the resume sends / backup",
        f"{share * 100:.1f} % (reused {resumed.result['resumed_bytes'] / MIB:,.0f} MiB of parts, "
        f"skipped {resumed.result['skipped_bytes'] / MIB:,.0f} MiB of whole objects; cancelled after "
        f"{cancelled_seconds:.1f} s)",
        f"< {100 - CANCEL_AT + 5} %",
        share * 100 < 100 - CANCEL_AT + 5,
    )
    report.note(
        f"upload_backup: {DEFAULT_PART_SIZE // MIB} MiB parts, {DEFAULT_CONCURRENCY} in flight; "
        "files from page cache; SeaweedFS `weed server` on the same 2 CPUs (it is the bottleneck: "
        "both clients wait on it)"
    )
    report.note(
        "MB = 10^6 bytes; RSS sampled every 50 ms (VmRSS of this process, baseline taken just before "
        "each upload)"
    )
    print(report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
