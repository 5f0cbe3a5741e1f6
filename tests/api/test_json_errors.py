"""Every response under /api/ is JSON, errors included: a Host header the service does not answer to,
a body over the limit, a malformed request, a failed CSRF check, a refusal, a server error."""

from __future__ import annotations

import json

import pytest
from channels.testing import HttpCommunicator
from django.test import Client

from backup_platform.asgi import application

pytestmark = pytest.mark.django_db


def assert_json(response, status: int) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json", response["Content-Type"]
    return response.json()


def test_a_host_the_service_does_not_answer_to_is_json(api, backup_root):
    body = assert_json(api.get("/api/backup/status", HTTP_HOST="evil.example.test"), 400)
    assert "Host header" in body["detail"]
    body = assert_json(api.post("/api/backup/create", {}, format="json", HTTP_HOST="evil.example.test"), 400)
    assert "Host header" in body["detail"]


def test_a_failed_csrf_check_with_an_admin_session_is_json(admin_user, backup_root):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    body = assert_json(client.post("/api/backup/create", {}, content_type="application/json"), 403)
    assert "CSRF" in body["detail"]


def test_the_csrf_failure_view_answers_json_under_the_api(rf):
    from backups.api.errors import csrf_failure

    response = csrf_failure(rf.post("/api/backup/config"), reason="CSRF token missing.")
    assert response.status_code == 403 and json.loads(response.content)["detail"].startswith("CSRF Failed")
    assert b"<html" in csrf_failure(rf.post("/admin/login/"), reason="x").content.lower()


async def asgi(method: str, path: str, body: bytes = b"", headers: list | None = None) -> tuple[int, dict]:
    headers = [(b"host", b"127.0.0.1"), *(headers or [])]
    communicator = HttpCommunicator(application, method, path, body=body, headers=headers)
    response = await communicator.get_response(timeout=10)
    found = {k.decode().lower(): v.decode() for k, v in response["headers"]}
    assert found["content-type"] == "application/json", found
    return response["status"], json.loads(response["body"])


@pytest.mark.django_db(transaction=True)
async def test_a_body_over_the_limit_is_json_413_through_the_asgi_application(backup_root, settings):
    settings.MAX_REQUEST_BYTES = 1 << 20
    status, body = await asgi(
        "POST",
        "/api/backup/create",
        b" " * ((1 << 20) + 1),
        [(b"content-type", b"application/json"), (b"content-length", str((1 << 20) + 1).encode())],
    )
    assert status == 413 and "too large" in body["detail"]


@pytest.mark.django_db(transaction=True)
async def test_a_malformed_content_length_is_json_400(backup_root):
    status, body = await asgi("POST", "/api/backup/create", b"{}", [(b"content-length", b"2, 3")])
    assert status == 400 and "Content-Length" in body["detail"]


def test_not_found_refused_and_failed_requests_under_the_api_are_json(api, anonymous, backup_root):
    assert_json(api.get("/api/backup/runs/not-a-run/cancel/extra/path"), 404)
    assert_json(anonymous.get("/api/backup/status"), 401)
    assert_json(api.post("/api/backup/create", data="{not json", content_type="application/json"), 400)
