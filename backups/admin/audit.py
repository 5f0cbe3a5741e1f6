"""The audit trail, read-only for everyone."""

from __future__ import annotations

import json

from django.contrib import admin
from django.utils.html import format_html
from django.utils.safestring import SafeString

from backups.admin.site import SuperuserReadOnlyAdmin, badge
from backups.audit import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(SuperuserReadOnlyAdmin):
    """Append-only for everyone, superusers included."""

    list_display = ("created_at", "actor", "action", "target", "outcome_badge", "client_ip")
    list_filter = ("action", "outcome", ("created_at", admin.DateFieldListFilter))
    search_fields = ("actor", "target")
    date_hierarchy = "created_at"
    list_per_page = 100
    fields = ("created_at", "actor", "action", "target", "outcome_badge", "client_ip", "details_json")
    readonly_fields = fields

    @admin.display(description="Outcome", ordering="outcome")
    def outcome_badge(self, event: AuditEvent) -> SafeString:
        return badge(event.outcome)

    @admin.display(description="Details")
    def details_json(self, event: AuditEvent) -> str:
        pretty = json.dumps(event.details, indent=2, ensure_ascii=False)
        return format_html('<pre style="margin:0">{}</pre>', pretty)
