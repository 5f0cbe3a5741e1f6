"""Hostile input is a 4xx, never a 500: nested JSON, absurd ranges, signed tokens with broken time claims
(REST, the rate limiter and the WebSocket alike)."""

from __future__ import annotations

import time

import jwt
import pytest
from channels.testing import WebsocketCommunicator

from backup_platform.asgi import application
from tests.conftest import body_of, make_backup

pytestmark = pytest.mark.django_db

BACKUP = "backup-20260101_030000"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [100, 100_000])
@pytest.mark.parametrize(
    "method, path",
    [("post", "/api/backup/create"), ("put", "/api/backup/config"), ("patch", "/api/backup/config")],
)
def test_deeply_nested_json_is_400(api, backup_root, method, path, depth):
    body = '{"description": ' + nested(depth) + "}"
    response = getattr(api, method)(path, data=body, content_type="application/json")
    assert response.status_code == 400, response.content[:200]
    assert "nested" in response.json()["detail"]


def test_a_document_nested_a_few_levels_still_parses(api, backup_root):
    response = api.patch(
        "/api/backup/config", data='{"schedule": "30 2 * * *"}', content_type="application/json"
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "header, status, content",
    [
        ("bytes=" + "9" * 5000 + "-", 416, None),
        ("bytes=0-" + "9" * 5000, 206, b"0123456789"),
        ("bytes=-" + "9" * 5000, 206, b"0123456789"),
        ("bytes=" + "1" * 19 + "-" + "2" * 19, 416, None),
        ("bytes=" + "0" * 5000 + "3-4", 206, b"34"),
    ],
)
def test_absurd_range_numbers_are_not_a_server_error(api, backup_root, header, status, content):
    make_backup(backup_root, BACKUP, {"db.sql": "0123456789"})
    response = api.get(f"/api/backup/{BACKUP}/download?file=db.sql", HTTP_RANGE=header)
    assert response.status_code == status
    if content is not None:
        assert body_of(response) == content


def signed(settings, **claims) -> str:
    payload = {"sub": "intruder", "role": "SUPER_ADMIN", **claims}
    return jwt.encode(payload, settings.JWT_SECRET, algorithm="HS256")


BROKEN_TIME_CLAIMS = [
    {"exp": "9999999999"},
    {"exp": 1e30},
    {"exp": 10**30},
    {"exp": int(time.time()) + 600, "nbf": "0"},
    {"exp": int(time.time()) + 600, "iat": 1e30},
]


@pytest.mark.parametrize("claims", BROKEN_TIME_CLAIMS)
def test_a_signed_token_with_a_broken_time_claim_is_401(anonymous, backup_root, settings, claims):
    response = anonymous.get("/api/backup/status", HTTP_AUTHORIZATION=f"Bearer {signed(settings, **claims)}")
    assert response.status_code == 401
    assert "invalid" in response.json()["detail"].lower()


def test_tokens_with_broken_time_claims_are_rate_limited_like_any_other(anonymous, backup_root, settings):
    settings.RATE_LIMIT_COUNT, settings.RATE_LIMIT_PERIOD = 5, 900
    header = f"Bearer {signed(settings, exp='9999999999')}"
    codes = [anonymous.get("/api/backup/status", HTTP_AUTHORIZATION=header).status_code for _ in range(7)]
    assert codes == [401] * 5 + [429] * 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("claims", BROKEN_TIME_CLAIMS[:2])
async def test_a_signed_token_with_a_broken_time_claim_closes_the_websocket_with_4401(
    backup_root, settings, claims
):
    token = signed(settings, **claims)
    ws = WebsocketCommunicator(application, "/backup-ws")
    assert (await ws.connect())[0]
    await ws.send_json_to({"event": "authenticate", "data": {"token": token}})
    assert await _close_code(ws) == 4401
    ws = WebsocketCommunicator(
        application, "/backup-ws", headers=[(b"authorization", f"Bearer {token}".encode())]
    )
    connected, code = await ws.connect()
    if connected:
        code = await _close_code(ws)
    assert code == 4401


async def _close_code(ws: WebsocketCommunicator) -> int:
    while True:
        message = await ws.receive_output(timeout=5)
        if message["type"] == "websocket.close":
            return message["code"]
