"""The e-mail transport through Django's SMTP backend to a real SMTP server on loopback (aiosmtpd)."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy

import pytest
from django.core.mail.backends.smtp import EmailBackend

from backups.notifications.messages import channel_test, new_message_id
from backups.notifications.transports import EmailTransport, deliver
from tests.servers import free_port


def connection(server) -> EmailBackend:
    return EmailBackend(host=server.host, port=server.port, use_tls=False, use_ssl=False, timeout=5)


def parts(raw: bytes) -> dict[str, str]:
    message = message_from_bytes(raw, policy=policy.default)
    return {part.get_content_type(): part.get_content() for part in message.walk() if not part.is_multipart()}


def test_a_failed_run_arrives_in_plain_text_and_html_with_its_error_and_last_50_lines(
    smtp_server, failed_run_message
):
    transport = EmailTransport(
        ["ops@example.com", "oncall@example.com"], connection=connection(smtp_server), from_email="backup@db1"
    )
    result = deliver(transport, failed_run_message)
    assert result.ok and result.channel == "email" and result.detail == "sent to 2 recipient(s)"

    [(sender, recipients, raw)] = smtp_server.handler.messages
    assert sender == "backup@db1" and recipients == ["ops@example.com", "oncall@example.com"]
    message = message_from_bytes(raw, policy=policy.default)
    assert (
        message["Subject"]
        == "[db1] Backup failed: pg_dump: connection to postgres://app:****@db:5432/app refused <b>"
    )
    assert message["X-Backup-Event"] == "run.failed"
    assert message.get_content_type() == "multipart/alternative"
    body = parts(raw)
    assert set(body) == {"text/plain", "text/html"}
    text, page = body["text/plain"], body["text/html"]
    assert "Error: pg_dump: connection to postgres://app:****@db:5432/app refused <b>" in text
    assert "Last 50 lines of output:" in text
    assert "line 11 of the script" in text and "line 60 of the script" in text
    assert "line 10 of the script" not in text
    assert "hunter2" not in raw.decode()
    assert "refused &lt;b&gt;" in page and "refused <b>" not in page
    assert "<pre" in page and "line 60 of the script" in page


def test_a_refused_recipient_is_permanent(smtp_server):
    transport = EmailTransport(["nobody@example.com"], connection=connection(smtp_server), from_email="b@x")
    result = deliver(transport, channel_test(message_id=new_message_id(), timestamp=datetime.now(UTC)))
    assert (result.ok, result.permanent) == (False, True)
    assert "nobody@example.com: 550" in result.detail
    assert smtp_server.handler.messages == []


def test_a_greylisting_server_is_retried(smtp_server):
    transport = EmailTransport(["later@example.com"], connection=connection(smtp_server), from_email="b@x")
    result = deliver(transport, channel_test(message_id=new_message_id(), timestamp=datetime.now(UTC)))
    assert result.retryable and "451" in result.detail


def test_no_smtp_server_is_retryable():
    backend = EmailBackend(host="127.0.0.1", port=free_port(), timeout=2)
    transport = EmailTransport(["ops@example.com"], connection=backend, from_email="b@x")
    result = deliver(transport, channel_test(message_id=new_message_id(), timestamp=datetime.now(UTC)))
    assert result.retryable and "ConnectionRefusedError" in result.detail


@pytest.mark.parametrize("recipients", [[], ()])
def test_no_recipients_is_permanent(recipients, smtp_server):
    transport = EmailTransport(recipients, connection=connection(smtp_server))
    result = deliver(transport, channel_test(message_id=new_message_id(), timestamp=datetime.now(UTC)))
    assert result.permanent and result.detail == "no recipients configured"
