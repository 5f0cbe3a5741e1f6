"""The WebSocket protocol through the full ASGI application with Channels' WebsocketCommunicator."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from backup_platform.asgi import application
from backups import events

pytestmark = [pytest.mark.django_db(transaction=True)]


def connect(headers: list[tuple[bytes, bytes]] | None = None) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, "/backup-ws", headers=headers or [])


async def send(ws: WebsocketCommunicator, event: str, data: dict | None = None) -> None:
    await ws.send_json_to({"event": event, "data": data or {}})


async def closed_with(ws: WebsocketCommunicator) -> int:
    while True:
        message = await ws.receive_output(timeout=5)
        if message["type"] == "websocket.close":
            return message["code"]


async def test_authenticate_subscribe_and_status(make_token, backup_root):
    ws = connect()
    assert (await ws.connect())[0]
    await send(ws, "authenticate", {"token": make_token({"userId": "u-1", "role": ["SUPER_ADMIN"]})})
    assert await ws.receive_json_from() == {"event": "authenticated", "data": {"user_id": "u-1"}}
    await send(ws, "subscribe-backup-events")
    assert await ws.receive_json_from() == {"event": "subscribed", "data": {}}
    await send(ws, "get-realtime-status")
    frame = await ws.receive_json_from()
    assert frame["event"] == "realtime-status"
    assert set(frame["data"]) >= {
        "running",
        "current_run",
        "last_backup",
        "backups",
        "disk",
        "script",
        "config",
    }
    await ws.disconnect()


async def test_events_reach_every_subscribed_client_and_not_the_others(make_token, backup_root):
    token = make_token()
    clients = [connect() for _ in range(3)]
    for index, ws in enumerate(clients):
        await ws.connect()
        await send(ws, "authenticate", {"token": token})
        await ws.receive_json_from()
        if index < 2:
            await send(ws, "subscribe-backup-events")
            await ws.receive_json_from()
    events.broadcast(events.SYSTEM_NOTIFICATION, {"level": "info", "message": "hello"})
    for ws in clients[:2]:
        assert await ws.receive_json_from(timeout=3) == {
            "event": "system-notification",
            "data": {"level": "info", "message": "hello"},
        }
    assert await clients[2].receive_nothing(timeout=0.3)
    for ws in clients:
        await ws.disconnect()


async def test_progress_is_coalesced_but_the_last_state_and_order_are_kept(make_token, backup_root):
    ws = connect()
    await ws.connect()
    await send(ws, "authenticate", {"token": make_token()})
    await ws.receive_json_from()
    await send(ws, "subscribe-backup-events")
    await ws.receive_json_from()
    for percent in range(1, 1001):
        events.broadcast(
            events.BACKUP_PROGRESS, events.progress_payload("r1", "b1", percent // 10, "s", str(percent))
        )
    events.broadcast(
        events.BACKUP_COMPLETED, {"run_id": "r1", "backup_id": "b1", "size_bytes": 1, "duration_seconds": 1.0}
    )
    frames = []
    while True:
        frame = await ws.receive_json_from(timeout=3)
        frames.append(frame)
        if frame["event"] == "backup-completed":
            break
    progress = [f["data"]["message"] for f in frames if f["event"] == "backup-progress"]
    assert 1 <= len(progress) < 50
    assert progress[-1] == "1000"
    await ws.disconnect()


async def test_bearer_header_on_the_handshake_authenticates_at_once(make_token, backup_root):
    ws = connect([(b"authorization", f"Bearer {make_token()}".encode())])
    await ws.connect()
    await send(ws, "subscribe-backup-events")
    assert (await ws.receive_json_from())["event"] == "subscribed"
    await ws.disconnect()


async def test_bad_token_gets_an_error_then_4401(backup_root):
    ws = connect()
    await ws.connect()
    await send(ws, "authenticate", {"token": "not-a-jwt"})
    assert (await ws.receive_json_from())["event"] == "error"
    assert await closed_with(ws) == 4401


async def test_token_without_super_admin_is_closed_4403(make_token, backup_root):
    ws = connect()
    await ws.connect()
    await send(ws, "authenticate", {"token": make_token({"sub": "x", "role": "ADMIN"})})
    assert await closed_with(ws) == 4403


async def test_anything_before_authenticate_is_an_error_and_4401(backup_root):
    ws = connect()
    await ws.connect()
    await send(ws, "subscribe-backup-events")
    assert (await ws.receive_json_from())["event"] == "error"
    assert await closed_with(ws) == 4401


async def test_no_authenticate_within_the_deadline_closes_4408(settings, backup_root):
    settings.WS_AUTH_TIMEOUT_SECONDS = 0.3
    ws = connect()
    await ws.connect()
    assert await closed_with(ws) == 4408


async def test_malformed_and_unknown_frames_keep_the_connection(make_token, backup_root):
    ws = connect()
    await ws.connect()
    await send(ws, "authenticate", {"token": make_token()})
    await ws.receive_json_from()
    for raw in ("{not json", "[]", '{"event": 5}', '{"event": "x", "data": 3}', '"str"'):
        await ws.send_to(text_data=raw)
        frame = await ws.receive_json_from()
        assert frame["event"] == "error" and frame["data"]["message"]
    await send(ws, "make-coffee")
    assert "unknown event" in (await ws.receive_json_from())["data"]["message"]
    await send(ws, "subscribe-backup-events")
    assert (await ws.receive_json_from())["event"] == "subscribed"
    await ws.disconnect()


def with_scheme(app, scheme: str):
    async def wrapped(scope, receive, send):
        return await app({**scope, "scheme": scheme}, receive, send)

    return wrapped


@pytest.mark.parametrize(
    "origin, host, scheme, accepted",
    [
        (None, "backups.example.test", "wss", True),  # scripts and services send no Origin
        ("https://backups.example.test", "backups.example.test", "wss", True),
        ("https://admin.example.test", "backups.example.test", "wss", True),  # CORS_ALLOWED_ORIGINS
        ("http://backups.example.test", "backups.example.test", "wss", False),  # other scheme
        ("https://backups.example.test:8443", "backups.example.test", "wss", False),  # other port
        ("http://localhost:9999", "localhost:6027", "ws", False),  # another local port, same host
        ("http://localhost:6027", "localhost:6027", "ws", True),
        ("https://localhost:6027", "localhost:6027", "ws", False),
        ("https://evil.example.test", "backups.example.test", "wss", False),
        ("https://evil.example.test", "evil.example.test", "wss", False),  # DNS rebinding: Host not allowed
    ],
)
async def test_browser_origin_must_be_the_servers_own_or_a_cors_origin(
    origin, host, scheme, accepted, settings, backup_root
):
    settings.ALLOWED_HOSTS = ["backups.example.test", "localhost"]
    settings.CORS_ALLOWED_ORIGINS = ["https://admin.example.test"]
    headers = [(b"host", host.encode())] + ([(b"origin", origin.encode())] if origin else [])
    ws = WebsocketCommunicator(with_scheme(application, scheme), "/backup-ws", headers=headers)
    connected, _ = await ws.connect()
    assert connected is accepted, (origin, host, scheme)
    if connected:
        await ws.disconnect()


async def test_behind_a_proxy_the_forwarded_scheme_is_the_servers(settings, backup_root):
    settings.ALLOWED_HOSTS = ["backups.example.test"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    for origin, accepted in (
        (b"https://backups.example.test", True),
        (b"http://backups.example.test", False),
    ):
        headers = [(b"host", b"backups.example.test"), (b"x-forwarded-proto", b"https"), (b"origin", origin)]
        ws = WebsocketCommunicator(application, "/backup-ws", headers=headers)
        connected, _ = await ws.connect()
        assert connected is accepted, origin
        if connected:
            await ws.disconnect()


async def test_admin_session_is_authenticated_without_a_token(backup_root):
    from django.contrib.auth.models import User
    from django.test import Client

    await database_sync_to_async(User.objects.create_superuser)("root", "", "pw-123456")
    client = Client()
    await database_sync_to_async(client.login)(username="root", password="pw-123456")
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    ws = connect([(b"cookie", cookie)])
    await ws.connect()
    await send(ws, "subscribe-backup-events")
    assert (await ws.receive_json_from())["event"] == "subscribed"
    await ws.disconnect()
    await asyncio.sleep(0)


async def test_an_unreachable_redis_layer_gets_an_error_and_close_1011(settings, backup_root):
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        }
    }
    channel_layers.backends.clear()
    try:
        ws = connect()
        await ws.connect(timeout=10)
        frame = await ws.receive_json_from(timeout=10)
        assert frame["event"] == "error" and "unavailable" in frame["data"]["message"]
        assert await closed_with(ws) == 1011
    finally:
        channel_layers.backends.clear()


async def test_deeply_nested_json_is_malformed_not_fatal(make_token, backup_root):
    ws = connect()
    await ws.connect()
    await send(ws, "authenticate", {"token": make_token()})
    await ws.receive_json_from()
    await ws.send_to(text_data="[" * 60000)
    assert (await ws.receive_json_from())["event"] == "error"
    await send(ws, "subscribe-backup-events")
    assert (await ws.receive_json_from())["event"] == "subscribed"
    await ws.disconnect()
