"""The config document as a form, saved like a `PUT /api/backup/config`."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone

from backups.admin.forms import BackupConfigForm
from backups.admin.site import SuperuserReadOnlyAdmin, is_superuser
from backups.audit import Actor
from backups.config.models import BackupConfig
from backups.config.selectors import config_current, next_scheduled_at, schedule_in_words
from backups.config.services import config_update


@admin.register(BackupConfig)
class BackupConfigAdmin(SuperuserReadOnlyAdmin):
    """One row: the changelist opens its form. Saved through `config_update` (a PUT)."""

    form = BackupConfigForm
    change_form_template = "admin/backups/backupconfig/change_form.html"
    fieldsets = (
        (
            "Schedule",
            {
                "fields": (
                    "enabled",
                    "schedule",
                    "schedule_words",
                    "next_run",
                    "retries_count",
                    "retries_delay",
                )
            },
        ),
        (
            "Retention",
            {
                "fields": (
                    "retention_daily",
                    "retention_weekly",
                    "retention_monthly",
                    "retention_yearly",
                    "retention_last",
                    "retention_within",
                    "retention_manual",
                    "retention_after_failure",
                    "retention_prune_incomplete",
                ),
                "description": "restic's rules: each count keeps the newest backup of that many days "
                "(weeks, months, years) <em>that have a backup</em>. Never deleted: the newest completed "
                "backup, pinned backups, the running run's folder, anything younger than the hours below, "
                "manual backups while kept. Retention runs after each successful backup and once a day, "
                "and not at all before the service has completed a backup of its own or retention was "
                "applied by hand."
                '<div id="retention-preview" class="help" aria-live="polite" '
                'style="margin-top:8px;font-weight:600"></div>',
            },
        ),
        ("Contents", {"fields": ("components", "compression", "encryption")}),
        (
            "Notifications",
            {
                "fields": (
                    "notify_email",
                    "email_recipients",
                    "webhook",
                    "urls",
                    "healthcheck_url",
                    "stale_after_hours",
                    "on_success",
                )
            },
        ),
        ("Last change", {"fields": ("updated_at", "updated_by")}),
    )
    readonly_fields = ("schedule_words", "next_run", "updated_at", "updated_by")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_superuser(request)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        config = BackupConfig.load()
        return HttpResponseRedirect(reverse("admin:backups_backupconfig_change", args=[config.pk]))

    def save_model(
        self, request: HttpRequest, obj: BackupConfig, form: BackupConfigForm, change: bool
    ) -> None:
        # The form validated the whole document already; the service validates again, stores it and
        # writes the audit row in one transaction.
        config_update(document=form.document, actor=Actor.from_request(request), partial=False)

    @admin.display(description="In words")
    def schedule_words(self, config: BackupConfig) -> str:
        words = schedule_in_words(config_current())
        return f"{words['description']} (server time zone: {words['time_zone']})"

    @admin.display(description="Next scheduled run")
    def next_run(self, config: BackupConfig) -> str:
        moment = next_scheduled_at()
        if moment is None:
            return "— (schedule disabled)"
        return f"{timezone.localtime(moment):%Y-%m-%d %H:%M %Z}"
