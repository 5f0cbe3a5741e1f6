"""The live dashboard: who may open it, what it embeds, its WebSocket on the admin session, and the
signed links it (and the admin) hand to the browser for downloads."""

from __future__ import annotations

import contextlib
import io
import json
import re
import tarfile
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from backup_platform.asgi import application
from backups.audit import Actor
from backups.catalogue import latest, sync
from backups.config.services import config_update
from backups.download_links import signed_download_url
from backups.models import Run, RunStatus
from backups.runs.services import run_enqueue
from tests.conftest import body_of, make_backup

A, B = "backup-20260101_030000", "backup-20260102_030000"


@pytest.fixture
def backups_on_disk(backup_root: Path) -> Path:
    make_backup(backup_root, A, mtime=1767236400)
    make_backup(backup_root, B, mtime=1767322800)
    latest.set_latest(backup_root, B)
    sync.sync()
    return backup_root


@pytest.fixture
def staff_user(django_user_model) -> User:
    return django_user_model.objects.create_user("staff", password="pw", is_staff=True)


def embedded_state(html: str) -> dict:
    match = re.search(r'<script id="dashboard-initial" type="application/json">(.*?)</script>', html, re.S)
    assert match, "the page embeds its initial state"
    return json.loads(match.group(1))


# --- the page ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_dashboard_renders_for_a_superuser(admin_client: Client, backups_on_disk: Path) -> None:
    response = admin_client.get(reverse("dashboard"))
    html = response.content.decode()
    assert response.status_code == 200
    for element in (
        'id="backup-now"',
        'id="cancel-run"',
        'id="progress-bar"',
        'aria-valuenow="0"',
        'id="progress-percent"',
        'id="backups-table"',
        'id="ws-state"',
    ):
        assert element in html
    assert "Beauty Platform — Backups" in html  # it is an admin page
    state = embedded_state(html)
    assert [row["id"] for row in state["backups"]] == [B, A]
    assert state["status"]["backups"]["count"] == 2
    assert state["status"]["running"] is False
    assert state["backups"][0]["download_url"].startswith(f"/api/backup/{B}/download?sig=")


@pytest.mark.django_db
def test_dashboard_says_the_schedule_in_words_with_the_server_time_zone_and_the_policy(
    admin_client: Client, backup_root: Path, settings
) -> None:
    settings.TIME_ZONE = "Europe/Berlin"
    from backups.audit import Actor
    from backups.config.services import config_update

    config_update(
        document={"schedule": "30 2 * * 1-5", "retention": {"daily": 3}}, actor=Actor("t"), partial=True
    )
    html = admin_client.get(reverse("dashboard")).content.decode()
    state = embedded_state(html)
    assert state["schedule"] == {
        "expression": "30 2 * * 1-5",
        "description": "At 02:30, Monday through Friday",
        "time_zone": "Europe/Berlin",
    }
    assert state["retention"]["daily"] == 3
    assert 'id="retention-form"' in html and 'id="retention-preview"' in html


@pytest.mark.django_db
def test_dashboard_shows_the_error_of_a_failed_run(admin_client: Client, backup_root: Path) -> None:
    Run.objects.create(
        triggered_by="schedule",
        status=RunStatus.FAILED,
        exit_code=3,
        error="❌ ERROR: pg_dump failed (line 212)",
    )
    state = embedded_state(admin_client.get(reverse("dashboard")).content.decode())
    assert state["last_run"]["status"] == "failed"
    assert state["last_run"]["error"] == "❌ ERROR: pg_dump failed (line 212)"


@pytest.mark.django_db
def test_dashboard_sends_anonymous_users_to_the_admin_login(client: Client) -> None:
    response = client.get(reverse("dashboard"))
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('admin:login')}?next=/dashboard/"


@pytest.mark.django_db
def test_dashboard_refuses_staff_who_are_not_superusers(client: Client, staff_user: User) -> None:
    client.force_login(staff_user)
    assert client.get(reverse("dashboard")).status_code == 403


