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
