"""The plain WebSocket protocol on `/backup-ws`. Thin: frames come from `protocol`, auth and
status from the shared modules, the fan-out from `events`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from redis.exceptions import RedisError

from backups import auth, events
from backups.api.serializers.status import StatusSerializer
from backups.catalogue import sync
from backups.realtime import protocol
from backups.realtime.protocol import CLOSE_AUTH_TIMEOUT, CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED
from backups.status import documents

logger = logging.getLogger(__name__)


class BackupEventsConsumer(AsyncJsonWebsocketConsumer):
    user_id: str | None = None
    accepted = False
    subscribed = False
    closing = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # With Redis behind the layer, an outage surfaces here (new_channel, receive), outside any handler:
        # tell the client and close 1011 so it reconnects, instead of dropping it with a traceback.
        try:
            await super().__call__(scope, receive, send)
        except (OSError, RedisError) as error:
            logger.warning("channel layer unavailable; WebSocket closed: %s", type(error).__name__)
            with contextlib.suppress(Exception):
                if not self.accepted:  # the layer failed before connect(): a close code needs accept first
                    await send({"type": "websocket.accept"})
                error = protocol.error_frame(protocol.LAYER_DOWN)
                await send({"type": "websocket.send", "text": json.dumps(error)})
                await send({"type": "websocket.close", "code": protocol.CLOSE_LAYER_DOWN})

    async def connect(self) -> None:
        # Close codes reach the client only after accept(): accept first, then judge.
        await self.accept()
        self.accepted = True
        events.use_loop(asyncio.get_running_loop())
        self.deadline_task: asyncio.Task | None = None
        header = _header(self.scope, b"authorization")
        if header:
            # Authenticated at once and silently: the client's first frame gets its own answer.
            await self._authenticate_with(lambda: auth.user_from_authorization(header), announce=False)
            return
        session_user = self.scope.get("user")
        if session_user is not None and getattr(session_user, "is_superuser", False):
            self.user_id = session_user.get_username()
            return
        self.deadline_task = asyncio.create_task(self._close_if_not_authenticated())

    async def disconnect(self, code: int) -> None:
        self.closing = True
        if self.deadline_task:
            self.deadline_task.cancel()
        if self.subscribed:
            await self.channel_layer.group_discard(events.GROUP, self.channel_name)

    async def _close_if_not_authenticated(self) -> None:
        await asyncio.sleep(settings.WS_AUTH_TIMEOUT_SECONDS)
        if self.user_id is None and not self.closing:
            await self._refuse(CLOSE_AUTH_TIMEOUT, protocol.AUTH_TIMED_OUT)

    async def _refuse(self, code: int, message: str) -> None:
        if self.closing:
            return
        self.closing = True
        if code != CLOSE_FORBIDDEN:
            await self.send_json(protocol.error_frame(message))
        await self.close(code=code)

    async def _authenticate_with(self, verify: Any, announce: bool = True) -> None:
        try:
            # In a thread: with JWT_JWKS_URL the key fetch blocks, and the loop serves every socket.
            user = await asyncio.to_thread(verify)
        except auth.TokenRefused as error:
            await self._refuse(CLOSE_UNAUTHENTICATED, protocol.invalid_token(str(error)))
            return
        if user is None:
            await self._refuse(CLOSE_UNAUTHENTICATED, protocol.AUTH_REQUIRED)
            return
        if not user.is_super_admin:
            await self._refuse(CLOSE_FORBIDDEN, protocol.SUPER_ADMIN_REQUIRED)
            return
        self.user_id = user.id
        if self.deadline_task:
            self.deadline_task.cancel()
        if announce:
            await self.send_json(protocol.frame("authenticated", {"user_id": user.id}))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return
        frame = protocol.parse(text_data)
        event = frame.event if frame else protocol.event_name_of(text_data)
        if self.user_id is None and event != protocol.AUTHENTICATE:
            await self._refuse(CLOSE_UNAUTHENTICATED, protocol.AUTH_FIRST)
            return
        if frame is None:
            await self.send_json(protocol.error_frame(protocol.MALFORMED))
            return
        if frame.event == protocol.AUTHENTICATE:
            token = frame.data.get("token")
            if not isinstance(token, str) or not token:
                if self.user_id is not None:
                    await self.send_json(protocol.frame("authenticated", {"user_id": self.user_id}))
                    return
                await self._refuse(CLOSE_UNAUTHENTICATED, protocol.AUTH_NEEDS_TOKEN)
                return
            await self._authenticate_with(lambda: auth.verify_token(token))
        elif frame.event == protocol.SUBSCRIBE:
            if not self.subscribed:
                try:
                    await self.channel_layer.group_add(events.GROUP, self.channel_name)
                except Exception:  # the layer (Redis) is down: say so; the client reconnects later
                    logger.warning("channel layer unavailable on subscribe", exc_info=True)
                    await self.send_json(protocol.error_frame(protocol.LAYER_DOWN))
                    await self.close(code=protocol.CLOSE_LAYER_DOWN)
                    return
                self.subscribed = True
            await self.send_json(protocol.frame("subscribed"))
        elif frame.event == protocol.GET_STATUS:
            status = await database_sync_to_async(realtime_status)()
            await self.send_json(protocol.frame("realtime-status", status))
        else:
            await self.send_json(protocol.unknown_event(frame.event))

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels hops to a thread to close old DB connections before every handler; fan-out events
        # touch no database, and with 50 clients that hop per event per client was most of the latency.
        if message["type"] == "backup.event":
            await self.backup_event(message)
        else:
            await super().dispatch(message)

    async def backup_event(self, message: dict[str, Any]) -> None:
        """A group message from `events`: forward it as a frame."""
        if self.subscribed and not self.closing:
            await self.send_json({"event": message["event"], "data": message["data"]})


def realtime_status() -> dict[str, Any]:
    """The body of `realtime-status`: the same document as `GET /api/backup/status`."""
    sync.ensure_fresh()
    return StatusSerializer(documents.status()).data


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin1")
    return None
