"""Request threads are kept between requests (with their database connection), and a request still
gets a thread of its own when every kept one is busy."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.testing import ApplicationCommunicator
from django.core.signals import request_started
from django.db import connection

from backups.asgi_threads import PooledThreadsASGIHandler
from tests.conftest import manage, server_env

pytestmark = pytest.mark.django_db(transaction=True)


def scope(path: str) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }


async def get(app: PooledThreadsASGIHandler, path: str) -> int:
    communicator = ApplicationCommunicator(app, scope(path))
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(30)
    while (await communicator.receive_output(30)).get("more_body"):
        pass
    await communicator.wait(30)
    return start["status"]


@pytest.fixture
def request_threads():
    """(thread name, its database connection) of each request, recorded from inside it."""
    seen: list[tuple[str, object]] = []

    def record(**kwargs) -> None:
        connection.ensure_connection()
        seen.append((threading.current_thread().name, connection.connection))

    request_started.connect(record)
    yield seen
    request_started.disconnect(record)


def test_sequential_requests_reuse_one_kept_thread_and_its_connection(backup_root, request_threads):
    app = PooledThreadsASGIHandler(pool_size=2)

    async def three() -> list[int]:
        return [await get(app, "/health") for _ in range(3)]

    assert asyncio.run(three()) == [200, 200, 200]
    threads = {thread for thread, _ in request_threads}
    connections = {id(conn) for _, conn in request_threads}
    assert len(request_threads) == 3
    # Stock Django names a new thread for each request (ThreadPoolExecutor-<n>_0).
    assert all(thread.startswith("request-") for thread in threads), threads
    assert len(threads) <= 2 and len(connections) <= 2  # kept, not one per request


def test_a_request_beyond_the_kept_threads_gets_one_of_its_own(backup_root, request_threads):
    app = PooledThreadsASGIHandler(pool_size=1)
    taken = app._pool.take()  # the only kept thread is busy (a long download holds it)
    assert taken is not None

    async def one() -> int:
        return await get(app, "/health")

    assert asyncio.run(one()) == 200
    app._pool.give(taken)
    assert [thread for thread, _ in request_threads][0].startswith("request-extra")
    assert app._pool.take() is taken  # the kept thread went back; the extra one is gone


PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def postgres_env(tmp_path):
    import secrets
    import socket

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 5432)) != 0:
            pytest.skip("needs PostgreSQL on 127.0.0.1:5432")
    import psycopg

    name = f"backup_conn_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    env = server_env(tmp_path, DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{name}")
    done = manage(env, "migrate", "--noinput")
    assert done.returncode == 0, done.stderr[-2000:]
    yield env, name
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_kept_postgres_connections_that_die_cost_at_most_503s_and_are_replaced_at_once(
    postgres_env, start_server
):
    """The server's kept connections are killed from PostgreSQL's side (what a restart does to them):
    the requests after it are 200 (the health check replaced a dead connection) or 503, never a 500 or a
    hang, and a 200 comes back at once."""
    import time
    import urllib.error
    import urllib.request

    import psycopg

    env, name = postgres_env
    server = start_server("--no-worker", env=env, migrate=False)

    def status() -> int:
        try:
            with urllib.request.urlopen(server.base + "/health", timeout=10) as reply:
                return reply.status
        except urllib.error.HTTPError as error:
            return error.code

    assert [status() for _ in range(5)] == [200] * 5
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        kept = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [name]
        ).fetchall()
        assert kept, "the server keeps no connection"
        for (pid,) in kept:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    started = time.monotonic()
    after = [status() for _ in range(10)]
    assert set(after) <= {200, 503}, after
    assert after[-1] == 200 and time.monotonic() - started < 5, after
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        now = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [name]
        ).fetchone()[0]
    assert 1 <= now <= 9  # kept again: at most one per kept request thread (8) and the extra one's closed
