"""The request path: req/s of the service's hot reads beside a bare DRF view and a bare Django view
served by the same uvicorn configuration, in one run.

The service is the real `manage.py serve` (SQLite, a backup root of 100 folders, a real admin token,
the worker in its thread, the rate limit counting every request); the reference is
`benchmarks/bare_site` (startproject's middleware, no authentication, no query) on
`backups.server.uvicorn_config`. Each target is driven by `wrk` (one thread, `--connections` keep-alive
connections; a Python keep-alive client when wrk is missing), in interleaved rounds so that machine
noise hits every target alike; the figure is the median of the rounds.

Run: .venv/bin/python benchmarks/bench_request.py [--seconds 4] [--rounds 3] [--connections 1]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    PROJECT,
    PYTHON,
    ManagedProcess,
    Report,
    Server,
    admin_token,
    auth_headers,
    bench_tmpdir,
    cpu_seconds,
    free_port,
    http_get,
    median,
    migrate,
    running,
    server_env,
)
from bench_catalogue import make_root

BACKUPS = 100
LIST = "/api/backup/list?page_size=50"


class BareServer(ManagedProcess):
    """benchmarks/bare_site on the service's uvicorn configuration."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        super().__init__({}, tmp / f"bare-{self.port}.log")

    def start(self, timeout: float = 60) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [PYTHON, str(PROJECT / "benchmarks" / "bare_site" / "serve.py"), str(self.port)],
                cwd=PROJECT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bare server exited {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if http_get(self.port, "/django", timeout=2)[0] == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"bare server did not answer:\n{self.log()}")


def wrk_rate(port: int, path: str, token: str | None, seconds: float, connections: int) -> tuple[float, int]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in auth_headers(token).items():
        command += ["-H", f"{name}: {value}"]
    done = subprocess.run(
        [*command, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=seconds + 60
    )
    rate = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    count = re.search(r"(\d+) requests in", done.stdout)
    if done.returncode != 0 or not rate or not count:
        raise RuntimeError(f"wrk failed for {path}:\n{done.stdout}\n{done.stderr}")
    if "Non-2xx" in done.stdout:
        raise RuntimeError(f"{path} answered errors under load:\n{done.stdout}")
    return float(rate.group(1)), int(count.group(1))


def python_rate(
    port: int, path: str, token: str | None, seconds: float, connections: int
) -> tuple[float, int]:
    """One keep-alive connection, requests back to back (the fallback without wrk; connections > 1 are
    not simulated)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = auth_headers(token)
    count = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    try:
        while time.perf_counter() < deadline:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{path}: {response.status}")
            count += 1
    finally:
        conn.close()
    return count / (time.perf_counter() - started), count


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=1)
    options = parser.parse_args()
    rate = wrk_rate if shutil.which("wrk") else python_rate
    driver = (
        f"wrk -t1 -c{options.connections}" if rate is wrk_rate else "Python keep-alive client, 1 connection"
    )

    report = Report(f"Request path: req/s beside bare views on the same uvicorn ({driver})")
    with bench_tmpdir("bench-request-") as tmp:
        root = tmp / "backups"
        make_root(root, BACKUPS)
        env = server_env(tmp, BACKUP_ROOT=str(root), WORKER_POLL_MS="500")  # the default poll
        migrate(env)
        token = admin_token(env)
        bare = BareServer(tmp)
        try:
            bare.start()
            with running(Server(tmp, env)) as server:
                server.start()
                service = (server.pid, server.port)
                reference = (bare.pid, bare.port)
                targets = {
                    "service GET /api/backup/list?page_size=50": (*service, LIST, token),
                    "service GET /api/backup/status": (*service, "/api/backup/status", token),
                    "service GET /health": (*service, "/health", None),
                    "bare DRF APIView": (*reference, "/drf", None),
                    "bare Django view": (*reference, "/django", None),
                }
                for _, port, path, auth in targets.values():  # warm-up, and a check that each answers 200
                    status, body = http_get(port, path, auth)
                    if status != 200:
                        raise RuntimeError(f"{path}: {status} {body[:300]!r}")
                    rate(port, path, auth, 1, options.connections)
                rates: dict[str, list[float]] = {name: [] for name in targets}
                cpu: dict[str, list[float]] = {name: [] for name in targets}
                for _ in range(options.rounds):
                    for name, (pid, port, path, auth) in targets.items():
                        before = cpu_seconds(pid)
                        per_second, count = rate(port, path, auth, options.seconds, options.connections)
                        rates[name].append(per_second)
                        cpu[name].append((cpu_seconds(pid) - before) / max(1, count) * 1000)
        finally:
            bare.stop()

    figures = {name: median(values) for name, values in rates.items()}
    costs = {name: median(values) for name, values in cpu.items()}
    for name, value in figures.items():
        spread = ", ".join(f"{v:.0f}" for v in rates[name])
        report.add(
            f"{name}, req/s (median of {options.rounds} × {options.seconds:g} s: {spread})", f"{value:.0f}"
        )
        report.add(f"{name}, server CPU per request (median)", f"{costs[name]:.2f} ms")
    for name, floor, goal in (
        ("service GET /api/backup/list?page_size=50", "bare DRF APIView", 0.5),
        ("service GET /api/backup/status", "bare DRF APIView", 0.5),
        ("service GET /health", "bare Django view", 0.7),
    ):
        short, reference = name.removeprefix("service "), floor.removesuffix(" APIView").removesuffix(" view")
        ratio = figures[name] / figures[floor]
        report.add(f"{short} ÷ {reference}, req/s", f"{ratio:.2f}×", f"≥ {goal}×", ratio >= goal)
        ratio = costs[floor] / costs[name]
        report.add(
            f"{short}: {reference} CPU ÷ its CPU per request", f"{ratio:.2f}×", f"≥ {goal}×", ratio >= goal
        )
    report.note("CPU per request: the server process's user + system time over a round ÷ its requests")
    report.note(f"{BACKUPS} backup folders × 5 files; SQLite; the worker runs in the serve process")
    print(report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
