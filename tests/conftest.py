"""Fixtures: a real backup root in tmp_path, tokens made the way the Auth Service makes them, an API
client, and a real server process (`manage.py serve`) for end-to-end tests."""

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
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import pytest
from rest_framework.test import APIClient

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


@pytest.fixture
def backup_root(tmp_path: Path, settings) -> Path:
    """An empty backup root, wired into the settings (script log and service log beside it)."""
    from backups import selectors

    root = tmp_path / "backups"
    root.mkdir()
    settings.BACKUP_ROOT = root
    settings.BACKUP_SCRIPT_LOG = tmp_path / "log" / "beauty-backup.log"
    settings.BACKUP_SCRIPT = REFERENCE_SCRIPT
    settings.MIN_FREE_BYTES = 0
    selectors._seen_root_signature = None
    return root


@pytest.fixture
def make_token(settings) -> Callable[..., str]:
    """A token signed with the service's secret and exactly the claims given (PyJWT, as the Auth Service)."""

    def make(
        claims: dict | None = None,
        *,
        ttl: int = 600,
        key: str | None = None,
        algorithm: str = "HS256",
        headers: dict | None = None,
    ) -> str:
        now = int(time.time())
        payload = {"sub": "admin-1", "role": "SUPER_ADMIN", "iat": now, "exp": now + ttl}
        if claims is not None:
            payload = {"iat": now, "exp": now + ttl, **claims}
        return jwt.encode(payload, key or settings.JWT_SECRET, algorithm=algorithm, headers=headers)

    return make


@pytest.fixture
def api(make_token) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_token()}")
    return client


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()


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


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start real servers; every one is stopped (SIGTERM, then SIGKILL) at the end of the test."""
    servers: list[ServerProcess] = []

    def start(
        *args: str, env: dict[str, str] | None = None, migrate: bool = True, **overrides: str
    ) -> ServerProcess:
        environment = env or server_env(tmp_path, **overrides)
        (tmp_path / "backups").mkdir(exist_ok=True)
        if migrate:
            done = manage(environment, "migrate", "--noinput")
            assert done.returncode == 0, done.stderr[-2000:]
        server = ServerProcess(tmp_path, environment, list(args))
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def _fresh_rate_limit_window():
    """Each test starts with an empty rate-limit window (the counters live in the cache)."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory) -> None:
    """A file-backed SQLite test database: the worker's thread and the test's thread then lock and
    wait like two connections of the real service, where the shared in-memory one raises at once."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        database.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")
