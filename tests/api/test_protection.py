"""Rate limit, security headers, CORS, request ids and settings validation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from backups.catalogue import sync
from backups.status import documents
from tests.conftest import PROJECT

pytestmark = pytest.mark.django_db


def test_rate_limit_is_per_user_with_429_and_retry_after(api, anonymous, make_token, settings, backup_root):
    from backups import middleware

    limiter = middleware.RateLimitMiddleware(lambda request: None)
    assert limiter.rate == "200/900s"
    settings.RATE_LIMIT_COUNT, settings.RATE_LIMIT_PERIOD = 5, 900
    codes = [api.get("/api/backup/config").status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]
    limited = api.get("/api/backup/config")
    assert limited.status_code == 429 and 0 < int(limited["Retry-After"]) <= 900
    assert "throttled" in limited.json()["detail"]
    other = anonymous.get(
        "/api/backup/config",
        HTTP_AUTHORIZATION=f"Bearer {make_token({'sub': 'other', 'role': 'SUPER_ADMIN'})}",
    )
    assert other.status_code == 200
    assert all(anonymous.get("/health").status_code in (200, 503) for _ in range(10))


def test_security_headers_and_request_id(api, backup_root):
    response = api.get("/api/backup/config", HTTP_X_REQUEST_ID="abc-123")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Request-ID"] == "abc-123"
    assert len(api.get("/api/backup/config", HTTP_X_REQUEST_ID="bad id\n")["X-Request-ID"]) == 32


def test_cors_only_for_configured_origins(api, settings, backup_root):
    settings.CORS_ALLOWED_ORIGINS = ["https://admin.example.test"]
    allowed = api.get("/api/backup/config", HTTP_ORIGIN="https://admin.example.test")
    assert allowed["Access-Control-Allow-Origin"] == "https://admin.example.test"
    refused = api.get("/api/backup/config", HTTP_ORIGIN="https://evil.example.test")
    assert "Access-Control-Allow-Origin" not in refused


def test_unknown_paths_do_not_leak_internals(anonymous, backup_root):
    response = anonymous.get("/api/backup/backup-x/download/../../../etc/passwd")
    assert response.status_code in (401, 404)
    assert b"Traceback" not in response.content


@pytest.mark.parametrize(
    "name, value",
    [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("BACKUP_RUN_TIMEOUT", "0"),
        ("RATE_LIMIT", "lots"),
        ("RATE_LIMIT", "10/0m"),
        ("DEBUG", "maybe"),
        ("JWT_ALGORITHM", "none"),
        ("JWT_ALGORITHM", "RS256"),
        ("DATABASE_URL", "mongo://x"),
    ],
)
def test_bad_settings_stop_start_up_naming_the_variable(name, value, tmp_path):
    env = {**os.environ, "BACKUP_ROOT": str(tmp_path), name: value}
    env.pop("REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    # One line that names the variable, and no traceback around it.
    assert done.stderr.startswith("error: ") and name in done.stderr and len(done.stderr.splitlines()) == 1


def test_env_file_is_read_and_the_real_environment_wins(tmp_path):
    code = "from django.conf import settings; print(settings.RATE_LIMIT, settings.PORT)"
    env_file = PROJECT / ".env"
    assert not env_file.exists(), "a developer's .env would change this test's outcome"
    env_file.write_text("RATE_LIMIT=7/1m\nPORT=7000\n")
    try:
        env = {**os.environ, "PORT": "7100", "DJANGO_SETTINGS_MODULE": "backup_platform.settings"}
        env.pop("RATE_LIMIT", None)
        done = subprocess.run(
            [sys.executable, "-c", f"import django; django.setup(); {code}"],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        env_file.unlink()
    assert done.stdout.split() == ["7/1m", "7100"], done.stderr


def test_a_database_outage_is_503_not_500(api, backup_root, monkeypatch):
    from django.db import OperationalError

    def down() -> None:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(documents, "status", down)
    response = api.get("/api/backup/status")
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert "unavailable" in response.json()["detail"]


def test_request_log_lines_carry_the_request_id(api, backup_root, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="backups.request"):
        api.get("/api/backup/config", HTTP_X_REQUEST_ID="trace-7")
    from backups.logging import RequestIdFilter

    records = [r for r in caplog.records if r.name == "backups.request"]
    assert records and RequestIdFilter().filter(records[-1]) and records[-1].request_id == "trace-7"


def test_unmatched_api_urls_answer_json_404(anonymous, backup_root):
    for path in ("/api/backup/a%2fb", "/api/backup/x/y", "/api/nope"):
        response = anonymous.get(path)
        assert response.status_code == 404 and response.json() == {"detail": "Not found."}


def test_an_unreadable_backup_root_is_503_without_a_path(api, settings, tmp_path):

    loop = tmp_path / "loop"
    loop.symlink_to(loop)  # a root that cannot be listed (ELOOP), like one with broken permissions
    settings.BACKUP_ROOT = loop
    sync.reset()
    for path in ("/api/backup/list", "/api/backup/status", "/api/backup/backup-20260101_030000"):
        response = api.get(path)
        assert response.status_code == 503, (path, response.status_code)
        assert str(tmp_path) not in response.content.decode()
