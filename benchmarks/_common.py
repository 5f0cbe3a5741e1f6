"""Shared helpers for the stand-alone benchmark scripts (not tests: nothing here is collected by pytest).

A copy of the small pieces of tests/conftest.py the benchmarks need (that module imports pytest and DRF's
test client), plus: a server that is always stopped, an RSS sampler, percentiles and the Markdown table.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))  # benchmarks run as scripts: make the project importable
from tests.servers import free_port  # noqa: E402, F401  (re-exported for the benchmarks)
from tests.servers import server_env as tests_server_env  # noqa: E402

PYTHON = sys.executable


def server_env(tmp: Path, **overrides: str) -> dict[str, str]:
    """The tests' server environment (everything under `tmp`), with the rate limit and the free-disk
    check out of the way of a benchmark."""
    settings = {"RATE_LIMIT": "10000000/1m", "MIN_FREE_BYTES": "0", **overrides}
    return tests_server_env(tmp, **settings)


def manage(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def migrate(env: dict[str, str]) -> None:
    done = manage(env, "migrate", "--noinput")
    if done.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{done.stderr[-2000:]}")


def admin_token(env: dict[str, str]) -> str:
    done = manage(env, "create_admin_token", "bench", "--ttl", "7200")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"create_admin_token failed:\n{done.stderr[-2000:]}")
    return lines[-1].strip()


class ManagedProcess:
    """A `manage.py` command in its own process group, logging to a file; stop() is SIGTERM to the group,
    then SIGKILL."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def spawn(self, *args: str) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [PYTHON, "manage.py", *args],
                cwd=PROJECT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


class Server(ManagedProcess):
    """`manage.py serve` on a free port."""

    def __init__(self, tmp: Path, env: dict[str, str], args: Sequence[str] = ()) -> None:
        self.port = free_port()
        super().__init__(env, tmp / f"server-{self.port}.log")
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/backup-ws"
        self.args = list(args)

    def start(self, timeout: float = 600) -> float:
        """Start and wait for /health; returns the seconds that took."""
        started = time.perf_counter()
        self.spawn("serve", "--host", "127.0.0.1", "--port", str(self.port), *self.args)
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = http_get(self.port, "/health", timeout=2)
                if status == 200:
                    return time.perf_counter() - started
            time.sleep(0.1)
        raise RuntimeError(f"server did not answer /health in {timeout} s:\n{self.log()}")


def http_get(port: int, path: str, token: str | None = None, timeout: float = 30) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=auth_headers(token))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def http_post_json(
    port: int, path: str, body: dict[str, Any], token: str, timeout: float = 30
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {**auth_headers(token), "Content-Type": "application/json"}
        conn.request("POST", path, body=json.dumps(body), headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


# --- memory ---------------------------------------------------------------------------------------------


def proc_status_kib(pid: int, name: str) -> int:
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM, ...) in KiB; 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(f"{name}:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its own threads, not its children)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    return proc_status_kib(pid, "VmRSS")


class RssSampler:
    """Samples VmRSS of `pid` every `interval` s in a thread; `growth_mb` = max sample - baseline."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline_kib = 0
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self.baseline_kib = self.peak_kib = rss_kib(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak_kib = max(self.peak_kib, rss_kib(self.pid))

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, rss_kib(self.pid))

    @property
    def growth_mb(self) -> float:
        return (self.peak_kib - self.baseline_kib) * 1024 / 1e6

    @property
    def peak_mb(self) -> float:
        return self.peak_kib * 1024 / 1e6


# --- numbers and the report -------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Report:
    title: str
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, figure: str, goal: str = "", met: bool | None = None) -> None:
        mark = "" if met is None else ("yes" if met else "**NO**")
        self.rows.append((what, figure, goal, mark))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def render(self) -> str:
        lines = [f"### {self.title}", "", "| what | figure | goal | met? |", "| --- | --- | --- | --- |"]
        lines += [f"| {what} | {figure} | {goal} | {met} |" for what, figure, goal, met in self.rows]
        lines.append("")
        lines += [f"- {note}" for note in self.notes]
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        lines.append(f"- load average at the end (1/5/15 min, {os.cpu_count()} CPUs): {load}")
        lines.append(f"- command: `{command_line()}` (cwd {PROJECT})")
        return "\n".join(lines)


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(PROJECT)
    python = Path(PYTHON)
    with contextlib.suppress(ValueError):
        python = python.relative_to(PROJECT)
    return " ".join(shlex.quote(part) for part in [str(python), str(script), *sys.argv[1:]])


# --- lifetime ---------------------------------------------------------------------------------------------


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def bench_tmpdir(prefix: str) -> Iterator[Path]:
    """A temporary directory removed at the end, also on SIGTERM/SIGINT (turned into SystemExit so every
    `finally` and context manager runs)."""
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, _raise_exit)
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()
