"""The outbox end to end with real receivers: a run's start and end become notifications with one
delivery per channel, delivered by the worker's step to a loopback HTTP receiver that verifies the
Standard Webhooks signature, a real SMTP server, Apprise `json://` and a monitor ping; retried with
back-off (the clock injected), failed at once when retrying cannot help."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import timedelta
from email import message_from_bytes, policy
from urllib.parse import parse_qs, urlsplit

import pytest
from django.utils import timezone
from standardwebhooks import Webhook

from backups.audit import Actor
from backups.config.selectors import config_current
from backups.config.services import config_update
from backups.models import Delivery, DeliveryStatus, Duty, Notification, Run, RunStatus
from backups.notifications import channels, messages
from backups.notifications.services import notify_offsite_failed, run_info
from backups.notifications.step import check_stale, deliver_due, notify_after_runs
from backups.runs.services import RunEnd, run_claim, run_enqueue, run_finish
from tests.notifications.loopback import Reply
from tests.verification.failing import record_failed_verification

pytestmark = pytest.mark.django_db

SECRET = "whsec_" + base64.b64encode(b"thirty-two bytes of webhook key!").decode()
OUTPUT = "\n".join(f"out: line {n} of the script" for n in range(1, 61))


@pytest.fixture
def configured(settings, backup_root, receiver):
    settings.WEBHOOK_SECRET = SECRET
    settings.NOTIFICATION_SOURCE = "db1"

    def configure(**notifications) -> None:
        config_update(document={"notifications": notifications}, actor=Actor("admin"), partial=True)

    return configure


@pytest.fixture
def smtp_settings(settings, smtp_server):
    settings.EMAIL_URL = f"smtp://127.0.0.1:{smtp_server.port}"
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = smtp_server.host, smtp_server.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.DEFAULT_FROM_EMAIL = "backups@db1.example.com"
    return smtp_server


def a_run(status: str = RunStatus.FAILED, **end) -> Run:
    run = run_enqueue(actor=Actor("admin"), description="nightly")
    assert run_claim(run=run, worker="test")
    run.refresh_from_db()
    facts = {"exit_code": 2, "error": "pg_dump: connection to postgres://app:hunter2@db/app refused"}
    if status == RunStatus.SUCCEEDED:
        facts = {"exit_code": 0, "error": ""}
    facts.update(end)
    run_finish(
        run=run,
        end=RunEnd(status, facts["exit_code"], facts["error"], OUTPUT, 60),
        percent=100 if status == RunStatus.SUCCEEDED else 40,
        stage=status,
        message="",
    )
    run.refresh_from_db()
    while notify_after_runs():
        pass
    return run


def deliveries(event: str | None = None) -> dict[str, Delivery]:
    rows = Delivery.objects.select_related("notification")
    if event:
        rows = rows.filter(notification__event=event)
    return {row.channel: row for row in rows}


def deliver_all(now=None) -> None:
    while deliver_due(now=now):
        pass


def test_a_run_is_told_to_every_channel_and_its_start_only_to_the_ping(configured, receiver):
    configured(
        webhook=receiver.base + "/hook",
        urls=[f"json://127.0.0.1:{receiver.port}/apprise"],
        healthcheckUrl=receiver.base + "/ping/5d1c",
    )
    run = a_run(RunStatus.FAILED)
    assert not Duty.objects.filter(name__startswith="notify").exists()
    assert set(deliveries("run.started")) == {"ping"}
    assert set(deliveries("run.failed")) == {"webhook", "apprise", "ping"}
    deliver_all()
    assert {d.status for d in Delivery.objects.all()} == {DeliveryStatus.DELIVERED}
    paths = [urlsplit(r.path).path for r in receiver.requests]
    assert paths == ["/ping/5d1c/start", "/hook", "/apprise", "/ping/5d1c/fail"]
    hook = receiver.requests[1]
    payload = Webhook(SECRET).verify(hook.body, hook.headers)
    assert payload["type"] == "run.failed" and payload["data"]["run"]["id"] == str(run.id)
    assert hook.headers["webhook-id"] == Notification.objects.get(event="run.failed").id
    assert "hunter2" not in hook.body.decode()
    assert parse_qs(urlsplit(receiver.requests[3].path).query)["rid"] == [str(run.id)]


def test_a_success_reaches_the_people_only_with_on_success_and_the_ping_always(configured, receiver):
    configured(webhook=receiver.base + "/hook", healthcheckUrl=receiver.base + "/ping")
    a_run(RunStatus.SUCCEEDED)
    assert set(deliveries("run.succeeded")) == {"ping"}
    configured(onSuccess=True)
    a_run(RunStatus.SUCCEEDED)
    assert Delivery.objects.filter(notification__event="run.succeeded", channel="webhook").count() == 1


def test_without_any_channel_nothing_is_written(configured):
    a_run(RunStatus.FAILED)
    assert not Notification.objects.exists() and not Duty.objects.filter(name__startswith="notify").exists()


def test_the_webhook_fails_twice_then_is_delivered_with_the_same_id_and_a_valid_signature(
    configured, receiver
):
    configured(webhook=receiver.base + "/hook")
    receiver.script(Reply(503, body=b"down"), Reply(429, headers={"Retry-After": "120"}))
    a_run(RunStatus.FAILED)
    t0 = timezone.now()
    assert deliver_due(now=t0) is True
    hook = Delivery.objects.get()
    assert (hook.status, hook.attempts, hook.last_status_code) == (DeliveryStatus.RETRYING, 1, 503)
    assert hook.last_error == "HTTP 503: down"
    assert timedelta(seconds=29) < hook.next_attempt_at - t0 < timedelta(seconds=31)
    assert deliver_due(now=t0 + timedelta(seconds=10)) is False  # not due yet
    t1 = t0 + timedelta(seconds=31)
    assert deliver_due(now=t1) is True
    hook.refresh_from_db()
    assert (hook.status, hook.attempts, hook.last_status_code) == (DeliveryStatus.RETRYING, 2, 429)
    assert hook.next_attempt_at - t1 >= timedelta(seconds=120)  # Retry-After is honoured
    assert deliver_due(now=t1 + timedelta(seconds=119)) is False
    assert deliver_due(now=t1 + timedelta(seconds=121)) is True
    hook.refresh_from_db()
    assert (hook.status, hook.attempts, hook.last_status_code) == (DeliveryStatus.DELIVERED, 3, 200)
    assert hook.delivered_at is not None and hook.latency_ms is not None
    ids = {request.headers["webhook-id"] for request in receiver.requests}
    assert ids == {hook.notification_id}
    for request in receiver.requests:
        assert Webhook(SECRET).verify(request.body, request.headers)["type"] == "run.failed"


def test_a_client_error_fails_at_once(configured, receiver):
    configured(webhook=receiver.base + "/hook")
    receiver.script(Reply(404, body=b"no such hook"))
    a_run(RunStatus.FAILED)
    deliver_all()
    hook = Delivery.objects.get()
    assert (hook.status, hook.attempts, hook.last_status_code) == (DeliveryStatus.FAILED, 1, 404)
    assert hook.next_attempt_at is None and "no such hook" in hook.last_error


def test_retries_give_up_a_day_after_the_first_attempt(configured, receiver):
    configured(webhook=receiver.base + "/hook")
    receiver.script(*[Reply(502) for _ in range(100)])
    a_run(RunStatus.FAILED)
    hook = Delivery.objects.get()
    first = now = timezone.now()
    while hook.status != DeliveryStatus.FAILED:
        assert deliver_due(now=now)
        hook.refresh_from_db()
        assert now - first <= timedelta(hours=24)
        if hook.next_attempt_at:
            now = hook.next_attempt_at
    assert hook.last_error.startswith("gave up after 24 h of retries: HTTP 502")
    assert 20 <= hook.attempts == len(receiver.requests) < 60


def test_missing_secrets_fail_the_delivery_at_once_and_say_which_variable(configured, settings, receiver):
    settings.WEBHOOK_SECRET = ""
    settings.EMAIL_URL = ""
    configured(webhook=receiver.base + "/hook", email=True, emailRecipients=["ops@example.com"])
    a_run(RunStatus.FAILED)
    deliver_all()
    rows = deliveries()
    assert rows["webhook"].status == rows["email"].status == DeliveryStatus.FAILED
    assert "WEBHOOK_SECRET is not set" in rows["webhook"].last_error
    assert "EMAIL_URL is not set" in rows["email"].last_error
    assert receiver.requests == []


def test_the_failure_email_reaches_a_real_smtp_server_with_the_error_and_the_output_tail(
    configured, smtp_settings
):
    configured(email=True, emailRecipients=["ops@example.com", "oncall@example.com"])
    run = a_run(RunStatus.FAILED)
    deliver_all()
    email = Delivery.objects.get()
    assert (email.channel, email.status, email.target) == (
        "email",
        DeliveryStatus.DELIVERED,
        "ops@example.com, oncall@example.com",
    )
    [(sender, recipients, raw)] = smtp_settings.handler.messages
    assert sender == "backups@db1.example.com" and recipients == ["ops@example.com", "oncall@example.com"]
    message = message_from_bytes(raw, policy=policy.default)
    assert message["Subject"].startswith("[db1] Backup failed: pg_dump: connection to postgres://app:****@db")
    text = message.get_body(("plain",)).get_content()
    assert "Error: " in text and f"Run: {run.id}" in text
    assert "line 60 of the script" in text and "line 11 of the script" in text
    assert "line 10 of the script" not in text
    assert "hunter2" not in raw.decode()
    assert "<pre" in message.get_body(("html",)).get_content()


def test_apprise_json_urls_reach_the_loopback_receiver_and_are_shown_masked(configured, receiver):
    url = f"json://127.0.0.1:{receiver.port}/apprise/hook?token=s3cr3t-token"
    configured(urls=[url])
    a_run(RunStatus.FAILED)
    deliver_all()
    apprise = Delivery.objects.get()
    assert apprise.status == DeliveryStatus.DELIVERED
    assert "s3cr3t" not in apprise.target and apprise.target.startswith(
        f"json://127.0.0.1:{receiver.port}/…#"
    )
    [request] = receiver.requests
    assert urlsplit(request.path).path == "/apprise/hook"
    assert json.loads(request.body)["type"] == "failure"


def test_a_url_removed_from_the_config_is_not_called_any_more(configured, receiver):
    configured(webhook=receiver.base + "/old")
    receiver.script(Reply(503))
    a_run(RunStatus.FAILED)
    deliver_due()
    configured(webhook=receiver.base + "/new")
    deliver_all(now=timezone.now() + timedelta(minutes=1))
    hook = Delivery.objects.get()
    assert hook.status == DeliveryStatus.FAILED and "no longer in the configuration" in hook.last_error
    assert [urlsplit(r.path).path for r in receiver.requests] == ["/old"]


def test_a_start_ping_not_sent_before_the_run_ended_is_dropped(configured, receiver):
    configured(healthcheckUrl=receiver.base + "/ping")
    receiver.script(Reply(503))
    run = run_enqueue(actor=Actor("admin"))
    run_claim(run=run, worker="test")
    notify_after_runs()
    deliver_due()
    Run.objects.filter(id=run.id).update(status=RunStatus.SUCCEEDED, finished_at=timezone.now())
    deliver_all(now=timezone.now() + timedelta(minutes=5))
    start = Delivery.objects.get(notification__event="run.started")
    assert start.status == DeliveryStatus.FAILED and "had ended" in start.last_error
    assert len(receiver.requests) == 1


def test_a_failed_verification_is_told_to_the_people(configured, receiver):
    configured(webhook=receiver.base + "/hook", healthcheckUrl=receiver.base + "/ping")
    record_failed_verification("backup-20261130_030000")
    assert set(deliveries("verification.failed")) == {"webhook"}
    deliver_all()
    payload = Webhook(SECRET).verify(receiver.requests[0].body, receiver.requests[0].headers)
    assert payload["data"]["backup_id"] == "backup-20261130_030000" and payload["data"]["level"] == "quick"


def test_a_failed_off_site_copy_is_told_to_the_people_but_not_to_the_webhook(configured, receiver):
    """The webhook's event types are the contract's closed list; `offsite.failed` is not on it."""
    configured(webhook=receiver.base + "/hook", urls=[f"json://127.0.0.1:{receiver.port}/apprise"])
    notify_offsite_failed(backup_id="backup-20261130_030000", error="bucket refused: AccessDenied")
    assert set(deliveries(messages.OFFSITE_FAILED)) == {"apprise"}
    deliver_all()
    assert [urlsplit(r.path).path for r in receiver.requests] == ["/apprise"]
    body = json.loads(receiver.requests[0].body)
    assert "backup-20261130_030000" in body["title"] + body["message"]
    assert "AccessDenied" in body["message"]


def test_the_stale_alert_is_raised_once_and_rearmed_by_the_next_success(configured, receiver):
    configured(webhook=receiver.base + "/hook", staleAfterHours=26)
    t0 = timezone.now()
    assert check_stale(now=t0) is False  # the first look: the watch starts now
    assert check_stale(now=t0 + timedelta(hours=25)) is False
    assert check_stale(now=t0 + timedelta(hours=27)) is True
    assert check_stale(now=t0 + timedelta(hours=28)) is False  # once
    assert Notification.objects.filter(event="backup.stale").count() == 1
    Run.objects.create(triggered_by="cli", status=RunStatus.SUCCEEDED, finished_at=t0 + timedelta(hours=30))
    assert check_stale(now=t0 + timedelta(hours=40)) is False
    assert check_stale(now=t0 + timedelta(hours=57)) is True  # 27 h after that success
    configured(staleAfterHours=0)
    assert check_stale(now=t0 + timedelta(hours=500)) is False
    assert Notification.objects.filter(event="backup.stale").count() == 2


def test_the_monitor_ping_hears_backup_runs_only(configured, receiver):
    configured(healthcheckUrl=receiver.base + "/ping", webhook=receiver.base + "/hook")
    run = a_run(RunStatus.FAILED)
    verify_run = dataclasses.replace(run_info(run), kind="verify")
    message = messages.run_finished(
        verify_run, message_id=messages.new_message_id(), timestamp=timezone.now()
    )
    assert [channel.name for channel in channels.for_message(message, config_current())] == ["webhook"]
