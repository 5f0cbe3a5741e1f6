"""Request ids, and the per-client rate limit (`RATE_LIMIT`, default 200/15m).

Each middleware here works in both modes. The server runs Django's synchronous chain on the request's
thread (`backups.asgi_threads`), so there they run sync, the rate limit's cache calls included; the
async mode serves an ASGI handler with Django's own async chain, where they run on the event loop and
the rate limit's cache calls go to the request's thread unless the cache is the process's memory.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django_ratelimit.core import get_usage

from backups import auth
from backups.logging import request_id

logger = logging.getLogger("backups.request")
SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
EXEMPT_PREFIXES = ("/health", "/metrics", "/static/")  # scrapes and probes are not users


class BothModes:
    """A middleware that runs sync or async, whichever the handler it wraps is."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)


class RequestIdMiddleware(BothModes):
    def __call__(self, request: HttpRequest):
        if self.is_async:
            return self._acall(request)
        value, token, started = self._begin(request)
        try:
            response = self.get_response(request)
        finally:
            request_id.reset(token)
        return self._end(request, response, value, started)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        value, token, started = self._begin(request)
        try:
            response = await self.get_response(request)
        finally:
            request_id.reset(token)
        return self._end(request, response, value, started)

    def _begin(self, request: HttpRequest):
        incoming = request.headers.get("X-Request-ID", "")
        value = incoming if SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        return value, request_id.set(value), time.monotonic()

    def _end(self, request: HttpRequest, response: HttpResponse, value: str, started: float) -> HttpResponse:
        response["X-Request-ID"] = value
        if not request.path.startswith(EXEMPT_PREFIXES):
            logger.info(
                "%s %s %s",
                request.method,
                request.path,
                response.status_code,
                extra={
                    "request_id": value,
                    "status": response.status_code,
                    "duration_ms": round((time.monotonic() - started) * 1000, 1),
                },
            )
        return response


def rate_limit_key(group: str, request: HttpRequest) -> str:
    """The user id of a valid token, else the client's address. Verifying costs microseconds (HMAC)."""
    try:
        user = auth.user_from_authorization(request.headers.get("Authorization"), request)
    except Exception:
        # Any token that does not verify counts against its client's address; it must never reach the
        # cache-outage path below, which lets requests through.
        user = None
    if user is not None:
        return f"user:{user.id}"
    return f"ip:{request.META.get('REMOTE_ADDR', '')}"


class RateLimitMiddleware(BothModes):
    """Fixed windows counted in the cache: Redis (shared by every process, atomic `incr`) in
    production, the process's memory in the embedded single-process mode."""

    def __init__(self, get_response: Callable) -> None:
        super().__init__(get_response)
        self.rate = f"{settings.RATE_LIMIT_COUNT}/{settings.RATE_LIMIT_PERIOD}s"

    def __call__(self, request: HttpRequest):
        if self.is_async:
            return self._acall(request)
        if request.path.startswith(EXEMPT_PREFIXES) or request.method == "OPTIONS":
            return self.get_response(request)
        usage = self._usage(request)
        refusal = self._refusal(usage)
        return refusal or self._with_headers(self.get_response(request), usage)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(EXEMPT_PREFIXES) or request.method == "OPTIONS":
            return await self.get_response(request)
        if isinstance(caches[getattr(settings, "RATELIMIT_USE_CACHE", "default")], LocMemCache):
            usage = self._usage(request)  # a dict in this process's memory: no I/O to move off the loop
        else:
            usage = await sync_to_async(self._usage)(request)
        refusal = self._refusal(usage)
        return refusal or self._with_headers(await self.get_response(request), usage)

    def _usage(self, request: HttpRequest) -> dict | None:
        # The key is settled first, so that the only failures the try below can see are the cache's.
        key = rate_limit_key("api", request)
        try:
            return get_usage(request, group="api", key=lambda *_: key, rate=self.rate, increment=True)
        except Exception:
            # The shared cache is down: answer rather than lock every admin out (fail open, logged).
            logger.warning("rate limit cache unavailable; request let through", exc_info=True)
            return None

    @staticmethod
    def _refusal(usage: dict | None) -> HttpResponse | None:
        if usage and usage["should_limit"]:
            retry_after = max(1, int(usage["time_left"]))
            response = JsonResponse(
                {"detail": f"Request was throttled. Expected available in {retry_after} seconds."}, status=429
            )
            response["Retry-After"] = str(retry_after)
            return response
        return None

    @staticmethod
    def _with_headers(response: HttpResponse, usage: dict | None) -> HttpResponse:
        if usage:
            response["X-RateLimit-Limit"] = str(usage["limit"])
            response["X-RateLimit-Remaining"] = str(max(0, usage["limit"] - usage["count"]))
        return response


class DatabaseUnavailableMiddleware(BothModes):
    """A database outage (PostgreSQL restarting) is a 503 with Retry-After, not a 500: clients retry,
    and the next request reconnects (CONN_HEALTH_CHECKS) without restarting the service."""

    def __call__(self, request: HttpRequest):
        return self.get_response(request)  # a coroutine in async mode, returned as it is

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        logger.error("database unavailable: %s", type(exception).__name__)
        response = JsonResponse(
            {"detail": "The database is unavailable; try again in a few seconds."}, status=503
        )
        response["Retry-After"] = "5"
        return response
