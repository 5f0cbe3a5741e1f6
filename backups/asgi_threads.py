"""Django's ASGI handler with request threads that are kept, instead of one made for each request.

Django runs each HTTP request's sync work (middleware, views, signals) on a thread started for that
request and joined after it, so every request also opened and closed its own database connection.
Here a request takes a thread from a small pool for its whole life and gives it back at the end: one
request per thread at a time, as before, but the thread and its database connection (`CONN_MAX_AGE`,
checked before reuse by `CONN_HEALTH_CHECKS`) serve the next request too. When every pooled thread is
busy (long downloads hold theirs), a request gets a thread of its own as in stock Django, and that
thread closes its database connections before it ends.

A request also crosses to its thread once. Under ASGI, Django runs the middleware chain on the event
loop and hands each sync step to the request's thread on its own: the `request_started` signal, each of
Django's own middlewares' `process_request` and `process_response`, CSRF's `process_view`, the view, the
template response's rendering and the response's `close()` — about fifteen hand-offs for one request,
each a wake-up of the thread and of the loop. Here the handler runs Django's synchronous chain, as under
WSGI, on the request's thread in one call: the same middlewares, in the same order, with the same
checks; only the byte transfer stays on the event loop. A response whose body is already in memory is
closed (`request_finished`) on that thread before it is sent; a streaming one (downloads, over an async
generator on the loop) is closed after its last byte, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers import base
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import connections
from django.http import FileResponse, HttpResponseBase
from django.urls import set_script_prefix

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
        base.BaseHandler.__init__(self)
        self.load_middleware(is_async=False)  # the chain runs on the request's thread, in one call
        self._pool = _ThreadPool(pool_size)
        self._respond_on_thread = sync_to_async(self._respond, thread_sensitive=True)

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

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Django's `ASGIHandler.handle` (read the body, answer, watch for the client leaving), with the
        whole synchronous part of the request in one call on its thread."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))

        async def process_request() -> HttpResponseBase:
            response = await self._respond_on_thread(scope, body_file)
            with contextlib.suppress(asyncio.CancelledError):  # the client left during the send
                await self.send_response(response, send)
            return response

        tasks = [
            # As in Django: the disconnect listener first, so that its end cancels the request's task.
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request()),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            await signals.request_finished.asend(sender=self.__class__)
        else:
            if response.streaming:
                await sync_to_async(response.close)()
        body_file.close()

    def _respond(self, scope: dict[str, Any], body_file: Any) -> HttpResponseBase:
        """On the request's thread: `request_started`, the request, Django's synchronous middleware chain
        and view; a response already in memory is also closed here (`request_finished`)."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size
        if not response.streaming:
            response.close()
        return response

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
