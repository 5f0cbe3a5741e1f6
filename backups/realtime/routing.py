"""Who may open `/backup-ws`: the Origin rule."""

from __future__ import annotations

from typing import Any

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest
from django.urls import re_path

from backups.realtime.consumers import BackupEventsConsumer

websocket_urlpatterns = [re_path(r"^backup-ws/?$", BackupEventsConsumer.as_asgi())]


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


class BrowserOriginValidator:
    """Channels' own validator also refuses clients that send no Origin at all, and ignores the scheme
    and the port; this one applies `origin_allowed`."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if origin_allowed(origin_of(scope), scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