@pytest.mark.django_db
def test_root_redirects_to_the_dashboard(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == "/dashboard/"


@pytest.mark.django_db
def test_back_up_now_works_with_the_session_and_needs_the_csrf_token(
    admin_user: User, backup_root: Path
) -> None:
    """What the page's "Back up now" button does: a session POST with the CSRF token in a header."""
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin_user)
    page = browser.get(reverse("dashboard"))
    token = re.search(r'data-csrf-token="([^"]+)"', page.content.decode()).group(1)

    refused = browser.post("/api/backup/create", {"type": "manual"}, content_type="application/json")
    assert refused.status_code == 403
    assert not Run.objects.exists()

    accepted = browser.post(
        "/api/backup/create",
        {"type": "manual"},
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert accepted.status_code == 202
    assert accepted.json()["run"]["triggered_by"] == "admin"
    cancel = browser.post(
        f"/api/backup/runs/{accepted.json()['run']['id']}/cancel",
        {},
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert cancel.status_code == 202


# --- the WebSocket on the admin session -----------------------------------------------------------------


def session_cookie(user: User) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def communicator(cookie: str) -> WebsocketCommunicator:
    # What a browser on the dashboard sends: its cookie, the page's origin and the host it came to.
    headers = [
        (b"cookie", f"sessionid={cookie}".encode()),
        (b"origin", b"http://localhost"),
        (b"host", b"localhost"),
    ]
    return WebsocketCommunicator(application, "/backup-ws", headers=headers)


@pytest.fixture
def superuser_cookie(admin_user: User) -> str:
    return session_cookie(admin_user)


@pytest.fixture
def staff_cookie(staff_user: User) -> str:
    return session_cookie(staff_user)


@pytest.mark.django_db(transaction=True)
async def test_websocket_accepts_a_superuser_session_without_a_token(
    superuser_cookie: str, backup_root: Path
) -> None:
    ws = communicator(superuser_cookie)
    connected, _ = await ws.connect()
    assert connected
    await ws.send_json_to({"event": "subscribe-backup-events", "data": {}})
    assert await ws.receive_json_from(timeout=5) == {"event": "subscribed", "data": {}}
    await ws.send_json_to({"event": "get-realtime-status", "data": {}})
    status = await ws.receive_json_from(timeout=5)
    assert status["event"] == "realtime-status"
    assert status["data"]["running"] is False

    # A backup queued elsewhere (the admin, the API) reaches the page as it happens.
    await database_sync_to_async(run_enqueue)(actor=Actor("admin"))
    notification = await ws.receive_json_from(timeout=5)
    assert notification == {
        "event": "system-notification",
        "data": {"level": "info", "message": "Backup queued by admin."},
    }
    await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_websocket_refuses_a_staff_session(staff_cookie: str) -> None:
    ws = communicator(staff_cookie)
    connected, _ = await ws.connect()
    assert connected  # accepted first, so that the close code reaches the client
    await ws.send_json_to({"event": "subscribe-backup-events", "data": {}})
    assert (await ws.receive_json_from(timeout=5))["event"] == "error"
    assert (await ws.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4401}
    await ws.disconnect()  # let the consumer end (its auth deadline task, its database thread)


# --- signed download links --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_dashboards_link_downloads_without_a_session(
    admin_client: Client, client: Client, backups_on_disk: Path
) -> None:
    state = embedded_state(admin_client.get(reverse("dashboard")).content.decode())
    response = client.get(state["backups"][1]["download_url"])
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="{A}.tar"'
    with tarfile.open(fileobj=io.BytesIO(body_of(response))) as tar:
        assert f"{A}/database.sql" in tar.getnames()


@pytest.mark.django_db
def test_download_link_endpoint_gives_a_working_link(
    admin_client: Client, client: Client, backups_on_disk: Path
) -> None:
    answer = admin_client.post(f"/api/backup/{A}/download-link")
    assert answer.status_code == 200
    assert answer.json()["expires_in"] == 300
    assert client.get(answer.json()["url"]).status_code == 200


@pytest.mark.django_db
def test_a_link_for_one_backup_does_not_open_another(
    client: Client, admin_user: User, backups_on_disk: Path
) -> None:
    link_for_a = signed_download_url(A, admin_user)
    signature = link_for_a.split("?", 1)[1]
    response = client.get(f"/api/backup/{B}/download?{signature}")
    assert response.status_code == 401
    assert client.get(f"/api/backup/latest/download?{signature}").status_code == 401


@pytest.mark.django_db
def test_an_expired_link_is_refused(
    client: Client, admin_user: User, backups_on_disk: Path, settings
) -> None:
    settings.DOWNLOAD_LINK_TTL = 300
    stale = signed_download_url(A, admin_user, now=time.time() - 301)  # made 301 s ago
    response = client.get(stale)
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]
    assert client.get(signed_download_url(A, admin_user, now=time.time() - 290)).status_code == 200


