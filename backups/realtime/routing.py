"""Who may open `/backup-ws`, and which protocol answers: Socket.IO when the query carries `EIO`, the
plain WebSocket consumer otherwise. One Origin rule for both."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from urllib.parse import parse_qs

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest
from django.urls import re_path

from backups.realtime.consumers import BackupEventsConsumer

websocket_urlpatterns = [re_path(r"^backup-ws/?$", BackupEventsConsumer.as_asgi())]

REALTIME_PATH = re.compile(r"^/backup-ws/?$")


class _ScopeRequest(HttpRequest):
    """Just enough of a Django request, built from an ASGI scope, for Django's own `get_host()` (Host or
    X-Forwarded-Host per USE_X_FORWARDED_HOST, checked against ALLOWED_HOSTS) and `scheme` (the scope's
    scheme, or SECURE_PROXY_SSL_HEADER when it is set)."""

    def __init__(self, scope: dict[str, Any]) -> None:
        super().__init__()
        server = scope.get("server") or ("unknown", "0")
        self.META = {"SERVER_NAME": str(server[0]), "SERVER_PORT": str(server[1])}
        for key, value in scope.get("headers", []):
            name = "HTTP_" + key.decode("latin1").upper().replace("-", "_")
            text = value.decode("latin1")
            self.META[name] = f"{self.META[name]},{text}" if name in self.META else text
        self._scope_scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"

    def _get_scheme(self) -> str:
        return self._scope_scheme


def own_origin(scope: dict[str, Any]) -> str | None:
    """The server's origin as the client addressed it, the way Django's CSRF check builds it; None when
    the Host is not one of ALLOWED_HOSTS."""
    request = _ScopeRequest(scope)
    try:
        return f"{request.scheme}://{request.get_host()}"
    except DisallowedHost:
        return None


def origin_allowed(origin: str | None, scope: dict[str, Any]) -> bool:
    """The one Origin rule of `/backup-ws`, for both protocols. No Origin (scripts, services): allowed,
    they authenticate by token like everyone else. A browser's Origin must be exactly the server's own
    (scheme, host and port) or one of CORS_ALLOWED_ORIGINS: a page elsewhere, even on the same host with
    another port or scheme, must not ride on an admin's session cookie."""
    if origin is None:
        return True
    if origin in settings.CORS_ALLOWED_ORIGINS:
        return True
    own = own_origin(scope)
    return own is not None and origin == own


def origin_of(scope: dict[str, Any]) -> str | None:
    values = [value.decode("latin1") for key, value in scope.get("headers", []) if key == b"origin"]
    if not values:
        return None
    return values[0] if len(values) == 1 else ",".join(values)  # two Origin headers match nothing


def speaks_engineio(scope: dict[str, Any]) -> bool:
    """A request for Socket.IO: on the realtime path, with `EIO` in the query (every Engine.IO request
    carries it, the handshake and each poll)."""
    if not REALTIME_PATH.match(scope.get("path", "")):
        return False
    query = parse_qs(scope.get("query_string", b"").decode("latin1"))
    return "EIO" in query


class BrowserOriginValidator:
    """Channels' own validator also refuses clients that send no Origin at all, and ignores the scheme
    and the port; this one applies `origin_allowed`."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if origin_allowed(origin_of(scope), scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)


class RealtimeDispatcher:
    """Engine.IO requests (HTTP long-polling and WebSocket) to the Socket.IO app, after the Origin rule;
    everything else to `other` (Django for HTTP, the plain consumer for WebSockets)."""

    def __init__(self, socketio_app: Any, other: Any) -> None:
        self.socketio_app = socketio_app
        self.other = other

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if not speaks_engineio(scope):
            return await self.other(scope, receive, send)
        if origin_allowed(origin_of(scope), scope):
            if scope["type"] == "http":
                return await self._until_disconnect(scope, receive, send)
            return await self.socketio_app(scope, receive, send)
        if scope["type"] == "websocket":
            return await WebsocketDenier()(scope, receive, send)
        body = json.dumps({"detail": "This origin may not open /backup-ws."}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _until_disconnect(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Engine.IO never reads again during a long-poll, so it would not see the client leave: the poll
        of a closed tab held its task for a minute (ping interval + timeout), and every shutdown waited
        out uvicorn's graceful timeout for it. Here the request ends when its client does."""
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1)  # never more than one message ahead
        request = asyncio.ensure_future(self.socketio_app(scope, inbox.get, send))

        async def forward() -> None:
            while True:
                message = await receive()
                await inbox.put(message)
                if message["type"] == "http.disconnect":
                    request.cancel()  # a no-op once the response is out and the request returned
                    return

        forwarder = asyncio.ensure_future(forward())
        try:
            await request
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the server cancels this request: not ours to swallow
        finally:
            forwarder.cancel()
