"""Socket.IO (Engine.IO v4 / Socket.IO v5) on `/backup-ws`, for front ends built on `socket.io-client`.

python-socketio speaks the protocol; this module gives it the plain protocol's events, names, payloads
and auth rules (frames from `protocol`, tokens from `auth`, the status from `consumers.realtime_status`).

Fan-out is the channel layer's, as for the plain consumers: one bridge task per server process holds a
channel in `events.GROUP` and re-emits each `backup.event` to the room of subscribed Socket.IO clients,
so both protocols see the same events, coalesced and ordered once by `events`, across processes when
Redis is behind the layer. No python-socketio client manager, which would be a second pub/sub path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import socketio
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib import auth as django_auth
from django.http import HttpRequest
from django.http.cookie import parse_cookie
from django.utils.module_loading import import_string
from redis.exceptions import TimeoutError as RedisTimeoutError

from backups import auth, events
from backups.realtime import protocol
from backups.realtime.consumers import realtime_status
from backups.realtime.routing import origin_allowed

logger = logging.getLogger(__name__)

SOCKETIO_PATH = "backup-ws"
ROOM = "backup-events"
ENGINE_CLOSE_GRACE = 1.0  # after a refusal, time for the error and DISCONNECT packets to be polled
BRIDGE_RETRY_SECONDS = (0.5, 10.0)  # first and longest wait between attempts to re-attach to the layer
# channels' layers forget a group member after `group_expiry` (a day by default); a bridge lives longer.
MEMBERSHIP_REFRESH_SECONDS = 3600.0

# python-socketio logs every packet at INFO; the service's log is for what an operator acts on.
for _name in ("socketio", "engineio"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

_ack_requested: ContextVar[bool] = ContextVar("socketio_ack_requested", default=False)


@dataclass
class _Client:
    eio_sid: str
    user_id: str | None = None
    subscribed: bool = False
    closing: bool = False
    deadline: asyncio.Task | None = None


class _Server(socketio.AsyncServer):
    async def _handle_event_internal(self, server, sid, eio_sid, data, namespace, id):
        # python-socketio sends a handler's return value as the ack when the client asked for one, but
        # does not tell the handler whether it did; the answer must go either to the ack or as an event.
        token = _ack_requested.set(id is not None)
        try:
            return await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
        finally:
            _ack_requested.reset(token)

    async def _handle_eio_message(self, eio_sid, data):
        # python-socketio logs a traceback for a packet it cannot decode (bad or deeply nested JSON, an
        # event that is not [name, ...]) and answers nothing; the protocol answers `error`, without a
        # traceback per hostile packet in the log.
        if eio_sid not in self._binary_packet and not _is_well_formed(self.packet_class, data):
            sid = self.manager.sid_from_eio_sid(eio_sid, "/")
            client = _clients.get(sid) if sid is not None else None
            if client is not None and client.user_id is None:
                await _refuse(sid, protocol.AUTH_FIRST)
            elif client is not None and not client.closing:
                await self.emit("error", {"message": protocol.MALFORMED_EVENT}, to=sid)
            return
        return await super()._handle_eio_message(eio_sid, data)

    async def _handle_eio_connect(self, eio_sid, environ):
        await super()._handle_eio_connect(eio_sid, environ)
        # A client may open Engine.IO and never connect a namespace, or linger after being refused.
        grace = settings.WS_AUTH_TIMEOUT_SECONDS + ENGINE_CLOSE_GRACE
        _spawn(_close_engine_unless_authenticated(eio_sid, grace))


def _is_well_formed(packet_class: Any, data: Any) -> bool:
    try:
        packet = packet_class(encoded_packet=data)
    except Exception:  # not JSON, nested too deep for the parser, an unknown packet type
        return False
    if packet.packet_type in (socketio.packet.EVENT, socketio.packet.BINARY_EVENT):
        return isinstance(packet.data, list) and bool(packet.data) and isinstance(packet.data[0], str)
    return True


def _cors_allowed(origin: str | None, environ: dict[str, Any]) -> bool:
    # The dispatcher already refused other origins; the same rule here only decides the CORS headers
    # of polling responses, so python-socketio never applies a second, different rule.
    return origin_allowed(origin, environ["asgi.scope"])


server = _Server(
    async_mode="asgi",
    cors_allowed_origins=_cors_allowed,
    # Cookies from a CORS origin only where the REST API allows them too (django-cors-headers' setting).
    cors_credentials=getattr(settings, "CORS_ALLOW_CREDENTIALS", False),
    # Connected at once, then judged: an `error` event can only reach a connected client.
    always_connect=True,
    # One client's events in the order it sent them (authenticate before subscribe).
    async_handlers=False,
    ping_interval=settings.WS_PING_INTERVAL_SECONDS,
    ping_timeout=settings.WS_PING_INTERVAL_SECONDS,
    max_http_buffer_size=protocol.MAX_FRAME_CHARS,
    cookie=None,
    logger=logging.getLogger("socketio"),
    engineio_logger=logging.getLogger("engineio"),
)
app = socketio.ASGIApp(server, socketio_path=SOCKETIO_PATH)

_clients: dict[str, _Client] = {}
_tasks: set[asyncio.Task] = set()


def _spawn(coroutine: Any) -> asyncio.Task:
    task = asyncio.get_running_loop().create_task(coroutine)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


# --- connection --------------------------------------------------------------------------------------


@server.on("connect")
async def _connect(sid: str, environ: dict[str, Any], auth_payload: Any = None) -> None:
    events.use_loop(asyncio.get_running_loop())
    bridge.ensure_running()
    client = _clients[sid] = _Client(eio_sid=server.manager.eio_sid_from_sid(sid, "/"))
    token = auth_payload.get("token") if isinstance(auth_payload, dict) else None
    if token is not None:
        if not isinstance(token, str) or not token:
            await _refuse(sid, protocol.AUTH_NEEDS_TOKEN)
            return
        answer = await _authenticate_with(sid, lambda: auth.verify_token(token))
        if answer is not None:
            await server.emit("authenticated", answer, to=sid)
        return
    header = environ.get("HTTP_AUTHORIZATION")
    if header:
        # Authenticated at once and silently, as on the plain protocol.
        await _authenticate_with(sid, lambda: auth.user_from_authorization(header))
        return
    username = await _session_superuser(environ.get("HTTP_COOKIE", ""))
    if username is not None:
        client.user_id = username
        return
    client.deadline = _spawn(_refuse_unless_authenticated(sid))


@server.on("disconnect")
async def _disconnect(sid: str, reason: Any = None) -> None:
    client = _clients.pop(sid, None)
    if client is not None and client.deadline is not None:
        client.deadline.cancel()


async def _refuse_unless_authenticated(sid: str) -> None:
    await asyncio.sleep(settings.WS_AUTH_TIMEOUT_SECONDS)
    client = _clients.get(sid)
    if client is not None and client.user_id is None:
        await _refuse(sid, protocol.AUTH_TIMED_OUT)


async def _refuse(sid: str, message: str) -> None:
    """The `error` event, then the disconnect (Socket.IO has no close codes: the message says why)."""
    client = _clients.get(sid)
    if client is None or client.closing:
        return
    client.closing = True
    await server.emit("error", {"message": message}, to=sid)
    await server.disconnect(sid)
    _spawn(_close_engine_unless_authenticated(client.eio_sid, ENGINE_CLOSE_GRACE))


async def _close_engine_unless_authenticated(eio_sid: str, delay: float) -> None:
    await asyncio.sleep(delay)
    if not any(c.eio_sid == eio_sid and c.user_id is not None and not c.closing for c in _clients.values()):
        with contextlib.suppress(Exception):
            await server.eio.disconnect(eio_sid)


async def _authenticate_with(sid: str, verify: Any) -> dict[str, Any] | None:
    """`authenticated`'s payload, or None after refusing the client."""
    try:
        # In a thread: with JWT_JWKS_URL the key fetch blocks, and the loop serves every socket.
        user = await asyncio.to_thread(verify)
    except auth.TokenRefused as error:
        await _refuse(sid, protocol.invalid_token(str(error)))
        return None
    if user is None:
        await _refuse(sid, protocol.AUTH_REQUIRED)
        return None
    if not user.is_super_admin:
        await _refuse(sid, protocol.SUPER_ADMIN_REQUIRED)
        return None
    client = _clients.get(sid)
    if client is None:
        return None
    client.user_id = user.id
    if client.deadline is not None:
        client.deadline.cancel()
    return {"user_id": user.id}


