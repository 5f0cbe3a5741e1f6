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
from backups.config.selectors import next_scheduled_at
from backups.config.services import config_update


@admin.register(BackupConfig)
class BackupConfigAdmin(SuperuserReadOnlyAdmin):
    """One row: the changelist opens its form. Saved through `config_update` (a PUT)."""

    form = BackupConfigForm
    fieldsets = (
        ("Schedule", {"fields": ("enabled", "schedule", "next_run")}),
        (
            "Retention",
            {
                "fields": ("retention_daily", "retention_weekly", "retention_monthly"),
                "description": "How many daily, weekly and monthly backups to keep. All zero keeps "
                "everything; pinned backups and <code>latest</code> are always kept.",
            },
        ),
        ("Contents", {"fields": ("components", "compression", "encryption")}),
        ("Notifications", {"fields": ("notify_email", "webhook")}),
        ("Last change", {"fields": ("updated_at", "updated_by")}),
    )
    readonly_fields = ("next_run", "updated_at", "updated_by")

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

    @admin.display(description="Next scheduled run")
    def next_run(self, config: BackupConfig) -> str:
        moment = next_scheduled_at()
        if moment is None:
            return "— (schedule disabled)"
        return f"{timezone.localtime(moment):%Y-%m-%d %H:%M %Z}"
