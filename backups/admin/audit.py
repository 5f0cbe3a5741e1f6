"""The audit trail, read-only for everyone."""

from __future__ import annotations

import json

from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from backups.admin.site import SuperuserReadOnlyAdmin, badge
from backups.audit import AuditEvent

DETAILS_SHOWN = 120
# Details that say why, shown first in the list's one-line summary.
LEADING = ("reason", "error")


@admin.register(AuditEvent)
class AuditEventAdmin(SuperuserReadOnlyAdmin):
    """Append-only for everyone, superusers included."""

    list_display = ("when", "actor", "action", "target", "outcome_badge", "details_short", "client_ip")
    list_filter = ("action", "outcome", ("created_at", admin.DateFieldListFilter))
    search_fields = ("actor", "target")
    date_hierarchy = "created_at"
    list_per_page = 100
    fields = ("created_at", "actor", "action", "target", "outcome_badge", "client_ip", "details_json")
    readonly_fields = fields

    @admin.display(description="When", ordering="created_at")
    def when(self, event: AuditEvent) -> str:
        # To the second, in the server's zone: two events a few seconds apart must read apart.
        return f"{timezone.localtime(event.created_at):%Y-%m-%d %H:%M:%S %Z}"

    @admin.display(description="Details")
    def details_short(self, event: AuditEvent) -> str:
        """The details on one line (why retention deleted, what a config change changed …), cut to fit;
        the whole document is on the event's page."""
        details = event.details or {}
        if not details:
            return "—"
        text = ", ".join(
            f"{key}: {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}"
            # The same order on every database (PostgreSQL's jsonb does not keep the written one): why
            # first, then the rest by name.
            for key, value in sorted(details.items(), key=lambda item: (item[0] not in LEADING, item[0]))
            if value not in ("", None, [], {})  # an empty `error:` says nothing
        )
        if len(text) <= DETAILS_SHOWN:
            return text or "—"
        return format_html('<span title="{}">{}…</span>', text[:2000], text[: DETAILS_SHOWN - 1])

    @admin.display(description="Outcome", ordering="outcome")
    def outcome_badge(self, event: AuditEvent) -> SafeString:
        return badge(event.outcome)

    @admin.display(description="Details")
    def details_json(self, event: AuditEvent) -> str:
        pretty = json.dumps(event.details, indent=2, ensure_ascii=False)
        return format_html('<pre style="margin:0">{}</pre>', pretty)