async def _session_superuser(cookie_header: str) -> str | None:
    """The admin site's session, as the plain consumer honours it: an active superuser, else None."""
    key = parse_cookie(cookie_header).get(settings.SESSION_COOKIE_NAME) if cookie_header else None
    if not key:
        return None
    return await database_sync_to_async(_superuser_of_session)(key)


def _superuser_of_session(key: str) -> str | None:
    request = HttpRequest()
    request.session = import_string(f"{settings.SESSION_ENGINE}.SessionStore")(key)
    user = django_auth.get_user(request)  # checks the session hash: a changed password logs it out
    if user.is_authenticated and user.is_active and user.is_superuser:
        return user.get_username()
    return None


async def close_sessions() -> None:
    """At shutdown: end every Engine.IO session with a CLOSE packet, so pending long-polls return at once
    and clients reconnect (to this server once restarted, or to another behind the proxy)."""
    for sock in list(server.eio.sockets.values()):
        with contextlib.suppress(Exception):
            await sock.close(wait=False)


# --- client events -----------------------------------------------------------------------------------


async def _answer(sid: str, event: str, data: dict[str, Any]) -> dict[str, Any]:
    """Through the ack when the client passed one, else as the event."""
    if not _ack_requested.get():
        await server.emit(event, data, to=sid)
    return data


def _data_of(args: tuple[Any, ...]) -> dict[str, Any] | None:
    if not args or (len(args) == 1 and args[0] is None):
        return {}
    if len(args) == 1 and isinstance(args[0], dict):
        return args[0]
    return None


