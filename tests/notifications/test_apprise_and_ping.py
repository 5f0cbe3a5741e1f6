"""Apprise with a `json://` URL at the loopback receiver, and the monitor pings healthchecks.io and
Uptime Kuma expect."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from backups.notifications.messages import (
    RunInfo,
    channel_test,
    new_message_id,
    run_finished,
    run_started,
)
from backups.notifications.transports import AppriseTransport, PingTransport, deliver, ping_request
from tests.notifications.loopback import Reply

RUN_ID = "0b6f5a8e-3c1e-4a8e-9d9f-1f2e3d4c5b6a"
NOW = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


def a_test():
    return channel_test(message_id=new_message_id(), timestamp=datetime.now(UTC), source="db1")


def json_url(receiver, path="/apprise/hook"):
    return f"json://127.0.0.1:{receiver.port}{path}"


def test_apprise_delivers_title_body_and_type_to_a_json_receiver(receiver, failed_run_message):
    transport = AppriseTransport(json_url(receiver))
    result = deliver(transport, failed_run_message)
    assert result.ok and result.channel == "apprise"
    [request] = receiver.requests
    assert (request.method, request.path) == ("POST", "/apprise/hook")
    body = json.loads(request.body)
    assert body["title"] == failed_run_message.title
    assert body["message"] == failed_run_message.text.rstrip("\n")  # Apprise trims the last newline
    assert body["type"] == "failure"


def test_apprise_failures_are_classified_by_the_status_it_reports(receiver):
    receiver.script(Reply(503), Reply(404))
    transport = AppriseTransport(json_url(receiver))
    first = deliver(transport, a_test())
    assert first.retryable and first.status_code == 503
    second = deliver(transport, a_test())
    assert second.permanent and second.status_code == 404
    assert deliver(transport, a_test()).ok


def test_an_unknown_apprise_url_is_permanent():
    result = deliver(AppriseTransport("nosuchservice://token/abc"), a_test())
    assert result.permanent and result.detail.startswith("not a URL Apprise knows: nosuchservice://****/…#")


def test_the_apprise_target_is_masked_and_the_detail_keeps_the_password_out(receiver):
    receiver.script(Reply(500))
    url = f"json://alice:pa55word-very-secret@127.0.0.1:{receiver.port}/hook"
    result = deliver(AppriseTransport(url), a_test())
    assert result.target.startswith(f"json://****@127.0.0.1:{receiver.port}/…#")
    assert "pa55word" not in result.target + result.detail
    assert receiver.requests[0].headers["authorization"].startswith("Basic ")


def test_a_slow_apprise_receiver_is_retryable(receiver):
    receiver.script(Reply(200, delay=2.0))
    result = deliver(AppriseTransport(json_url(receiver) + "?rto=0.3&cto=0.3", timeout=5), a_test())
    assert result.retryable


def run(status: str) -> RunInfo:
    return RunInfo(id=RUN_ID, status=status, started_at=NOW, finished_at=NOW, error="boom")


def events():
    return {
        "start": run_started(run("running"), message_id="m1", timestamp=NOW, source="db1"),
        "success": run_finished(run("succeeded"), message_id="m2", timestamp=NOW, source="db1"),
        "failure": run_finished(run("failed"), message_id="m3", timestamp=NOW, source="db1"),
        "interrupted": run_finished(run("interrupted"), message_id="m4", timestamp=NOW, source="db1"),
    }


def test_healthchecks_pings_start_success_and_fail_with_the_run_id(receiver):
    transport = PingTransport(receiver.base + "/ping/5f0e0c7a-uuid")
    for message in events().values():
        assert transport.accepts(message)
        assert deliver(transport, message).ok
    paths = [urlsplit(r.path) for r in receiver.requests]
    assert [p.path for p in paths] == [
        "/ping/5f0e0c7a-uuid/start",
        "/ping/5f0e0c7a-uuid",
        "/ping/5f0e0c7a-uuid/fail",
        "/ping/5f0e0c7a-uuid/fail",
    ]
    assert all(parse_qs(p.query) == {"rid": [RUN_ID]} for p in paths)
    assert [r.method for r in receiver.requests] == ["POST"] * 4
    assert b"Error: boom" in receiver.requests[2].body


def test_the_ping_hears_only_runs(receiver):
    transport = PingTransport(receiver.base + "/ping/abc")
    assert not transport.accepts(a_test())
    assert deliver(transport, a_test()).permanent
    assert receiver.requests == []


def test_other_channels_do_not_hear_run_starts(receiver):
    start = events()["start"]
    assert not AppriseTransport(json_url(receiver)).accepts(start)
    assert AppriseTransport(json_url(receiver)).accepts(events()["failure"])


def test_a_ping_url_with_a_query_keeps_it_and_a_5xx_is_retryable(receiver):
    receiver.script(Reply(502))
    transport = PingTransport(receiver.base + "/ping/key/check-slug?create=1")
    result = deliver(transport, events()["success"])
    assert result.retryable and result.status_code == 502
    url = urlsplit(receiver.requests[0].path)
    assert url.path == "/ping/key/check-slug"
    assert parse_qs(url.query) == {"create": ["1"], "rid": [RUN_ID]}


@pytest.mark.parametrize(
    ("event", "status"),
    [("success", "up"), ("failure", "down"), ("interrupted", "down")],
)
def test_uptime_kuma_push_urls_get_status_up_or_down(receiver, event, status):
    transport = PingTransport(receiver.base + "/api/push/Xq7Token?ping=")
    assert deliver(transport, events()[event]).ok
    request = receiver.requests[0]
    url = urlsplit(request.path)
    assert request.method == "GET" and url.path == "/api/push/Xq7Token"
    query = parse_qs(url.query, keep_blank_values=True)
    assert query["status"] == [status] and query["ping"] == [""]
    assert query["msg"] == [events()[event].title]


def test_uptime_kuma_has_no_start_signal():
    assert ping_request("https://kuma.example.com/api/push/tok", events()["start"]) is None


def test_a_run_id_that_is_no_uuid_is_left_out_of_the_ping():
    message = run_finished(
        RunInfo(id="cli-7", status="succeeded"), message_id="m", timestamp=NOW, source="db1"
    )
    method, url, body = ping_request("https://hc-ping.com/uuid", message)
    assert (method, url) == ("POST", "https://hc-ping.com/uuid")
