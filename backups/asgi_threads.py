"""Django's ASGI handler with request threads that are kept, instead of one made for each request.

Django runs each HTTP request's sync work (middleware, views, signals) on a thread started for that
request and joined after it, so every request also opened and closed its own database connection.
Here a request takes a thread from a small pool for its whole life and gives it back at the end: one
request per thread at a time, as before, but the thread and its database connection (`CONN_MAX_AGE`,
checked before reuse by `CONN_HEALTH_CHECKS`) serve the next request too. When every pooled thread is
busy (long downloads hold theirs), a request gets a thread of its own as in stock Django, and that
thread closes its database connections before it ends.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler
from django.db import connections

POOL_SIZE = 8


class _ThreadPool:
    def __init__(self, size: int) -> None:
        self._idle = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"request-{index}") for index in range(size)
        ]
        self._lock = threading.Lock()

    def take(self) -> ThreadPoolExecutor | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def give(self, executor: ThreadPoolExecutor) -> None:
        with self._lock:
            self._idle.append(executor)


class PooledThreadsASGIHandler(ASGIHandler):
    def __init__(self, pool_size: int = POOL_SIZE) -> None:
        super().__init__()
        self._pool = _ThreadPool(pool_size)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        executor = self._pool.take()
        if executor is None:
            await self._on_own_thread(scope, receive, send)
            return
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self._pool.give(executor)

    async def _on_own_thread(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="request-extra")
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            # The thread ends with this request: its connections must not outlive it unclosed.
            await asyncio.get_running_loop().run_in_executor(executor, connections.close_all)
            executor.shutdown(wait=False)


def get_asgi_application() -> PooledThreadsASGIHandler:
    import django

    django.setup(set_prefix=False)
    return PooledThreadsASGIHandler()
