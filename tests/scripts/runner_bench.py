"""Benchmark: run_script on a script printing 1,000,000 short lines vs the same script writing to /dev/null.

Run from the repository root:  .venv/bin/python tests/scripts/runner_bench.py [repetitions]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # make `backups` importable without Django

from backups.runner import OutputBuffer, build_env, run_script  # noqa: E402

LINES = 1_000_000


def write_script(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(body)
    path.chmod(0o755)
    return path


def time_run_script(script: Path, env: dict[str, str]) -> float:
    calls = 0

    def on_lines(batch: list[tuple[str, str]]) -> None:
        nonlocal calls
        calls += 1

    start = time.perf_counter()
    result = run_script(script, env=env, on_lines=on_lines, output=OutputBuffer())
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.error
    assert result.output.total_lines == LINES, result.output.total_lines
    return elapsed


def time_devnull(script: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([script], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> None:
    repetitions = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    env = build_env(os.environ, {})
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        scripts = {
            "seq": write_script(directory, "seq.sh", f"#!/bin/sh\nseq {LINES}\n"),
            "python": write_script(
                directory,
                "py.sh",
                f"#!/bin/sh\nexec {sys.executable} -c "
                f"'import sys\nw = sys.stdout.write\nfor i in range({LINES}): w(f\"{{i}}\\n\")'\n",
            ),
        }
        for label, script in scripts.items():
            piped: list[float] = []
            devnull: list[float] = []
            for _ in range(repetitions):  # interleaved so machine load affects both alike
                piped.append(time_run_script(script, env))
                devnull.append(time_devnull(script, env))
            print(
                f"{label:>6}: run_script median {statistics.median(piped):.3f} s "
                f"(min {min(piped):.3f}, max {max(piped):.3f}) | /dev/null median "
                f"{statistics.median(devnull):.3f} s (min {min(devnull):.3f}, max {max(devnull):.3f})"
            )


if __name__ == "__main__":
    main()
