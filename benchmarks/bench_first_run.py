"""The first `make run` on a fresh clone: seconds until the service answers /health, for two commits of
this repository measured in the same run (by default the current one and one given with --before).

Run: .venv/bin/python benchmarks/bench_first_run.py --before <commit> [--no-cache]
Each clone gets its own .venv; pip's download cache is shared (or disabled with --no-cache, which then
measures the downloads too). The figure is what a new operator waits before the dashboard answers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import Report  # noqa: E402
from tests.servers import free_port  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent


def first_run(commit: str, no_cache: bool) -> tuple[float, int]:
    folder = Path(tempfile.mkdtemp(prefix="first-run-"))
    try:
        subprocess.run(["git", "clone", "-q", str(PROJECT), str(folder)], check=True)
        subprocess.run(["git", "-C", str(folder), "checkout", "-q", commit], check=True)
        port = free_port()
        env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1"}
        for name in ("DATABASE_URL", "REDIS_URL", "BACKUP_ROOT", "VIRTUAL_ENV"):
            env.pop(name, None)
        if no_cache:
            env["PIP_NO_CACHE_DIR"] = "1"
        started = time.monotonic()
        process = subprocess.Popen(
            ["make", "run"],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while process.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                        break
                except OSError:
                    time.sleep(0.2)
            seconds = time.monotonic() - started
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(60)
        packages = len(list((folder / ".venv").glob("lib/python*/site-packages/*.dist-info")))
        return seconds, packages
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="the commit to compare with")
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--no-cache", action="store_true")
    args = parser.parse_args()
    report = Report("First `make run` on a fresh clone (until /health answers)")
    before, before_packages = first_run(args.before, args.no_cache)
    after, after_packages = first_run(args.after, args.no_cache)
    report.add(f"before ({args.before[:8]}): packages installed", f"{before_packages}")
    report.add(f"before ({args.before[:8]}): seconds to /health", f"{before:.0f} s")
    report.add(f"after ({args.after[:8]}): packages installed", f"{after_packages}")
    report.add(f"after ({args.after[:8]}): seconds to /health", f"{after:.0f} s")
    report.add("after / before", f"{after / before:.2f}×")
    print(report.render())


if __name__ == "__main__":
    main()
