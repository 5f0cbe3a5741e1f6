"""The dashboard hears retention deletions, a stale backup and a failed verification as
`system-notification` events, through the full ASGI application."""

from __future__ import annotations

from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from backup_platform.asgi import application
from backups.audit import Actor
from backups.catalogue import sync
from backups.config.services import config_update
from backups.notifications.step import check_stale
from backups.retention.services import retention_apply
from tests.conftest import make_backup
from tests.verification.failing import record_failed_verification

pytestmark = pytest.mark.django_db(transaction=True)


async def subscribed(token: str) -> WebsocketCommunicator:
    ws = WebsocketCommunicator(application, "/backup-ws")
    await ws.connect()
    await ws.send_json_to({"event": "authenticate", "data": {"token": token}})
    await ws.receive_json_from()
    await ws.send_json_to({"event": "subscribe-backup-events", "data": {}})
    await ws.receive_json_from()
    return ws


async def notification(ws: WebsocketCommunicator, containing: str) -> dict:
    while True:
        frame = await ws.receive_json_from(timeout=5)
        if frame["event"] == "system-notification" and containing in frame["data"]["message"]:
            return frame["data"]


@database_sync_to_async
def prepare(root) -> None:
    for day in (1, 2, 3):
        make_backup(root, f"backup-202601{day:02d}_030000")
    sync.sync()
    config_update(
        document={"retention": {"daily": 1, "weekly": 0, "monthly": 0}}, actor=Actor("admin"), partial=True
    )


async def test_retention_stale_and_verification_failures_reach_the_dashboard(make_token, backup_root):
    await prepare(backup_root)
    ws = await subscribed(make_token())

    await database_sync_to_async(retention_apply)(actor=Actor("admin"))
    event = await notification(ws, "Retention deleted")
    assert event["level"] == "info"
    assert "backup-20260102_030000" in event["message"] and "backup-20260101_030000" in event["message"]

    now = timezone.now()
    await database_sync_to_async(check_stale)(now=now)
    await database_sync_to_async(check_stale)(now=now + timedelta(days=400))
    event = await notification(ws, "No successful backup")
    assert event["level"] == "error"

    await database_sync_to_async(record_failed_verification)("backup-20260103_030000")
    event = await notification(ws, "Verification (quick) of backup-20260103_030000 failed")
    assert event["level"] == "error" and "db.sql: digest mismatch" in event["message"]
    await ws.disconnect()
