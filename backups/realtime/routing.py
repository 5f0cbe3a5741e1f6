from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import validate_host
from django.urls import re_path

from backups.realtime.consumers import BackupEventsConsumer

websocket_urlpatterns = [re_path(r"^backup-ws/?$", BackupEventsConsumer.as_asgi())]


class BrowserOriginValidator:
    """A browser's Origin must be an allowed host or a CORS origin. Channels' own validator also refuses
    clients that send no Origin at all; scripts and services do not send one, and authenticate by token."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        origin = next(
            (value.decode("latin1") for key, value in scope.get("headers", []) if key == b"origin"), None
        )
        if origin is None or self.allowed(origin):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)

    @staticmethod
    def allowed(origin: str) -> bool:
        if origin in settings.CORS_ALLOWED_ORIGINS:
            return True
        try:
            parsed = urlparse(origin)
        except ValueError:
            return False
        if parsed.scheme not in {"http", "https"} or not parsed.hostname:
            return False
        host = parsed.hostname if ":" not in parsed.hostname else f"[{parsed.hostname}]"
        return validate_host(host, settings.ALLOWED_HOSTS)
