"""The runner alone: what following a command through its supervisor and output file costs, per line and per
run, against the pipe-based runner it replaced and against the bare command with stdout to /dev/null.

Workloads: `seq 1000000` (1,000,000 short lines as fast as a C program writes them), a Python loop printing
1,000,000 lines, and `true` (the fixed cost of one run). Each is run REPEATS times, interleaved across the
variants so machine noise hits every row alike. Per-line cost = (median wall of the million-line run − median
wall of `true`) / 1,000,000; CPU is this process's (the follower's) plus its children's (supervisor and
command) from getrusage.

The pipe-based runner is read from git (`--baseline REF`; by default the last version of backups/runner.py
as a single module: HEAD's while it is one, else the parent of the commit that last touched that path) and
imported from a temporary file; it needs nothing but the standard library.

Run: .venv/bin/python benchmarks/bench_runner.py [--repeats N] [--baseline REF]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from _common import PROJECT, Report, bench_tmpdir, median

from backups import runner

LINES = 1_000_000


def load_baseline(ref: str | None, tmp: Path) -> tuple[ModuleType | None, str]:
    """The single-module runner at ``ref`` (or the default described above), imported from a file."""
    git = ["git", "-C", str(PROJECT)]
    try:
        if ref is None:
            ref = "HEAD"
            probe = subprocess.run([*git, "cat-file", "-e", "HEAD:backups/runner.py"], capture_output=True)
            if probe.returncode:
                last = subprocess.run(
                    [*git, "log", "-1", "--format=%H", "--", "backups/runner.py"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
                ref = f"{last}^"
        source = subprocess.run(
            [*git, "show", f"{ref}:backups/runner.py"], capture_output=True, text=True, check=True
        ).stdout
        label = subprocess.run(
            [*git, "rev-parse", "--short", ref], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None, "unavailable"
    path = tmp / "runner_pipe_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("runner_pipe_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module, label


def write_script(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(body)
    path.chmod(0o755)
    return path


def cpu_now() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def self_cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


Sample = tuple[float, float, float]  # wall, CPU (all), CPU (follower only)


def measure(run: Callable[[Path, int], int], script: Path, expected: int) -> Sample:
    cpu, mine = cpu_now(), self_cpu()
    started = time.perf_counter()
    run(script, expected)
    wall = time.perf_counter() - started
    return wall, cpu_now() - cpu, self_cpu() - mine


def through(module: ModuleType, script: Path, env: dict[str, str], expected: int, **kwargs: object) -> int:
    calls = 0

    def on_lines(batch: list[tuple[str, str]]) -> None:
        nonlocal calls
        calls += 1

    result = module.run_script(script, env=env, on_lines=on_lines, output=module.OutputBuffer(), **kwargs)
    if result.exit_code != 0 or result.output.total_lines != expected:
        raise SystemExit(f"{script.name}: {result.error or 'wrong line count'} ({result.output.total_lines})")
    return result.output.total_lines


def bare(script: Path, env: dict[str, str]) -> int:
    subprocess.run([script], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", default=None, help="git ref of the single-module (pipe) runner")
    args = parser.parse_args()
    env = runner.build_env(os.environ, {})
    with bench_tmpdir("bench-runner-") as tmp:
        baseline, label = load_baseline(args.baseline, tmp)
        state = tmp / "state"
        scripts = {
            "seq": (write_script(tmp, "seq.sh", f"#!/bin/sh\nseq {LINES}\n"), LINES),
            "python": (
                write_script(
                    tmp,
                    "py.sh",
                    f"#!/bin/sh\nexec {sys.executable} -c "
                    f"'import sys\nw = sys.stdout.write\nfor i in range({LINES}): w(f\"{{i}}\\n\")'\n",
                ),
                LINES,
            ),
            "true": (write_script(tmp, "true.sh", "#!/bin/sh\ntrue\n"), 0),
        }
        variants: dict[str, Callable[[Path, int], int]] = {
            "supervised (file)": lambda script, n: through(runner, script, env, n, state_dir=state),
            "bare, stdout → /dev/null": lambda script, n: bare(script, env),
        }
        if baseline is not None:
            variants["pipe (before)"] = lambda script, n: through(baseline, script, env, n)
        samples: dict[tuple[str, str], list[Sample]] = {}
        for _ in range(args.repeats):
            for workload, (script, expected) in scripts.items():
                for variant, run in variants.items():
                    samples.setdefault((workload, variant), []).append(measure(run, script, expected))
                    for run_id in runner.recorded_runs(state):
                        runner.cleanup(state, run_id)

    report = Report(f"Runner: {LINES:,} lines through the supervisor's output file vs pipes (before)")
    order = [v for v in ("pipe (before)", "supervised (file)", "bare, stdout → /dev/null") if v in variants]

    def wall(workload: str, variant: str) -> float:
        return median([s[0] for s in samples[(workload, variant)]])

    for variant in order:
        fixed = wall("true", variant)
        report.add(f"{variant}: fixed cost (`true`), median of {args.repeats}", f"{fixed * 1000:.1f} ms")
        for workload in ("seq", "python"):
            total = wall(workload, variant)
            per_line = (total - fixed) / LINES
            cpu = median([s[1] for s in samples[(workload, variant)]])
            mine = median([s[2] for s in samples[(workload, variant)]])
            report.add(
                f"{variant}: {workload}, {LINES:,} lines",
                f"{total:.3f} s wall = {per_line * 1e9:.0f} ns/line; CPU {cpu:.2f} s (follower {mine:.2f} s)",
            )
    if baseline is not None:
        for workload in ("seq", "python"):
            before = wall(workload, "pipe (before)") - wall("true", "pipe (before)")
            after = wall(workload, "supervised (file)") - wall("true", "supervised (file)")
            report.add(
                f"per-line cost, supervised / pipe ({workload})",
                f"{after / before:.2f}×",
                "≤ 1.3×",
                after / before <= 1.3,
            )
        extra = wall("true", "supervised (file)") - wall("true", "pipe (before)")
        report.add(
            "extra fixed cost per run (supervisor start + handshake)",
            f"{extra * 1000:.1f} ms",
            "< 100 ms",
            extra < 0.1,
        )
    report.note(f"baseline: backups/runner.py at {label}")
    print(report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
