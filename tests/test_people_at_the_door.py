"""What a person meets first, beside the login redirect of tests/test_dashboard.py: API clients keep
their JSON 401 whatever their Accept says, and the `make run` banner prints a token that works when
pasted whole and says where the admin password is kept."""

from __future__ import annotations

import re
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import Client

from backups.auth import verify_token

pytestmark = pytest.mark.django_db

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"HTTP_ACCEPT": "application/json"},
        {"HTTP_ACCEPT": "*/*"},
        {"HTTP_ACCEPT": BROWSER_ACCEPT, "HTTP_AUTHORIZATION": "Bearer nope"},
    ],
    ids=["no-accept", "json", "any", "browser-with-a-bad-token"],
)
def test_api_clients_still_get_the_json_401(headers: dict, backup_root) -> None:
    response = Client().get("/api/backup/status", **headers)
    assert response.status_code == 401
    assert response["Content-Type"].startswith("application/json")
    assert "detail" in response.json()
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_post_from_a_browser_without_a_login_is_a_401_not_a_redirect(backup_root) -> None:
    response = Client().post("/api/backup/create", HTTP_ACCEPT=BROWSER_ACCEPT)
    assert response.status_code == 401


def test_the_welcome_banner_prints_a_whole_token_and_where_the_password_is(settings, tmp_path: Path) -> None:
    settings.VAR_DIR = tmp_path
    out = StringIO()
    call_command("print_welcome", "--port", "6027", stdout=out)
    text = out.getvalue()
    token = re.search(r"^\s*export TOKEN=(\S+)$", text, re.M).group(1)
    assert verify_token(token).id == "local-admin"  # the whole token, not a shortened one
    assert 'curl -H "Authorization: Bearer $TOKEN"' in text
    password_file = tmp_path / "admin-password"
    assert f"kept in {password_file}" in text
    assert password_file.read_text().strip() in text
    assert oct(password_file.stat().st_mode & 0o777) == "0o600"
