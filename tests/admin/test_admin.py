"""The Django admin for backups, runs, the config and the audit trail: superusers only, nothing edited
by hand, every change through the services (real folders in tmp_path, a real database)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from backups.audit import Actor, audit
from backups.catalogue import latest, sync
from backups.config.document import default_document
from backups.models import AuditEvent, Backup, BackupConfig, Run, RunStatus
from tests.conftest import body_of, make_backup

pytestmark = pytest.mark.django_db

OLD, NEW = "backup-20260101_030000", "backup-20260102_030000"
CHANGELISTS = [
    "admin:backups_backup_changelist",
    "admin:backups_run_changelist",
    "admin:backups_backupconfig_changelist",
    "admin:backups_auditevent_changelist",
    "admin:backups_delivery_changelist",
]


@pytest.fixture
def two_backups(backup_root: Path) -> Path:
    """Two completed backups, `latest` on the newer one, catalogued."""
    make_backup(backup_root, OLD, mtime=1767236400)
    make_backup(backup_root, NEW, {"database.sql": "x" * 3000}, mtime=1767322800)
    latest.set_latest(backup_root, NEW)
    sync.sync()
    return backup_root


@pytest.fixture
def staff_user(django_user_model):
    """Staff with every permission there is (auth's users and groups included): not a superuser, so
    refused everywhere; with `auth.change_user` it could otherwise make itself one."""
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.all())
    return user


@pytest.fixture
def staff_client(staff_user) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def run_action(client: Client, action: str, ids: list[str], **extra: str):
    data = {"action": action, "_selected_action": ids, **extra}
    return client.post(reverse("admin:backups_backup_changelist"), data)


# --- who gets in ------------------------------------------------------------------------------------------


def _sent_to_login(response) -> bool:
    return response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))


@pytest.mark.parametrize("name", CHANGELISTS)
def test_staff_non_superuser_is_refused(staff_client: Client, name: str) -> None:
    assert _sent_to_login(staff_client.get(reverse(name)))


def test_staff_non_superuser_cannot_start_or_open_rows(staff_client: Client, two_backups: Path) -> None:
    assert _sent_to_login(staff_client.get(reverse("admin:backups_run_start")))
    assert _sent_to_login(staff_client.post(reverse("admin:backups_run_start")))
    assert _sent_to_login(staff_client.get(reverse("admin:backups_backup_change", args=[quote(OLD)])))
    assert not Run.objects.exists()
    assert _sent_to_login(staff_client.get(reverse("admin:index")))


def test_a_staff_user_with_every_permission_gets_no_admin_page_and_cannot_become_superuser(
    staff_client: Client, staff_user, two_backups: Path
) -> None:
    from django.contrib import admin

    urls = [reverse("admin:index"), reverse("admin:password_change")]
    for model in admin.site._registry:
        meta = model._meta
        urls.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
        urls.append(reverse("admin:app_list", args=[meta.app_label]))
    urls.append(reverse("admin:auth_user_change", args=[staff_user.pk]))
    urls.append(reverse("admin:auth_user_add"))
    urls.append(reverse("admin:auth_group_add"))
    assert reverse("admin:auth_user_changelist") in urls and reverse("admin:auth_group_changelist") in urls
    for url in urls:
        assert _sent_to_login(staff_client.get(url)), url
    answer = staff_client.post(
        reverse("admin:auth_user_change", args=[staff_user.pk]),
        {"username": "staff", "is_active": "on", "is_staff": "on", "is_superuser": "on"},
    )
    assert _sent_to_login(answer)
    staff_user.refresh_from_db()
    assert not staff_user.is_superuser
    inactive = type(staff_user).objects.create_superuser("gone", password="pw", is_active=False)
    client = Client()
    client.force_login(inactive)
    assert client.get(reverse("admin:auth_user_changelist")).status_code == 302


def test_anonymous_is_sent_to_the_login(client: Client) -> None:
    response = client.get(reverse("admin:backups_backup_changelist"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_index_has_the_site_header_and_links_to_the_dashboard(admin_client: Client) -> None:
    html = admin_client.get(reverse("admin:index")).content.decode()
    assert "Beauty Platform — Backups" in html
    assert f'href="{reverse("dashboard")}"' in html
    for name in CHANGELISTS:
        assert reverse(name) in html


# --- backups ----------------------------------------------------------------------------------------------


def test_backup_changelist_shows_what_is_on_disk(admin_client: Client, two_backups: Path) -> None:
    make_backup(two_backups, "backup-20260103_030000")  # appeared after the last sync
    html = admin_client.get(reverse("admin:backups_backup_changelist")).content.decode()
    for backup_id in (OLD, NEW, "backup-20260103_030000"):
        assert backup_id in html
    assert "2.9\xa0KB" in html  # filesizeformat of the 3000-byte dump
    assert "completed" in html
    assert ">latest</span>" in html


@pytest.mark.parametrize(
    "query",
    [
        "?status__exact=completed",
        "?type__exact=external",
        "?pinned__exact=1",
        "?q=20260102",
        "?created_at__year=2026",
        "?o=4",
    ],
)
def test_backup_changelist_filters_search_and_sorting(
    admin_client: Client, two_backups: Path, query: str
) -> None:
    assert admin_client.get(reverse("admin:backups_backup_changelist") + query).status_code == 200


def test_backup_change_page_is_read_only_with_files_and_download(
    admin_client: Client, two_backups: Path
) -> None:
    response = admin_client.get(reverse("admin:backups_backup_change", args=[quote(OLD)]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "configs/app.env" in html
    assert 'name="_save"' not in html
    assert f"/api/backup/{OLD}/download?sig=" in html


def test_backups_cannot_be_added_or_edited_by_hand(admin_client: Client, two_backups: Path) -> None:
    assert admin_client.get(reverse("admin:backups_backup_add")).status_code == 403
    change_url = reverse("admin:backups_backup_change", args=[quote(OLD)])
    response = admin_client.post(change_url, {"description": "hacked"})
    assert response.status_code == 403
    assert admin_client.get(reverse("admin:backups_backup_delete", args=[quote(OLD)])).status_code == 403
    assert Backup.objects.get(id=OLD).description == ""


def test_download_link_of_a_row_downloads_that_backup(
    admin_client: Client, client: Client, two_backups: Path
) -> None:
    html = admin_client.get(reverse("admin:backups_backup_changelist")).content.decode()
    link = re.search(rf'href="(/api/backup/{OLD}/download\?sig=[^"]+)"', html).group(1).replace("&amp;", "&")
    response = client.get(link)  # no session, no token: the signature alone
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-tar"
    assert response["Content-Disposition"] == f'attachment; filename="{OLD}.tar"'


def test_delete_asks_for_confirmation_then_removes_the_folder_and_repoints_latest(
    admin_client: Client, two_backups: Path
) -> None:
    confirm = run_action(admin_client, "delete_backups", [NEW])
    assert confirm.status_code == 200
    assert "Are you sure" in confirm.content.decode()
    assert NEW in confirm.content.decode()
    assert (two_backups / NEW).is_dir()  # nothing deleted before the confirmation

    response = run_action(admin_client, "delete_backups", [NEW], post="yes")
    assert response.status_code == 302
    assert not (two_backups / NEW).exists()
    assert not Backup.objects.filter(id=NEW).exists()
    assert latest.read_latest(two_backups) == OLD
    assert Backup.objects.get(id=OLD).is_latest
    assert AuditEvent.objects.filter(action="backup.delete", target=NEW, outcome="ok", actor="admin").exists()
    assert any(NEW in message for message in messages_of(response))


def test_delete_of_a_pinned_backup_is_refused_and_nothing_is_deleted(
    admin_client: Client, two_backups: Path
) -> None:
    Backup.objects.filter(id=OLD).update(pinned=True)
    for extra in ({}, {"post": "yes"}):
        response = run_action(admin_client, "delete_backups", [OLD, NEW], **extra)
        assert response.status_code == 302
        assert (two_backups / OLD).is_dir() and (two_backups / NEW).is_dir()
        assert any("pinned" in message for message in messages_of(response))
    assert Backup.objects.count() == 2


def test_delete_of_the_running_runs_backup_is_refused(admin_client: Client, two_backups: Path) -> None:
    Run.objects.create(status=RunStatus.RUNNING, triggered_by="cli", backup_id=NEW)
    response = run_action(admin_client, "delete_backups", [NEW], post="yes")
    assert response.status_code == 302
    assert (two_backups / NEW).is_dir()
    assert any("running backup run" in message for message in messages_of(response))


def test_pin_and_unpin_go_through_the_service(admin_client: Client, two_backups: Path) -> None:
    run_action(admin_client, "pin_backups", [OLD, NEW])
    assert set(Backup.objects.filter(pinned=True).values_list("id", flat=True)) == {OLD, NEW}
    run_action(admin_client, "unpin_backups", [OLD])
    assert not Backup.objects.get(id=OLD).pinned
    actions = sorted(AuditEvent.objects.values_list("action", "target"))
    assert actions == [("backup.pin", OLD), ("backup.pin", NEW), ("backup.unpin", OLD)]


# --- runs -------------------------------------------------------------------------------------------------


def test_start_backup_queues_a_run_and_a_second_is_refused(admin_client: Client, backup_root: Path) -> None:
    page = admin_client.get(reverse("admin:backups_run_start"))
    assert page.status_code == 200
    assert 'name="description"' in page.content.decode()

    first = admin_client.post(reverse("admin:backups_run_start"), {"description": "before the upgrade"})
    assert first.status_code == 302
    run = Run.objects.get()
    assert run.status == RunStatus.QUEUED
    assert (run.triggered_by, run.description) == ("admin", "before the upgrade")
    assert AuditEvent.objects.filter(action="run.create", target=str(run.id), outcome="ok").exists()

    second = admin_client.post(reverse("admin:backups_run_start"), {"description": ""})
    assert second.status_code == 302
    assert Run.objects.count() == 1
    assert "A backup is already queued or running." in messages_of(second)
    assert AuditEvent.objects.filter(action="run.create", outcome="refused").exists()


def test_start_backup_refuses_a_description_the_api_refuses(admin_client: Client, backup_root: Path) -> None:
    response = admin_client.post(reverse("admin:backups_run_start"), {"description": "bad\x07bell"})
    assert response.status_code == 200
    assert "Must not contain control characters." in response.content.decode()
    assert not Run.objects.exists()


def test_run_changelist_offers_start_and_cancel_of_the_current_run(
    admin_client: Client, backup_root: Path
) -> None:
    run = Run.objects.create(triggered_by="admin")
    html = admin_client.get(reverse("admin:backups_run_changelist")).content.decode()
    assert reverse("admin:backups_run_start") in html
    assert reverse("admin:backups_run_cancel", args=[run.id]) in html


def test_cancel_the_current_run_after_confirmation(admin_client: Client, backup_root: Path) -> None:
    run = Run.objects.create(triggered_by="admin")
    url = reverse("admin:backups_run_cancel", args=[run.id])
    assert admin_client.get(url).status_code == 200
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED  # the GET only asks

    response = admin_client.post(url)
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert AuditEvent.objects.filter(action="run.cancel", target=str(run.id), outcome="ok").exists()


def test_cancel_of_a_running_run_flags_it_for_the_worker(admin_client: Client, backup_root: Path) -> None:
    run = Run.objects.create(triggered_by="admin", status=RunStatus.RUNNING)
    admin_client.post(
        reverse("admin:backups_run_changelist"), {"action": "cancel_runs", "_selected_action": [str(run.id)]}
    )
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.cancel_requested


def test_cancel_of_an_ended_run_is_refused_with_a_message(admin_client: Client, backup_root: Path) -> None:
    run = Run.objects.create(triggered_by="admin", status=RunStatus.SUCCEEDED)
    response = admin_client.post(reverse("admin:backups_run_cancel", args=[run.id]))
    assert any("already ended" in message for message in messages_of(response))
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED


def test_run_pages_render_and_are_read_only(admin_client: Client, backup_root: Path) -> None:
    run = Run.objects.create(
        triggered_by="schedule",
        status=RunStatus.FAILED,
        backup_id=OLD,
        error="❌ ERROR: pg_dump failed",
        output="out: [1/7] start\nerr: boom",
    )
    html = admin_client.get(reverse("admin:backups_run_change", args=[run.id])).content.decode()
    assert "pg_dump failed" in html and "[1/7] start" in html
    assert 'name="_save"' not in html
    assert admin_client.get(reverse("admin:backups_run_add")).status_code == 403
    for query in ["?status__exact=failed", "?type__exact=manual", f"?q={run.id}", "?q=schedule"]:
        response = admin_client.get(reverse("admin:backups_run_changelist") + query)
        assert response.status_code == 200
    found = admin_client.get(reverse("admin:backups_run_changelist") + f"?q={run.id}")
    assert found.context["cl"].result_count == 1


# --- config -----------------------------------------------------------------------------------------------


def config_form(**changes: object) -> dict[str, object]:
    form: dict[str, object] = {
        "enabled": "on",
        "schedule": "0 3 * * *",
        "retention_daily": "7",
        "retention_weekly": "4",
        "retention_monthly": "12",
        "retention_yearly": "0",
        "retention_last": "0",
        "retention_within": "24",
        "retention_manual": "on",
        "retries_count": "0",
        "retries_delay": "10",
        "compression": "on",
        "webhook": "",
        "email_recipients": "",
        "urls": "",
        "healthcheck_url": "",
        "stale_after_hours": "26",
        "components": ["databases", "applicationFiles", "uploads", "configs", "nginx", "ssl", "systemInfo"],
    }
    form.update(changes)
    return {key: value for key, value in form.items() if value is not None}


def config_url() -> str:
    return reverse("admin:backups_backupconfig_change", args=[BackupConfig.load().pk])


def test_config_changelist_opens_the_single_form(admin_client: Client) -> None:
    response = admin_client.get(reverse("admin:backups_backupconfig_changelist"))
    assert response.status_code == 302
    assert response["Location"] == config_url()
    form = admin_client.get(config_url())
    assert form.status_code == 200
    assert 'value="0 3 * * *"' in form.content.decode()


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"schedule": "61 * * * *"}, "schedule", "is not a valid cron expression"),
        ({"schedule": "every day"}, "schedule", "5-field cron expression"),
        ({"retention_daily": "1001"}, "retention_daily", "Must be between 0 and 1000."),
        ({"webhook": "ftp://example.org/hook"}, "webhook", "Must be an http(s) URL."),
    ],
)
def test_bad_config_is_a_form_error_and_changes_nothing(
    admin_client: Client, changes: dict, field: str, message: str
) -> None:
    response = admin_client.post(config_url(), config_form(**changes))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert any(message in error for error in errors[field])
    assert BackupConfig.load().document == default_document()
    assert not AuditEvent.objects.filter(action="config.update").exists()


def test_encryption_without_a_recipient_is_refused_on_the_form(admin_client: Client) -> None:
    response = admin_client.post(config_url(), config_form(encryption="on"))
    assert response.status_code == 200
    assert "needs at least one age public key" in response.content.decode()
    assert BackupConfig.load().document.get("encryption") is not True


def test_good_config_is_saved_through_the_service(admin_client: Client) -> None:
    response = admin_client.post(
        config_url(),
        config_form(
            enabled=None,
            schedule="30 2 * * 1-5",
            retention_daily="3",
            webhook="https://hooks.example.org/backups",
            components=["databases", "configs"],
        ),
    )
    assert response.status_code == 302
    document = BackupConfig.load().document
    assert document["enabled"] is False
    assert document["schedule"] == "30 2 * * 1-5"
    assert [document["retention"][key] for key in ("daily", "weekly", "monthly")] == [3, 4, 12]
    assert document["encryption"] is False
    assert document["notifications"]["webhook"] == "https://hooks.example.org/backups"
    assert {key for key, on in document["components"].items() if on} == {"databases", "configs"}
    event = AuditEvent.objects.get(action="config.update")
    assert event.actor == "admin"
    assert event.details["changes"]["schedule"] == ["0 3 * * *", "30 2 * * 1-5"]
    assert BackupConfig.load().updated_by == "admin"


# --- audit ------------------------------------------------------------------------------------------------


def test_audit_events_are_read_only_even_for_superusers(admin_client: Client) -> None:
    event = audit("backup.delete", actor=Actor("alice", "10.0.0.7"), target=OLD, outcome="refused")
    change_url = reverse("admin:backups_auditevent_change", args=[event.pk])
    assert admin_client.get(reverse("admin:backups_auditevent_add")).status_code == 403
    assert admin_client.post(change_url, {"actor": "mallory"}).status_code == 403
    assert admin_client.get(reverse("admin:backups_auditevent_delete", args=[event.pk])).status_code == 403
    page = admin_client.get(change_url)
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    changelist = admin_client.get(reverse("admin:backups_auditevent_changelist"))
    assert 'name="action"' not in changelist.content.decode()  # not even delete_selected
    assert AuditEvent.objects.get(pk=event.pk).actor == "alice"


def test_audit_changelist_filters_and_search(admin_client: Client) -> None:
    audit("backup.delete", actor=Actor("alice"), target=OLD, outcome="refused")
    audit("config.update", actor=Actor("bob"), target="config")
    url = reverse("admin:backups_auditevent_changelist")
    assert admin_client.get(url + "?outcome=refused").context["cl"].result_count == 1
    assert admin_client.get(url + "?action=config.update").context["cl"].result_count == 1
    assert admin_client.get(url + "?q=alice").context["cl"].result_count == 1
    assert admin_client.get(url + f"?q={OLD}").context["cl"].result_count == 1
    assert admin_client.get(url + "?q=nobody").context["cl"].result_count == 0


def test_unknown_run_cancel_is_a_message_not_a_crash(admin_client: Client) -> None:
    response = admin_client.post(reverse("admin:backups_run_cancel", args=[uuid.uuid4()]))
    assert response.status_code == 302
    assert "Run not found." in messages_of(response)


def test_verify_from_the_backup_page_queues_a_verify_run_through_the_service(
    admin_client: Client, two_backups
) -> None:
    page = admin_client.get(f"/admin/backups/backup/{OLD}/change/").content.decode()
    verify = f"/admin/backups/backup/{quote(OLD)}/verify/"
    assert "Verify (deep)" in page and verify in page
    response = admin_client.post(verify, {"level": "quick"})
    assert response.status_code == 302
    run = Run.objects.get(kind="verify")
    assert run.backup_id == OLD and run.params["level"] == "quick" and not run.automatic
    assert AuditEvent.objects.filter(action="verify.create", target=OLD, actor="admin").exists()
    again = admin_client.post(verify, {"level": "deep"}, follow=True)
    assert any("already queued or running" in message for message in messages_of(again))
    assert admin_client.get(verify).status_code == 403


def test_a_failed_verification_is_a_red_badge_with_its_problems(admin_client: Client, two_backups) -> None:
    Backup.objects.filter(id=OLD).update(
        verification_status="failed",
        verification_level="deep",
        verification={"problems": ["db.sql: digest mismatch"], "databases": []},
    )
    listing = admin_client.get("/admin/backups/backup/").content.decode()
    assert "verification failed" in listing
    page = admin_client.get(f"/admin/backups/backup/{OLD}/change/").content.decode()
    assert "db.sql: digest mismatch" in page


TELEGRAM = "tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/-1001234567890"


def test_the_config_form_edits_notifications_retention_and_retries_and_keeps_masked_urls(
    admin_client: Client,
) -> None:
    response = admin_client.post(
        config_url(),
        config_form(
            retention_yearly="3",
            retention_within="48",
            retention_manual=None,
            retention_after_failure="on",
            retries_count="2",
            retries_delay="15",
            notify_email="on",
            email_recipients="ops@example.com\n\n  oncall@example.com  ",
            urls=TELEGRAM + "\njson://hooks.example.com/backup",
            healthcheck_url="https://hc-ping.com/5d1c",
            stale_after_hours="30",
            on_success="on",
        ),
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    document = BackupConfig.load().document
    assert document["retention"] == {
        "daily": 7,
        "weekly": 4,
        "monthly": 12,
        "yearly": 3,
        "last": 0,
        "keepWithinHours": 48,
        "keepManual": False,
        "afterFailure": True,
        "pruneIncomplete": False,
    }
    assert document["scheduleRetries"] == {"count": 2, "delayMinutes": 15}
    assert document["notifications"] == {
        "email": True,
        "webhook": "",
        "emailRecipients": ["ops@example.com", "oncall@example.com"],
        "urls": [TELEGRAM, "json://hooks.example.com/backup"],
        "healthcheckUrl": "https://hc-ping.com/5d1c",
        "staleAfterHours": 30,
        "onSuccess": True,
    }

    page = admin_client.get(config_url()).content.decode()
    assert "AAHdq" not in page and "tgram://****/…#" in page
    assert "At 03:00, every day (server time zone: UTC)" in page
    assert 'id="retention-preview"' in page
    masked = re.search(r"(tgram://\*\*\*\*/…#[0-9a-f]{4})", page).group(1)
    # Saved again as shown (the masked line left as it is): the stored URL is kept.
    response = admin_client.post(
        config_url(),
        config_form(notify_email="on", email_recipients="ops@example.com", urls=masked + "\n"),
    )
    assert response.status_code == 302
    assert BackupConfig.load().document["notifications"]["urls"] == [TELEGRAM]
    audit = AuditEvent.objects.filter(action="config.update").latest("id")
    assert "AAHdq" not in str(audit.details)


def test_a_masked_url_that_matches_nothing_is_a_form_error(admin_client: Client) -> None:
    response = admin_client.post(config_url(), config_form(urls="tgram://****/…#0000"))
    assert response.status_code == 200
    assert any("matches no stored URL" in e for e in response.context["adminform"].form.errors["urls"])


def test_deliveries_are_listed_read_only_with_their_attempts(admin_client: Client, backup_root: Path) -> None:
    from django.utils import timezone

    from backups.models import Delivery, Notification
    from backups.notifications.messages import channel_test, new_message_id

    message = channel_test(message_id=new_message_id(), timestamp=timezone.now())
    notification = Notification.from_message(message)
    notification.save()
    delivery = Delivery.objects.create(
        notification=notification,
        channel="webhook",
        target="https://hooks.example.com/…#ab12",
        status="retrying",
        attempts=3,
        last_status_code=503,
        last_error="HTTP 503: upstream down",
        latency_ms=41,
    )
    page = admin_client.get(reverse("admin:backups_delivery_changelist"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "HTTP 503: upstream down" in html and "41 ms" in html and "retrying" in html
    detail = admin_client.get(reverse("admin:backups_delivery_change", args=[delivery.pk]))
    assert (
        detail.status_code == 200
        and "notifications of the backup service reach you" in detail.content.decode()
    )
    assert admin_client.get(reverse("admin:backups_delivery_add")).status_code == 403
    assert admin_client.post(reverse("admin:backups_delivery_delete", args=[delivery.pk])).status_code == 403


# --- the backup page's own buttons ------------------------------------------------------------------------


def test_each_file_of_a_backup_downloads_from_its_page(
    admin_client: Client, client: Client, two_backups: Path
) -> None:
    page = admin_client.get(reverse("admin:backups_backup_change", args=[quote(OLD)])).content.decode()
    file_url = reverse("admin:backups_backup_file", args=[quote(OLD)]) + "?path=configs%2Fapp.env"
    assert f'href="{file_url}"' in page.replace("&amp;", "&")
    redirect = admin_client.get(file_url)
    assert redirect.status_code == 302
    assert redirect["Location"].startswith(f"/api/backup/{OLD}/download?")
    response = client.get(redirect["Location"])  # the signed link alone, as the browser follows it
    assert response.status_code == 200
    assert body_of(response) == b"A=1\n"
    # A path outside the folder is signed, but opens nothing.
    outside = admin_client.get(reverse("admin:backups_backup_file", args=[quote(OLD)]) + "?path=../" + NEW)
    assert client.get(outside["Location"]).status_code == 404


def test_pin_and_unpin_from_the_backup_page_go_through_the_service(
    admin_client: Client, two_backups: Path
) -> None:
    change_url = reverse("admin:backups_backup_change", args=[quote(OLD)])
    pin_url = reverse("admin:backups_backup_pin", args=[quote(OLD)])
    assert 'id="pin-backup"' in admin_client.get(change_url).content.decode()
    response = admin_client.post(pin_url, {"pinned": "1"})
    assert response.status_code == 302 and response["Location"] == change_url
    assert Backup.objects.get(id=OLD).pinned
    page = admin_client.get(change_url).content.decode()
    assert 'id="unpin-backup"' in page and 'id="delete-backup"' not in page  # pinned: no delete offered
    admin_client.post(pin_url, {"pinned": "0"})
    assert not Backup.objects.get(id=OLD).pinned
    assert list(AuditEvent.objects.filter(target=OLD).values_list("action", "actor").order_by("id")) == [
        ("backup.pin", "admin"),
        ("backup.unpin", "admin"),
    ]
    assert admin_client.get(pin_url).status_code == 403  # a GET changes nothing


def test_delete_from_the_backup_page_asks_then_removes_the_folder(
    admin_client: Client, two_backups: Path
) -> None:
    delete_url = reverse("admin:backups_backup_delete_one", args=[quote(NEW)])
    assert (
        f'href="{delete_url}"'
        in admin_client.get(reverse("admin:backups_backup_change", args=[quote(NEW)])).content.decode()
    )
    confirm = admin_client.get(delete_url)
    assert confirm.status_code == 200
    assert "cannot be undone" in confirm.content.decode() and "latest" in confirm.content.decode()
    assert (two_backups / NEW).is_dir()
    response = admin_client.post(delete_url)
    assert response.status_code == 302 and response["Location"] == reverse("admin:backups_backup_changelist")
    assert not (two_backups / NEW).exists()
    assert latest.read_latest(two_backups) == OLD
    assert AuditEvent.objects.filter(action="backup.delete", target=NEW, actor="admin", outcome="ok").exists()


def test_delete_from_the_backup_page_of_a_pinned_backup_is_refused(
    admin_client: Client, two_backups: Path
) -> None:
    Backup.objects.filter(id=OLD).update(pinned=True)
    response = admin_client.post(reverse("admin:backups_backup_delete_one", args=[quote(OLD)]))
    assert response.status_code == 302
    assert (two_backups / OLD).is_dir()
    assert any("pinned" in message for message in messages_of(response))


def test_the_backup_list_shows_each_description(admin_client: Client, two_backups: Path) -> None:
    Backup.objects.filter(id=OLD).update(description="before the release")
    Backup.objects.filter(id=NEW).update(description="x" * 200)
    html = admin_client.get(reverse("admin:backups_backup_changelist")).content.decode()
    assert "<th" in html and "Description" in html
    assert '<td class="field-short_description">before the release</td>' in html
    assert f'title="{"x" * 200}"' in html and "x" * 39 + "…" in html


def test_the_audit_list_shows_seconds_and_details(admin_client: Client, backup_root: Path) -> None:
    audit(
        "retention.delete",
        actor=Actor("retention"),
        target=OLD,
        details={"reason": "beyond daily 7", "policy": {"daily": 7}},
    )
    html = admin_client.get(reverse("admin:backups_auditevent_changelist")).content.decode()
    when = r'class="field-when[^"]*">(?:<a [^>]*>)?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \w+<'
    assert re.search(when, html), html[-3000:]
    assert 'reason: beyond daily 7, policy: {"daily": 7}' in html.replace("&quot;", '"')
