"""GET /api/backup/notifications/deliveries and POST /api/backup/notifications/test, with a real HTTP
receiver on loopback."""

from __future__ import annotations

import base64

import pytest
from django.utils import timezone
from standardwebhooks import Webhook

from backups.audit import Actor
from backups.config.services import config_update
from backups.models import AuditEvent, Delivery, DeliveryStatus
from backups.notifications import messages
from backups.notifications.services import notification_create
from tests.notifications.loopback import Reply

pytestmark = pytest.mark.django_db

SECRET = "whsec_" + base64.b64encode(b"thirty-two bytes of webhook key!").decode()
DELIVERIES = "/api/backup/notifications/deliveries"
TEST = "/api/backup/notifications/test"


@pytest.fixture
def channels(settings, backup_root, receiver):
    settings.WEBHOOK_SECRET = SECRET
    config_update(
        document={
            "notifications": {
                "webhook": receiver.base + "/hook",
                "urls": [f"json://127.0.0.1:{receiver.port}/apprise?token=s3cr3t-token"],
                "healthcheckUrl": receiver.base + "/ping",
            }
        },
        actor=Actor("admin"),
        partial=True,
    )
    return receiver


def test_the_test_sends_to_every_channel_now_and_answers_each_outcome(api, channels):
    channels.script(Reply(200), Reply(404, body=b"unknown topic"))
    response = api.post(TEST, {}, format="json")
    assert response.status_code == 200
    results = {result["channel"]: result for result in response.json()["results"]}
    assert set(results) == {"webhook", "apprise"}  # a ping would mark the monitor's check up
    outcomes = sorted((r["ok"], r["channel"]) for r in results.values())
    assert len([ok for ok, _ in outcomes if ok]) == 1  # the two requests run in parallel: either may win
    failed = next(r for r in results.values() if not r["ok"])
    assert "404" in failed["detail"]
    assert "s3cr3t" not in response.content.decode()
    hook = next(r for r in channels.requests if r.path == "/hook")
    assert Webhook(SECRET).verify(hook.body, hook.headers)["type"] == "test"

    rows = Delivery.objects.all()
    assert {(d.channel, d.status) for d in rows} == {
        (name, DeliveryStatus.DELIVERED if r["ok"] else DeliveryStatus.FAILED) for name, r in results.items()
    }
    assert all(d.attempts == 1 and d.next_attempt_at is None for d in rows)  # a test is never retried
    audit = AuditEvent.objects.get(action="notifications.test")
    assert audit.actor == "admin-1" and audit.outcome == "failed"


def test_the_test_without_channels_answers_no_results(api, backup_root):
    response = api.post(TEST)
    assert response.status_code == 200 and response.json() == {"results": []}


@pytest.mark.parametrize("body", [{"channel": "webhook"}, [1]])
def test_the_test_refuses_a_body_with_unknown_keys(api, backup_root, body):
    response = api.post(TEST, body, format="json")
    assert response.status_code == 400
    assert not Delivery.objects.exists()


def test_deliveries_are_listed_newest_first_paginated_and_filtered(api, channels):
    for _ in range(3):
        message = messages.channel_test(message_id=messages.new_message_id(), timestamp=timezone.now())
        notification_create(message)
    Delivery.objects.filter(channel="apprise").update(status=DeliveryStatus.FAILED, last_error="HTTP 404")
    page = api.get(DELIVERIES + "?page_size=4").json()
    assert page["count"] == 6 and len(page["results"]) == 4 and page["next"]
    row = page["results"][0]
    assert set(row) >= {
        "id",
        "event",
        "channel",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "created_at",
        "delivered_at",
    }
    assert row["event"] == "test"
    failed = api.get(DELIVERIES + "?status=failed").json()
    assert failed["count"] == 3 and {r["channel"] for r in failed["results"]} == {"apprise"}
    assert all("s3cr3t" not in r["target"] for r in failed["results"])
    assert api.get(DELIVERIES + "?channel=webhook").json()["count"] == 3
    assert api.get(DELIVERIES + "?status=lost").status_code == 400


def test_both_endpoints_need_the_super_admin_role(anonymous, backup_root):
    assert anonymous.get(DELIVERIES).status_code == 401
    assert anonymous.post(TEST).status_code == 401


def test_the_webhook_secret_never_leaves_the_service(api, channels):
    """Not in the config, the status, the deliveries, the audit, the test's answer, nor the request the
    receiver gets (it gets the signature only)."""
    key = SECRET.removeprefix("whsec_")
    channels.script(Reply(500, body=b"down"))
    answers = [api.post(TEST, {}, format="json")]
    for path in ("/api/backup/config", "/api/backup/status", DELIVERIES, "/health", "/metrics"):
        answers.append(api.get(path))
    for answer in answers:
        assert answer.status_code == 200, answer
        assert SECRET not in answer.content.decode() and key not in answer.content.decode()
    assert not [event for event in AuditEvent.objects.all() if key in str(event.details)]
    for request in channels.requests:
        assert key.encode() not in request.body and key not in str(request.headers)
