"""Fixtures: a real backup root in tmp_path, tokens made the way the Auth Service makes them, an API
client, and a real server process (`manage.py serve`) for end-to-end tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from asgiref.sync import async_to_sync
from rest_framework.test import APIClient

from backups.catalogue import sync
from tests.servers import (  # noqa: F401  (re-exported for the test modules)
    PROJECT,
    REFERENCE_SCRIPT,
    ServerProcess,
    free_port,
    make_backup,
    make_sources,
    manage,
    server_env,
    start_worker,
)


@pytest.fixture
def backup_root(tmp_path: Path, settings) -> Path:
    """An empty backup root, wired into the settings (script log and service log beside it)."""

    root = tmp_path / "backups"
    root.mkdir()
    settings.BACKUP_ROOT = root
    settings.BACKUP_SCRIPT_LOG = tmp_path / "log" / "beauty-backup.log"
    settings.BACKUP_SCRIPT = REFERENCE_SCRIPT
    settings.BACKUP_STATE_DIR = tmp_path / "state"
    settings.MIN_FREE_BYTES = 0
    sync.reset()
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


IN_MEMORY_LAYER = {
    "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}
}


@pytest.fixture(autouse=True)
def _fresh_channel_layer(request, settings):
    """Each in-process test gets a channel layer object of its own, in memory even when REDIS_URL is set.

    Every test runs on an event loop of its own, while Channels keeps one layer object per process, and
    channels_redis binds its receive lock and connection pools to the loop that first reads: a consumer's
    blocking read left from one test's loop hangs the close of that loop (seen as 240 s teardown timeouts
    on the PostgreSQL + Redis pass). Production has one loop per process. The Redis paths are tested
    where they matter: tests marked `redis` bring a Redis layer of their own, and the `slow` tests run
    real `serve` processes fanning out through Redis."""
    from channels.layers import channel_layers

    if request.node.get_closest_marker("redis") is None and request.node.get_closest_marker("slow") is None:
        settings.CHANNEL_LAYERS = IN_MEMORY_LAYER
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory) -> None:
    """A file-backed SQLite test database: the worker's thread and the test's thread then lock and
    wait like two connections of the real service, where the shared in-memory one raises at once."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        database.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


def body_of(response) -> bytes:
    """A response's body; a download's async stream read in one go. Through async_to_sync, so the
    stream's thread-sensitive steps (its audit row at the end) run in this thread, on the test's own
    database connection (another thread would wait for the test's open transaction)."""
    if not getattr(response, "streaming", False):
        return response.content
    if not response.is_async:
        return b"".join(response.streaming_content)

    async def read() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(read)()


@dataclass
class EventLog:
    """Every event the service published while the test ran, as (event, data)."""

    seen: list[tuple[str, dict]]

    def of(self, event: str) -> list[dict]:
        return [data for name, data in list(self.seen) if name == event]

    def wait_for(self, event: str, predicate: Callable[[dict], bool], timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for data in self.of(event):
                if predicate(data):
                    return data
            time.sleep(0.05)
        raise AssertionError(f"no {event} matching within {timeout} s; seen: {self.seen[-10:]}")


@pytest.fixture
def event_log() -> Iterator[EventLog]:
    """The service publishes on a loop of this test's own, where a channel of the layer listens."""
    from channels.layers import get_channel_layer

    from backups import events

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-events", daemon=True)
    thread.start()
    events.use_loop(loop)
    layer = get_channel_layer()
    seen: list[tuple[str, dict]] = []

    async def listen(channel: str) -> None:
        while True:
            message = await layer.receive(channel)
            seen.append((message["event"], message["data"]))

    async def subscribe() -> str:
        channel = await layer.new_channel()
        await layer.group_add(events.GROUP, channel)
        return channel

    channel = asyncio.run_coroutine_threadsafe(subscribe(), loop).result(5)
    asyncio.run_coroutine_threadsafe(listen(channel), loop)
    try:
        yield EventLog(seen)
    finally:
        events.drain()

        async def stop_tasks() -> None:
            # The listener and the publisher's sender: ended here, not garbage-collected on a dead loop.
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop_tasks(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
