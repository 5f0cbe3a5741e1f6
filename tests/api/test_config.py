"""GET/PUT/PATCH /api/backup/config: the original document, fully validated, atomic, audited."""

from __future__ import annotations

import copy

import pytest

from backups.config.document import DEFAULT_CONFIG
from backups.models import AuditEvent

pytestmark = pytest.mark.django_db
URL = "/api/backup/config"


def test_default_document_has_every_original_key(api, backup_root):
    assert api.get(URL).json() == DEFAULT_CONFIG


def test_put_replaces_and_answers_the_stored_document(api, backup_root):
    new = copy.deepcopy(DEFAULT_CONFIG)
    new.update(schedule="30 2 * * 1-5", compression=False)
    new["retention"]["daily"] = 3
    new["notifications"]["webhook"] = "https://hooks.example.test/backup"
    response = api.put(URL, new, format="json")
    assert response.status_code == 200 and response.json() == new
    assert api.get(URL).json() == new
    audit = AuditEvent.objects.get(action="config.update")
    assert audit.details["changes"]["retention.daily"] == [7, 3]
    assert audit.actor == "admin-1"


def test_patch_merges_a_partial_document(api, backup_root):
    response = api.patch(URL, {"enabled": False, "retention": {"weekly": 0}}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["enabled"] is False
    assert {key: body["retention"][key] for key in ("daily", "weekly", "monthly")} == {
        "daily": 7,
        "weekly": 0,
        "monthly": 12,
    }
    assert body["retention"]["keepWithinHours"] == 24  # the keys added since keep their defaults


@pytest.mark.parametrize(
    "change, field",
    [
        ({"schedule": "not a cron"}, "schedule"),
        ({"schedule": "0 3 * *"}, "schedule"),
        ({"schedule": "0 3 * * * *"}, "schedule"),
        ({"schedule": "61 3 * * *"}, "schedule"),
        ({"schedule": 5}, "schedule"),
        ({"enabled": "yes"}, "enabled"),
        ({"retention": {"daily": -1}}, "retention"),
        ({"retention": {"daily": 1001}}, "retention"),
        ({"retention": {"daily": 1.5}}, "retention"),
        ({"retention": {"daily": True}}, "retention"),
        ({"retention": "7"}, "retention"),
        ({"notifications": {"webhook": "ftp://x"}}, "notifications"),
        ({"notifications": {"webhook": "javascript:alert(1)"}}, "notifications"),
        ({"components": {"databases": 1}}, "components"),
        ({"components": {"tapes": True}}, "components"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_invalid_documents_are_400_and_change_nothing(api, backup_root, change, field):
    before = api.get(URL).json()
    for method in (api.put, api.patch):
        document = copy.deepcopy(before)
        document.update(change) if method is api.put else None
        response = method(URL, document if method is api.put else change, format="json")
        assert response.status_code == 400, (method, response.content)
        assert field in response.json()
    assert api.get(URL).json() == before
    assert not AuditEvent.objects.filter(action="config.update").exists()


def test_put_with_a_missing_key_is_400(api, backup_root):
    document = copy.deepcopy(DEFAULT_CONFIG)
    del document["components"]["ssl"]
    response = api.put(URL, document, format="json")
    assert response.status_code == 400
    assert response.json() == {"components": {"ssl": ["This field is required."]}}


def test_a_document_valid_but_for_one_late_field_changes_nothing(api, backup_root):
    document = copy.deepcopy(DEFAULT_CONFIG)
    document.update(enabled=False, schedule="0 1 * * *")
    document["components"]["systemInfo"] = "no"
    assert api.put(URL, document, format="json").status_code == 400
    assert api.get(URL).json() == DEFAULT_CONFIG


@pytest.mark.parametrize(
    "payload, content_type",
    [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"null", "application/json"),
        (b"enabled=false", "application/x-www-form-urlencoded"),
    ],
)
def test_non_json_bodies_are_4xx(api, backup_root, payload, content_type):
    response = api.generic("PUT", URL, payload, content_type=content_type)
    assert 400 <= response.status_code < 500
    assert api.get(URL).json() == DEFAULT_CONFIG


def test_status_reflects_schedule_and_enabled(api, backup_root):
    api.patch(URL, {"schedule": "15 4 * * *"}, format="json")
    status = api.get("/api/backup/status").json()
    assert status["config"] == {"enabled": True, "schedule": "15 4 * * *"}
    assert status["next_scheduled_at"] and "04:15:00" in status["next_scheduled_at"]
    api.patch(URL, {"enabled": False}, format="json")
    assert api.get("/api/backup/status").json()["next_scheduled_at"] is None


TELEGRAM = "tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/-1001234567890"
NTFY = "ntfys://ntfy.example.com/backups-4f1d9a?token=tk_secretsecret"


def test_apprise_urls_are_answered_masked_and_a_round_trip_keeps_the_secrets(api, backup_root):
    response = api.patch(URL, {"notifications": {"urls": [TELEGRAM, NTFY]}}, format="json")
    assert response.status_code == 200
    shown = response.json()["notifications"]["urls"]
    assert shown[0].startswith("tgram://****/…#") and shown[1].startswith("ntfys://ntfy.example.com/…#")
    document = api.get(URL).json()
    assert document["notifications"]["urls"] == shown
    assert "AAHdq" not in str(document) and "tk_secret" not in str(document)

    # A client edits the document it was given (drops one URL, adds one) and PUTs it back.
    document["notifications"]["urls"] = [shown[1], "json://hooks.example.com/backup"]
    document["schedule"] = "15 4 * * *"
    assert api.put(URL, document, format="json").status_code == 200
    from backups.config.selectors import config_current

    assert config_current()["notifications"]["urls"] == [NTFY, "json://hooks.example.com/backup"]


def test_a_masked_url_that_matches_nothing_stored_is_refused(api, backup_root):
    api.patch(URL, {"notifications": {"urls": [TELEGRAM]}}, format="json")
    response = api.patch(URL, {"notifications": {"urls": ["tgram://****/…#0000"]}}, format="json")
    assert response.status_code == 400
    assert "matches no stored URL" in response.json()["notifications"]["urls"][0]


def test_audit_diffs_show_the_urls_masked(api, backup_root):
    api.patch(URL, {"notifications": {"urls": [TELEGRAM]}}, format="json")
    audit = AuditEvent.objects.filter(action="config.update").latest("id")
    before, after = audit.details["changes"]["notifications.urls"]
    assert before == [] and after[0].startswith("tgram://****/…#")
    assert "AAHdq" not in str(audit.details)
    logs = api.get("/api/backup/logs?source=audit").content.decode()
    assert "AAHdq" not in logs


def test_a_schedule_or_every_component_switched_off_is_saved_with_a_warning(api, backup_root):
    """Accepted (an operator may mean it), but said in the answer; a normal save has no `warnings`."""
    off = api.patch("/api/backup/config", {"enabled": False}, format="json")
    assert off.status_code == 200 and off.json()["enabled"] is False
    assert off.json()["warnings"] == ["The schedule is off: no backup runs unless someone starts one."]
    nothing = {key: False for key in DEFAULT_CONFIG["components"]}
    empty = api.patch("/api/backup/config", {"enabled": True, "components": nothing}, format="json")
    assert empty.status_code == 200
    assert empty.json()["warnings"] == [
        "Every component is off: a backup would hold nothing of the platform."
    ]
    normal = api.patch("/api/backup/config", {"components": DEFAULT_CONFIG["components"]}, format="json")
    assert normal.status_code == 200 and "warnings" not in normal.json()
    assert "warnings" not in api.get("/api/backup/config").json()  # never stored in the document
