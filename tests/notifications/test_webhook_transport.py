"""The webhook transport against a real HTTP receiver on loopback that verifies the Standard Webhooks
signature with the `standardwebhooks` library, as any receiver would."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from backups.notifications.messages import channel_test, new_message_id
from backups.notifications.transports import (
    TransportError,
    WebhookTransport,
    deliver,
    standard_secret,
    webhook_key,
)
from tests.notifications.loopback import Reply
from tests.servers import free_port

SECRET = "whsec_" + base64.b64encode(b"a secret of thirty-two bytes!!!!").decode()


def a_test():
    return channel_test(message_id=new_message_id(), timestamp=datetime.now(UTC))


def verify(received, secret=SECRET):
    return Webhook(secret).verify(received.body, received.headers)


def test_signed_delivery_survives_a_5xx_and_a_429_and_is_verified_by_the_receiver(
    receiver, failed_run_message
):
    receiver.script(Reply(503, body=b"upstream down"), Reply(429, headers={"Retry-After": "7"}))
    transport = WebhookTransport(receiver.base + "/hooks/backup", SECRET)

    first = deliver(transport, failed_run_message)
    assert (first.ok, first.retryable, first.status_code, first.retry_after) == (False, True, 503, None)
    assert first.detail == "HTTP 503: upstream down"
    second = deliver(transport, failed_run_message)
    assert (second.ok, second.retryable, second.status_code, second.retry_after) == (False, True, 429, 7.0)
    third = deliver(transport, failed_run_message)
    assert (third.ok, third.status_code, third.channel) == (True, 200, "webhook")
    assert third.latency_ms >= 0

    assert len(receiver.requests) == 3
    for request in receiver.requests:
        payload = verify(request)
        assert payload["type"] == "run.failed"
        assert payload["timestamp"] == "2026-11-30T03:04:12Z"
        assert payload["data"]["run"]["status"] == "failed"
        assert payload["data"]["run"]["error"].startswith("pg_dump: connection to postgres://app:****@db")
        assert request.headers["content-type"] == "application/json"
        assert request.path == "/hooks/backup"
    # One message, one id, whatever the number of attempts: the receiver's key to drop duplicates.
    assert {r.headers["webhook-id"] for r in receiver.requests} == {failed_run_message.id}
    assert receiver.requests[0].headers["webhook-signature"].startswith("v1,")


def test_a_tampered_body_or_another_secret_fails_verification(receiver):
    transport = WebhookTransport(receiver.base, SECRET)
    assert deliver(transport, channel_test(message_id="msg_1", timestamp=datetime.now(UTC))).ok
    request = receiver.requests[0]
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(request.body.replace(b"true", b"false"), request.headers)
    with pytest.raises(WebhookVerificationError):
        verify(request, "whsec_" + base64.b64encode(b"another secret").decode())


def test_a_raw_secret_signs_with_its_bytes_and_receivers_verify_with_its_whsec_form(receiver):
    raw = "correct horse battery staple"
    transport = WebhookTransport(receiver.base, raw)
    assert deliver(transport, channel_test(message_id=new_message_id(), timestamp=datetime.now(UTC))).ok
    assert standard_secret(raw) == "whsec_" + base64.b64encode(raw.encode()).decode()
    assert verify(receiver.requests[0], standard_secret(raw))["type"] == "test"
    # The library itself cannot take the raw string: it base64-decodes it.
    with pytest.raises((WebhookVerificationError, binascii.Error)):
        verify(receiver.requests[0], raw)


def test_a_whsec_secret_that_is_not_base64_is_refused_without_echoing_it():
    with pytest.raises(ValueError) as caught:
        webhook_key("whsec_not*base64!")
    assert "not*base64" not in str(caught.value)
    with pytest.raises(ValueError):
        webhook_key("")


def test_an_http_date_retry_after_is_read_as_seconds_from_now(receiver):
    later = datetime.now(UTC) + timedelta(seconds=120)
    receiver.script(Reply(503, headers={"Retry-After": format_datetime(later, usegmt=True)}))
    result = deliver(WebhookTransport(receiver.base, SECRET), channel_test(message_id="m", timestamp=later))
    assert result.retryable and 100 < result.retry_after <= 120


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_a_4xx_is_permanent(receiver, status):
    receiver.script(Reply(status, body=b"no such hook"))
    result = deliver(
        WebhookTransport(receiver.base, SECRET), channel_test(message_id="m", timestamp=datetime.now(UTC))
    )
    assert (result.ok, result.permanent, result.status_code) == (False, True, status)
    assert result.detail == f"HTTP {status}: no such hook"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_408_429_and_5xx_are_retryable(receiver, status):
    receiver.script(Reply(status))
    result = deliver(
        WebhookTransport(receiver.base, SECRET), channel_test(message_id="m", timestamp=datetime.now(UTC))
    )
    assert result.retryable and result.status_code == status


def test_a_redirect_is_not_followed_and_is_permanent(receiver):
    receiver.script(Reply(302, headers={"Location": receiver.base + "/elsewhere"}))
    result = deliver(
        WebhookTransport(receiver.base, SECRET), channel_test(message_id="m", timestamp=datetime.now(UTC))
    )
    assert result.permanent and result.status_code == 302 and "not followed" in result.detail
    assert [r.path for r in receiver.requests] == ["/"]


def test_a_receiver_slower_than_the_timeout_is_retryable(receiver):
    receiver.script(Reply(200, delay=1.5))
    transport = WebhookTransport(receiver.base, SECRET, timeout=0.3)
    result = deliver(transport, channel_test(message_id="m", timestamp=datetime.now(UTC)))
    assert (result.ok, result.retryable, result.detail) == (False, True, "timed out after 0.3 s")
    assert result.latency_ms < 1400


def test_nobody_listening_is_a_retryable_network_error():
    transport = WebhookTransport(f"http://127.0.0.1:{free_port()}/hook", SECRET)
    result = deliver(transport, channel_test(message_id="m", timestamp=datetime.now(UTC)))
    assert result.retryable and result.detail.startswith("network error")


def test_a_token_in_the_webhook_url_stays_out_of_the_result(receiver):
    receiver.script(Reply(404))
    transport = WebhookTransport(receiver.base + "/hook/s3cr3t-t0ken-value?key=also-secret-value", SECRET)
    result = deliver(transport, channel_test(message_id="m", timestamp=datetime.now(UTC)))
    assert "s3cr3t" not in result.target + result.detail and "also-secret" not in result.target


def test_notify_raises_the_transport_error_itself(receiver):
    receiver.script(Reply(410))
    with pytest.raises(TransportError) as caught:
        WebhookTransport(receiver.base, SECRET).notify(
            channel_test(message_id="m", timestamp=datetime.now(UTC))
        )
    assert caught.value.permanent and caught.value.status_code == 410


def test_the_body_is_the_contract_envelope(receiver):
    moment = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    deliver(WebhookTransport(receiver.base, SECRET), channel_test(message_id="msg_x", timestamp=moment))
    assert json.loads(receiver.requests[0].body) == {
        "type": "test",
        "timestamp": "2026-12-01T08:00:00Z",
        "data": {"test": True},
    }
    assert receiver.requests[0].headers["webhook-id"] == "msg_x"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1/"])
def test_only_http_urls_are_called(url):
    result = deliver(WebhookTransport(url, SECRET), a_test())
    assert result.permanent and result.detail == "only http and https URLs are called"
