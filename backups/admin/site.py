"""What every admin page shares: the site's titles, the status badges, and the rule that only active
superusers get in and nothing is added, edited or deleted through Django's generic views."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString


class BackupAdminSite(admin.AdminSite):
    """The admin site (Django's default site, through `backup_platform.apps.AdminConfig`).

    Every page of it, auth's users and groups included, is for active superusers only: a staff account
    with `auth.change_user` could otherwise make itself a superuser, and a superuser has the API too.
    Staff accounts without superuser status get the login page, whatever model permissions they hold."""

    site_header = "Beauty Platform — Backups"
    site_title = "Beauty Platform backups"
    index_title = "Backup administration"
    # Six models do not need a second app list: the width goes to the backup and run columns instead.
    enable_nav_sidebar = False

    def has_permission(self, request: HttpRequest) -> bool:
        return is_superuser(request)


# One palette for backup statuses, run statuses and audit outcomes.
BADGE_COLOURS = {
    "completed": "#2e7d32",
    "succeeded": "#2e7d32",
    "ok": "#2e7d32",
    "running": "#1565c0",
    "queued": "#546e7a",
    "failed": "#c62828",
    "incomplete": "#e65100",
    "cancelled": "#e65100",
    "interrupted": "#e65100",
    "refused": "#e65100",
    "skipped": "#757575",
    "never": "#757575",
    "delivered": "#2e7d32",
    "pending": "#546e7a",
    "retrying": "#e65100",
    "uploading": "#1565c0",
}


FLAG_HTML = (
    '<span style="display:inline-block;padding:0 6px;border:1px solid var(--hairline-color);'
    'border-radius:4px;font-size:10px;font-weight:600;text-transform:uppercase">{}</span>'
)


def badge(value: str, *, colour: str | None = None) -> SafeString:
    """A coloured status label; `colour` names the status whose colour to borrow."""
    return format_html(
        '<span style="display:inline-block;padding:1px 8px;border-radius:9px;background:{};color:#fff;'
        'font-size:11px;font-weight:600;letter-spacing:.03em;text-transform:uppercase">{}</span>',
        BADGE_COLOURS.get(colour or value, "#757575"),
        value,
    )


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return "< 1 s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def is_superuser(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_superuser)


class SuperuserReadOnlyAdmin(admin.ModelAdmin):
    """Superusers only (a staff account with model permissions still gets a 403), and nothing is
    added, edited or deleted through Django's generic views: they would bypass the services."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return is_superuser(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_superuser(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _on_changelist(self, request: HttpRequest) -> bool:
        match = request.resolver_match
        return bool(match and match.url_name and match.url_name.endswith("_changelist"))