@server.on("*")
async def _event(event: str, sid: str, *args: Any) -> dict[str, Any] | None:
    client = _clients.get(sid)
    if client is None or client.closing:
        return None
    if client.user_id is None and event != protocol.AUTHENTICATE:
        await _refuse(sid, protocol.AUTH_FIRST)
        return None
    data = _data_of(args)
    if data is None:
        await server.emit("error", {"message": protocol.MALFORMED_EVENT}, to=sid)
        return None
    if event == protocol.AUTHENTICATE:
        token = data.get("token")
        if not isinstance(token, str) or not token:
            if client.user_id is not None:
                return await _answer(sid, "authenticated", {"user_id": client.user_id})
            await _refuse(sid, protocol.AUTH_NEEDS_TOKEN)
            return None
        answer = await _authenticate_with(sid, lambda: auth.verify_token(token))
        return None if answer is None else await _answer(sid, "authenticated", answer)
    if event == protocol.SUBSCRIBE:
        if not client.subscribed:
            await server.enter_room(sid, ROOM)
            client.subscribed = True
        if not await bridge.wait_attached(2.0):
            bridge.outage_told = True
            await server.emit("error", {"message": protocol.LAYER_DOWN_RESUMING}, to=sid)
        return await _answer(sid, "subscribed", {})
    if event == protocol.GET_STATUS:
        status = await database_sync_to_async(realtime_status)()
        return await _answer(sid, "realtime-status", status)
    await server.emit("error", protocol.unknown_event(event)["data"], to=sid)
    return None


# --- fan-out -----------------------------------------------------------------------------------------


class _Bridge:
    """One channel of this process in `events.GROUP`, re-emitted to the Socket.IO room. Started on the
    loop of the first Socket.IO connection; a layer outage is logged and retried with a growing wait,
    and the subscribed clients are told, without being disconnected (their client would not reconnect
    by itself after a server-side disconnect)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None
        self.attached: asyncio.Event | None = None
        self.outage_told = False  # clients heard of an outage: tell them when events flow again

    def ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self.task is not None and self.loop is loop and not self.task.done():
            return
        self.loop = loop
        self.attached = asyncio.Event()
        self.task = loop.create_task(self._run(self.attached), name="socketio-bridge")

    async def wait_attached(self, timeout: float) -> bool:
        attached = self.attached
        if attached is None:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(attached.wait(), timeout)
        return attached.is_set()

    async def _run(self, attached: asyncio.Event) -> None:
        wait, longest = BRIDGE_RETRY_SECONDS
        while True:
            layer = get_channel_layer()
            refresher: asyncio.Task | None = None
            try:
                channel = await layer.new_channel()
                await layer.group_add(events.GROUP, channel)
                refresher = asyncio.get_running_loop().create_task(self._keep_membership(layer, channel))
                attached.set()
                if self.outage_told:
                    self.outage_told = False
                    logger.info("Socket.IO fan-out attached to the channel layer again")
                    back = {"level": "warning", "message": protocol.LAYER_BACK}
                    await self._emit(events.SYSTEM_NOTIFICATION, back)
                wait = BRIDGE_RETRY_SECONDS[0]
                while True:
                    try:
                        message = await layer.receive(channel)
                    except RedisTimeoutError:
                        if _cancelling():
                            raise asyncio.CancelledError from None
                        # redis-py's default socket timeout (5 s) equals channels_redis' BZPOPMIN
                        # timeout, so an idle read can time out on the client: that is no outage.
                        continue
                    if message.get("type") == "backup.event" and isinstance(message.get("event"), str):
                        await self._emit(message["event"], message.get("data") or {})
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis down or gone: log, tell the clients once, retry
                if _cancelling():
                    # redis-py turns a cancellation during a blocking read into a TimeoutError, and
                    # retrying it would keep the loop from ever shutting down.
                    raise asyncio.CancelledError from error
                logger.warning(
                    "Socket.IO fan-out lost the channel layer; retrying in %.1f s: %s",
                    wait,
                    type(error).__name__,
                )
                if attached.is_set():
                    attached.clear()
                    self.outage_told = True
                    await self._emit("error", {"message": protocol.LAYER_DOWN_RESUMING})
            finally:
                if refresher is not None:
                    refresher.cancel()
            await asyncio.sleep(wait)
            wait = min(wait * 2, longest)

    @staticmethod
    async def _keep_membership(layer: Any, channel: str) -> None:
        while True:
            await asyncio.sleep(MEMBERSHIP_REFRESH_SECONDS)
            with contextlib.suppress(Exception):  # an outage is the receive loop's to notice
                await layer.group_add(events.GROUP, channel)

    @staticmethod
    async def _emit(event: str, data: dict[str, Any]) -> None:
        try:
            await server.emit(event, data, to=ROOM)
        except Exception:  # one client's broken transport must not stop the fan-out
            logger.warning("could not emit %s to Socket.IO clients", event, exc_info=True)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


bridge = _Bridge()
