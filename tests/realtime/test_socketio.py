"""Socket.IO on `/backup-ws` through the full ASGI application, in-process: the Origin rule, the auth
rules and deadlines, acks, and the fan-out through the channel layer next to plain WebSocket clients."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from backup_platform.asgi import application
from backups import events
from backups.realtime import protocol
from tests.realtime.engineio_polling import EngineIOPeer

pytestmark = [pytest.mark.django_db(transaction=True)]

WEBSOCKET_UPGRADE = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]


def peer(**options) -> EngineIOPeer:
    return EngineIOPeer(application, **options)


async def authenticated_peer(make_token, **options) -> EngineIOPeer:
    client = peer(**options)
    await client.connect({"token": make_token({"sub": "u-1", "role": "SUPER_ADMIN"})})
    assert await client.next_event() == ("authenticated", {"user_id": "u-1"})
    return client


async def test_handshake_follows_the_origin_rule_exactly(settings, backup_root):
    settings.ALLOWED_HOSTS = ["backups.example.test"]
    settings.CORS_ALLOWED_ORIGINS = ["https://admin.example.test"]
    own = {"host": "backups.example.test", "scheme": "https"}
    for origin, options, accepted in (
        (None, own, True),
        ("https://backups.example.test", own, True),
        ("https://admin.example.test", own, True),
        ("http://backups.example.test", own, False),  # same host, other scheme
        ("https://backups.example.test:8443", own, False),  # same host, other port
        ("https://evil.example.test", own, False),
        ("null", own, False),
        # DNS rebinding: the page's own name, pointed at this server, is not one of ALLOWED_HOSTS
        ("https://evil.example.test", {"host": "evil.example.test", "scheme": "https"}, False),
    ):
        headers = [(b"origin", origin.encode())] if origin else []
        client = peer(headers=headers, **options)
        status, response_headers, _ = await client.request("GET")
        assert (status == 200) is accepted, (origin, options, status)
        if accepted and origin:
            assert response_headers[b"Access-Control-Allow-Origin"] == origin.encode()
        if not accepted:
            assert status == 403


async def test_websocket_transport_follows_the_origin_rule(settings, backup_root):
    settings.ALLOWED_HOSTS = ["backups.example.test"]

    async def connects(origin: bytes) -> bool:
        ws = WebsocketCommunicator(
            with_scheme(application, "wss"),
            "/backup-ws/?EIO=4&transport=websocket",
            headers=[(b"host", b"backups.example.test"), (b"origin", origin), *WEBSOCKET_UPGRADE],
        )
        connected, _ = await ws.connect()
        if connected:
            await ws.disconnect()
        return connected

    assert await connects(b"https://backups.example.test")
    assert not await connects(b"https://backups.example.test:8443")
    assert not await connects(b"http://backups.example.test")


def with_scheme(app, scheme: str):
    async def wrapped(scope, receive, send):
        return await app({**scope, "scheme": scheme}, receive, send)

    return wrapped


async def test_auth_payload_authenticates_and_subscribe_answers(make_token, backup_root):
    client = await authenticated_peer(make_token)
    await client.emit("subscribe-backup-events", {})
    assert await client.next_event() == ("subscribed", {})


async def test_no_authentication_within_the_deadline_gets_an_error_then_a_disconnect(settings, backup_root):
    settings.WS_AUTH_TIMEOUT_SECONDS = 0.3
    client = peer()
    await client.connect()
    assert await client.next_event() == ("error", {"message": protocol.AUTH_TIMED_OUT})
    assert (await client.next_event())[0] == "disconnect"


async def test_an_engine_that_never_connects_a_namespace_is_closed(settings, backup_root):
    settings.WS_AUTH_TIMEOUT_SECONDS = 0.2
    client = peer()
    assert await client.open() == 200
    assert (await client.next_event(timeout=5))[0] == "close"


async def test_an_event_before_authenticate_is_refused(backup_root):
    client = peer()
    await client.connect()
    await client.emit("subscribe-backup-events", {})
    assert await client.next_event() == ("error", {"message": protocol.AUTH_FIRST})
    assert (await client.next_event())[0] == "disconnect"


async def test_a_bad_token_gets_an_error_then_a_disconnect(backup_root):
    client = peer()
    await client.connect()
    await client.emit("authenticate", {"token": "not-a-jwt"})
    name, data = await client.next_event()
    assert name == "error" and data["message"].startswith("invalid token")
    assert (await client.next_event())[0] == "disconnect"


async def test_a_token_without_super_admin_is_refused(make_token, backup_root):
    client = peer()
    await client.connect({"token": make_token({"sub": "x", "role": "ADMIN"})})
    assert await client.next_event() == ("error", {"message": protocol.SUPER_ADMIN_REQUIRED})
    assert (await client.next_event())[0] == "disconnect"


async def test_malformed_and_unknown_events_keep_the_connection(make_token, backup_root):
    client = await authenticated_peer(make_token)
    await client.emit("subscribe-backup-events", 5)
    assert await client.next_event() == ("error", {"message": protocol.MALFORMED_EVENT})
    await client.emit("subscribe-backup-events", {}, {})
    assert await client.next_event() == ("error", {"message": protocol.MALFORMED_EVENT})
    await client.emit("make-coffee", {})
    name, data = await client.next_event()
    assert name == "error" and "unknown event" in data["message"]
    await client.emit("subscribe-backup-events")
    assert await client.next_event() == ("subscribed", {})


async def test_undecodable_packets_get_an_error_and_the_connection_stays(make_token, backup_root):
    client = await authenticated_peer(make_token)
    for packet in (
        "42" + "[" * 30000,
        '42{"event": "x"}',
        "42[5]",
        '42["subscribe-backup-events"',
        "4garbage",
    ):
        await client.send(packet)
        assert await client.next_event() == ("error", {"message": protocol.MALFORMED_EVENT}), packet
    await client.emit("subscribe-backup-events")
    assert await client.next_event() == ("subscribed", {})


async def test_an_undecodable_packet_before_authenticate_is_refused(backup_root):
    client = peer()
    await client.connect()
    await client.send("42[5]")
    assert await client.next_event() == ("error", {"message": protocol.AUTH_FIRST})
    assert (await client.next_event())[0] == "disconnect"


async def test_status_goes_through_the_ack_when_one_is_asked_for_and_as_an_event_otherwise(
    make_token, backup_root
):
    client = await authenticated_peer(make_token)
    await client.emit("get-realtime-status", {}, ack_id=7)
    name, args = await client.next_event()
    assert name == "ack" and set(args[0]) >= {"running", "current_run", "backups", "disk", "script"}
    await client.emit("get-realtime-status")
    name, status = await client.next_event()
    assert name == "realtime-status" and status.keys() == args[0].keys()
    await client.emit("subscribe-backup-events", ack_id=8)
    assert await client.next_event() == ("ack", [{}])


async def test_bearer_header_on_the_handshake_authenticates_at_once(make_token, backup_root):
    client = peer(headers=[(b"authorization", f"Bearer {make_token()}".encode())])
    await client.connect()
    await client.emit("subscribe-backup-events")
    assert await client.next_event() == ("subscribed", {})


async def test_admin_session_is_authenticated_without_a_token(backup_root):
    from django.contrib.auth.models import User
    from django.test import Client

    await database_sync_to_async(User.objects.create_superuser)("root", "", "pw-123456")
    browser = Client()
    await database_sync_to_async(browser.login)(username="root", password="pw-123456")
    cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()
    client = peer(headers=[(b"cookie", cookie)])
    await client.connect()
    await client.emit("subscribe-backup-events")
    assert await client.next_event() == ("subscribed", {})


async def test_a_staff_session_that_is_not_superuser_must_authenticate(settings, backup_root):
    from django.contrib.auth.models import User
    from django.test import Client

    settings.WS_AUTH_TIMEOUT_SECONDS = 0.3
    await database_sync_to_async(User.objects.create_user)("staff", "", "pw-123456", is_staff=True)
    browser = Client()
    await database_sync_to_async(browser.login)(username="staff", password="pw-123456")
    client = peer(headers=[(b"cookie", f"sessionid={browser.cookies['sessionid'].value}".encode())])
    await client.connect()
    await client.emit("subscribe-backup-events")
    assert await client.next_event() == ("error", {"message": protocol.AUTH_FIRST})


async def test_both_protocols_receive_the_same_events_coalesced_and_in_order(make_token, backup_root):
    sio = await authenticated_peer(make_token)
    await sio.emit("subscribe-backup-events")
    assert await sio.next_event() == ("subscribed", {})
    ws = WebsocketCommunicator(application, "/backup-ws")
    await ws.connect()
    await ws.send_json_to({"event": "authenticate", "data": {"token": make_token()}})
    await ws.receive_json_from()
    await ws.send_json_to({"event": "subscribe-backup-events", "data": {}})
    await ws.receive_json_from()
    unsubscribed = await authenticated_peer(make_token)

    for percent in range(1, 1001):
        events.broadcast(
            events.BACKUP_PROGRESS, events.progress_payload("r1", "b1", percent // 10, "s", str(percent))
        )
    completed = {"run_id": "r1", "backup_id": "b1", "size_bytes": 1, "duration_seconds": 1.0}
    events.broadcast(events.BACKUP_COMPLETED, completed)

    plain = []
    while not plain or plain[-1]["event"] != "backup-completed":
        plain.append(await ws.receive_json_from(timeout=3))
    socketio_frames = []
    while not socketio_frames or socketio_frames[-1]["event"] != "backup-completed":
        name, data = await sio.next_event()
        socketio_frames.append({"event": name, "data": data})
    assert socketio_frames == plain
    progress = [f["data"]["message"] for f in plain if f["event"] == "backup-progress"]
    assert 1 <= len(progress) < 50 and progress[-1] == "1000"
    assert plain[-1]["data"] == completed

    events.broadcast(events.SYSTEM_NOTIFICATION, {"level": "info", "message": "marker"})
    assert await sio.next_event() == ("system-notification", {"level": "info", "message": "marker"})
    await unsubscribed.emit("get-realtime-status", ack_id=1)
    assert (await unsubscribed.next_event())[0] == "ack"  # nothing of the broadcasts came before it
    await ws.disconnect()


async def test_a_layer_outage_is_said_and_the_fan_out_comes_back_by_itself(settings, make_token, backup_root):
    from channels.layers import channel_layers

    working = settings.CHANNEL_LAYERS
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        }
    }
    channel_layers.backends.clear()
    try:
        client = await authenticated_peer(make_token)
        await client.emit("subscribe-backup-events")
        assert await client.next_event(timeout=6) == ("error", {"message": protocol.LAYER_DOWN_RESUMING})
        assert await client.next_event() == ("subscribed", {})
        settings.CHANNEL_LAYERS = working
        channel_layers.backends.clear()
        assert await client.next_event(timeout=15) == (
            "system-notification",
            {"level": "warning", "message": protocol.LAYER_BACK},
        )
        await asyncio.sleep(0)
        events.broadcast(events.SYSTEM_NOTIFICATION, {"level": "info", "message": "after"})
        assert await client.next_event() == ("system-notification", {"level": "info", "message": "after"})
    finally:
        settings.CHANNEL_LAYERS = working
        channel_layers.backends.clear()


@pytest.mark.redis
async def test_an_idle_redis_layer_is_not_taken_for_an_outage(settings, make_token, backup_root):
    """A blocking read on an idle Redis outlives redis-py's 5 s socket timeout: no `error`, events flow."""
    import socket

    from channels.layers import channel_layers

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 6379)) != 0:
            pytest.skip("no Redis server on 127.0.0.1:6379")
    working = settings.CHANNEL_LAYERS
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:6379/9"], "capacity": 1000, "expiry": 30},
        }
    }
    channel_layers.backends.clear()
    try:
        client = await authenticated_peer(make_token)
        await client.emit("subscribe-backup-events")
        assert await client.next_event() == ("subscribed", {})
        await asyncio.sleep(6.5)
        events.broadcast(events.SYSTEM_NOTIFICATION, {"level": "info", "message": "after a quiet while"})
        assert await client.next_event() == (
            "system-notification",
            {"level": "info", "message": "after a quiet while"},
        )
    finally:
        settings.CHANNEL_LAYERS = working
        channel_layers.backends.clear()


async def test_the_open_packet_announces_a_ping_every_30_seconds(backup_root):
    client = peer()
    assert await client.open() == 200
    assert client.open_packet["pingInterval"] == 30_000
    assert client.open_packet["pingTimeout"] == 30_000
    assert client.open_packet["upgrades"] == ["websocket"]


async def test_a_failed_run_and_a_jobs_events_reach_a_subscriber_as_they_were_broadcast(
    make_token, backup_root
):
    sio = await authenticated_peer(make_token)
    await sio.emit("subscribe-backup-events")
    assert await sio.next_event() == ("subscribed", {})
    failed = {"run_id": "r2", "error": "pg_dump: connection refused", "exit_code": 1}
    events.broadcast(events.BACKUP_ERROR, failed)
    assert await sio.next_event() == ("backup-error", failed)
    ended = {"run_id": "r3", "kind": "verify", "backup_id": "b1", "duration_seconds": 2.0}
    events.broadcast(events.JOB_COMPLETED, ended)
    assert await sio.next_event() == ("job-completed", ended)
