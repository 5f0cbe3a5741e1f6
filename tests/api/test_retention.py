"""GET/POST /api/backup/retention/preview and POST /api/backup/retention/apply over real folders: the
reasons of each decision, candidates validated like the config, deletions audited with their reason
and announced once."""

from __future__ import annotations

from pathlib import Path

import pytest

from backups.audit import Actor
from backups.catalogue import sidecar, sync
from backups.catalogue.services import backup_set_pinned
from backups.config.services import config_update
from backups.models import AuditEvent, Delivery, Notification
from tests.conftest import make_backup

pytestmark = pytest.mark.django_db
PREVIEW = "/api/backup/retention/preview"
APPLY = "/api/backup/retention/apply"

NAMES = [
    "backup-20260101_030000",  # pinned
    "backup-20260102_030000",
    "backup-20260102_120000",  # manual
    "backup-20260103_030000",
    "backup-20260104_030000",
    "backup-20260105_030000",
]


@pytest.fixture
def history(backup_root: Path) -> Path:
    for name in NAMES:
        make_backup(backup_root, name)
    sidecar.write_metadata(
        backup_root, "backup-20260102_120000", {"type": "manual", "description": "before release"}
    )
    sync.sync()
    backup_set_pinned(backup_id="backup-20260101_030000", pinned=True, actor=Actor("admin"))
    config_update(
        document={"retention": {"daily": 2, "weekly": 0, "monthly": 0}}, actor=Actor("admin"), partial=True
    )
    return backup_root


def folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("backup-"))


def test_the_preview_gives_every_decision_with_its_reasons_and_deletes_nothing(api, history):
    response = api.get(PREVIEW)
    assert response.status_code == 200
    body = response.json()
    assert body["policy"]["daily"] == 2 and body["policy"]["keepManual"] is True
    reasons = {row["id"]: (row["keep"], row["reasons"]) for row in body["backups"]}
    assert [row["id"] for row in body["backups"]] == sorted(NAMES, reverse=True)
    assert reasons["backup-20260105_030000"] == (True, ["newest", "daily 2026-01-05"])
    assert reasons["backup-20260104_030000"] == (True, ["daily 2026-01-04"])
    assert reasons["backup-20260102_120000"] == (True, ["manual"])
    assert reasons["backup-20260101_030000"] == (True, ["pinned"])
    assert reasons["backup-20260103_030000"] == (False, ["beyond daily 2"])
    assert body["delete"] == ["backup-20260103_030000", "backup-20260102_030000"]
    assert folders(history) == NAMES


def test_a_candidate_is_merged_onto_the_current_policy_and_deletes_nothing(api, history):
    response = api.post(PREVIEW, {"retention": {"daily": 4}}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert (body["policy"]["daily"], body["policy"]["weekly"]) == (4, 0)
    decision = next(row for row in body["backups"] if row["id"] == "backup-20260102_030000")
    assert decision["reasons"] == ["daily 2026-01-02 keeps a newer backup"]
    assert body["delete"] == ["backup-20260102_030000"]
    assert api.post(PREVIEW, {"retention": {"keepManual": False}}, format="json").json()["delete"] == [
        "backup-20260103_030000",
        "backup-20260102_120000",
        "backup-20260102_030000",
    ]
    assert folders(history) == NAMES
    from backups.config.selectors import config_current

    assert config_current()["retention"]["daily"] == 2  # a preview saves nothing


@pytest.mark.parametrize(
    "body, errors",
    [
        ({"retention": {"daily": -1}}, {"retention": {"daily": ["Must be between 0 and 1000."]}}),
        ({"retention": {"hourly": 3}}, {"retention": {"hourly": ["Unknown field."]}}),
        ({"retention": {}, "apply": True}, {"apply": ["Unknown field."]}),
        ({}, {"retention": ["This field is required."]}),
        ({"retention": "7"}, {"retention": {"non_field_errors": ["Must be a JSON object."]}}),
    ],
)
def test_a_bad_candidate_is_a_400(api, history, body, errors):
    response = api.post(PREVIEW, body, format="json")
    assert response.status_code == 400 and response.json() == errors


def test_apply_deletes_what_the_policy_does_not_keep_audits_each_reason_and_tells_once(
    api, history, settings, receiver
):
    settings.WEBHOOK_SECRET = "whsec_" + "a" * 43
    config_update(
        document={"notifications": {"webhook": receiver.base + "/hook"}}, actor=Actor("x"), partial=True
    )
    response = api.post(APPLY)
    assert response.status_code == 200
    assert response.json() == {
        "deleted": [
            {"id": "backup-20260103_030000", "reason": "beyond daily 2"},
            {"id": "backup-20260102_030000", "reason": "beyond daily 2"},
        ]
    }
    assert folders(history) == [
        "backup-20260101_030000",
        "backup-20260102_120000",
        "backup-20260104_030000",
        "backup-20260105_030000",
    ]
    deletions = AuditEvent.objects.filter(action="backup.delete").order_by("id")
    assert [(a.target, a.actor, a.details["reason"]) for a in deletions] == [
        ("backup-20260103_030000", "admin-1", "beyond daily 2"),
        ("backup-20260102_030000", "admin-1", "beyond daily 2"),
    ]
    summary = AuditEvent.objects.get(action="retention.apply")
    assert summary.actor == "admin-1" and len(summary.details["deleted"]) == 2
    notification = Notification.objects.get(event="retention.deleted")
    assert notification.data["deleted"][0] == {"id": "backup-20260103_030000", "reason": "beyond daily 2"}
    assert Delivery.objects.get(notification=notification).channel == "webhook"
    assert api.post(APPLY).json() == {"deleted": []}  # nothing left to delete, nothing announced
    assert Notification.objects.filter(event="retention.deleted").count() == 1


def test_apply_refuses_a_body(api, history):
    assert api.post(APPLY, {"dryRun": True}, format="json").status_code == 400
    assert folders(history) == NAMES


def test_the_endpoints_need_the_super_admin_role(anonymous, history):
    assert anonymous.get(PREVIEW).status_code == 401
    assert anonymous.post(APPLY).status_code == 401
    assert folders(history) == NAMES
