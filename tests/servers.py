"""Real backup folders and real `manage.py serve` processes, for the tests and the benchmarks alike.
No Django import here: a benchmark script uses it before any settings exist."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
REFERENCE_SCRIPT = PROJECT / "scripts" / "production-backup.sh"


def make_backup(
    root: Path, name: str, files: dict[str, bytes | str] | None = None, mtime: float | None = None
) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for rel, content in (files or {"database.sql": "-- dump\n", "configs/app.env": "A=1\n"}).items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    if mtime is not None:
        for path in [folder, *folder.rglob("*")]:
            os.utime(path, (mtime, mtime))
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`manage.py serve` in its own process group, on a free port, with its own database and root."""

    def __init__(self, tmp: Path, env: dict[str, str], args: list[str]) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/backup-ws"
        self.env = env
        self.log_path = tmp / f"server-{self.port}.log"
        self.args = args
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> ServerProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    *self.args,
                ],
                cwd=PROJECT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n{self.log()}")
            health = self.base + "/health"
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=2) as reply:
                if reply.status == 200:
                    return self
            time.sleep(0.2)
        raise RuntimeError(f"server did not answer /health:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(10)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    """`manage.py backup_worker` in its own process group, its output appended to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "manage.py", "backup_worker"],
            cwd=PROJECT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def make_sources(tmp: Path) -> None:
    """Small real trees for the reference script to archive (its BACKUP_*_DIR must exist)."""
    for folder, files in {
        "app": {"package.json": '{"name": "beauty-platform"}\n', "src/server.js": "console.log('hi')\n"},
        "uploads": {"images/logo.png": "\x89PNG fake\n"},
        "configs": {"app.env": "APP_ENV=test\n"},
        "ssl": {"README": "certificates live here\n"},
        "nginx": {"nginx.conf": "events {}\n"},
    }.items():
        for rel, text in files.items():
            path = tmp / "src" / folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


def server_env(tmp: Path, **overrides: str) -> dict[str, str]:
    make_sources(tmp)
    env = dict(os.environ)
    for name in ("REDIS_URL", "BACKUP_SCRIPT", "DATABASE_URL"):
        env.pop(name, None)
    env.update(
        {
            "BACKUP_ROOT": str(tmp / "backups"),
            "BACKUP_SCRIPT_LOG": str(tmp / "script.log"),
            "BACKUP_STATE_DIR": str(tmp / "state"),
            "SERVICE_LOG": str(tmp / "service.log"),
            "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
            "JWT_SECRET": "e2e-" + secrets.token_hex(24),
            "SECRET_KEY": secrets.token_urlsafe(50),
            "DEBUG": "0",
            "RATE_LIMIT": "100000/15m",
            "SHUTDOWN_GRACE_SECONDS": "3",
            "BACKUP_KILL_GRACE_SECONDS": "2",
            "WORKER_POLL_MS": "100",
            "PYTHONUNBUFFERED": "1",
            "BACKUP_APP_DIR": str(tmp / "src" / "app"),
            "BACKUP_UPLOADS_DIR": str(tmp / "src" / "uploads"),
            "BACKUP_CONFIGS_DIR": str(tmp / "src" / "configs"),
            "BACKUP_SSL_DIR": str(tmp / "src" / "ssl"),
            "BACKUP_NGINX_DIR": str(tmp / "src" / "nginx"),
            "BACKUP_PG_PORT": "1",
        }
    )
    if os.environ.get("TEST_DATABASE_URL"):
        env["DATABASE_URL"] = os.environ["TEST_DATABASE_URL"]
    env.update(overrides)
    return env


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