@pytest.mark.django_db
def test_a_link_reveals_nothing_of_what_it_names(
    client: Client, admin_user: User, backups_on_disk: Path
) -> None:
    """The payload is encrypted: neither the user id nor the backup or file is readable in the token,
    however it is decoded (base64, then zlib as Django's signing compresses)."""
    import base64
    import re
    import zlib
    from urllib.parse import parse_qs, urlsplit

    admin_user.username = "owner-7f3a"
    admin_user.save()
    link = signed_download_url(A, admin_user, file="database.sql")
    token = parse_qs(urlsplit(link).query)["sig"][0]
    readable = [token]
    for part in re.split(r"[:.]", token):
        for candidate in (part, part.lstrip(".")):
            try:
                raw = base64.urlsafe_b64decode(candidate + "=" * (-len(candidate) % 4))
            except ValueError:
                continue
            readable.append(raw.decode("latin-1"))
            with contextlib.suppress(zlib.error):
                readable.append(zlib.decompress(raw).decode("latin-1"))
    for text in readable:
        assert "owner-7f3a" not in text and A not in text and "database.sql" not in text
    assert client.get(link).status_code == 200


@pytest.mark.django_db
def test_a_tampered_link_is_refused(client: Client, admin_user: User, backups_on_disk: Path) -> None:
    link = signed_download_url(A, admin_user)
    assert client.get(link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB")).status_code == 401


BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.mark.parametrize("path", ["/api/docs/", "/api/backup/status", "/api/backup/list?page=2"])
def test_an_anonymous_browser_is_sent_to_the_login_and_back(client, backup_root, path):
    response = client.get(path, headers=BROWSER)
    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?{urlencode({'next': path})}"


def test_an_api_client_without_a_token_still_gets_the_json_401(client, backup_root):
    response = client.get("/api/backup/status", headers={"Accept": "application/json"})
    assert response.status_code == 401 and response.json()["detail"] and response["WWW-Authenticate"]


def test_the_health_banner_says_what_is_wrong_and_what_to_do(admin_client, backup_root, settings):
    settings.BACKUP_SCRIPT = backup_root / "missing.sh"
    config_update(document={"enabled": False}, actor=Actor("t"), partial=True)
    index = admin_client.get("/admin/").content.decode()
    for expected in ("No backup worker has been seen", "backup script is missing", "schedule is off"):
        assert expected in index
    status = admin_client.get("/api/backup/status").json()
    messages = [notice["message"] for notice in status["notices"]]
    assert any("No backup worker" in m for m in messages) and status["notices"][0]["level"] == "error"
    assert all(notice["action"] for notice in status["notices"])


def test_a_recent_backup_made_outside_the_service_is_not_reported_stale(admin_client, backup_root):
    make_backup(backup_root, "backup-20990101_030000")  # "now or later": made by cron, no run of ours
    sync.sync()
    notices = admin_client.get("/api/backup/status").json()["notices"]
    assert not any("has succeeded" in notice["message"] for notice in notices), notices


def test_an_old_backup_made_outside_the_service_is_reported_stale_not_missing(admin_client, backup_root):
    make_backup(backup_root, "backup-20200101_030000", mtime=1577847600)
    sync.sync()
    messages = [notice["message"] for notice in admin_client.get("/api/backup/status").json()["notices"]]
    assert "No backup has succeeded in the last 26 h." in messages, messages


def test_a_cancel_by_a_person_is_a_warning_that_names_them(admin_client, backup_root):
    run = run_enqueue(actor=Actor("tester"))
    admin_client.post(f"/api/backup/runs/{run.id}/cancel", content_type="application/json")
    notices = admin_client.get("/api/backup/status").json()["notices"]
    cancelled = [notice for notice in notices if "cancelled" in notice["message"]]
    assert cancelled and cancelled[0]["level"] == "warning", notices
    assert cancelled[0]["message"] == "The last backup run was cancelled by admin; no backup was made by it."
