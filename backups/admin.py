"""The super admins' screens. Disk is the truth for backups and the worker for runs, so nothing here is
added or edited by hand: every change (start, cancel, delete, pin, config) goes through
`backups.services`, exactly like the API, and therefore writes the same audit rows and events."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from backups import selectors, services
from backups.api.errors import client_ip
from backups.auth import actor_of
from backups.download_links import signed_download_url
from backups.forms import BackupConfigForm, StartBackupForm
from backups.models import AuditEvent, Backup, BackupConfig, Run

admin.site.site_header = "Beauty Platform — Backups"
admin.site.site_title = "Beauty Platform backups"
admin.site.index_title = "Backup administration"
# Six models do not need a second app list: the width goes to the backup and run columns instead.
admin.site.enable_nav_sidebar = False

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
}
FLAG_HTML = (
    '<span style="display:inline-block;padding:0 6px;border:1px solid var(--hairline-color);'
    'border-radius:4px;font-size:10px;font-weight:600;text-transform:uppercase">{}</span>'
)
FILES_SHOWN = 500


def badge(value: str) -> SafeString:
    return format_html(
        '<span style="display:inline-block;padding:1px 8px;border-radius:9px;background:{};color:#fff;'
        'font-size:11px;font-weight:600;letter-spacing:.03em;text-transform:uppercase">{}</span>',
        BADGE_COLOURS.get(value, "#757575"),
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


def _is_superuser(request: HttpRequest) -> bool:
    return bool(request.user.is_active and request.user.is_superuser)


def _actor(request: HttpRequest) -> str:
    return actor_of(request.user)


class SuperuserReadOnlyAdmin(admin.ModelAdmin):
    """Superusers only (a staff account with model permissions still gets a 403), and nothing is
    added, edited or deleted through Django's generic views: they would bypass the services."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return _is_superuser(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _is_superuser(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _on_changelist(self, request: HttpRequest) -> bool:
        match = request.resolver_match
        return bool(match and match.url_name and match.url_name.endswith("_changelist"))


# --- backups -------------------------------------------------------------------------------------------


def _delete_refusals(backups: list[Backup]) -> dict[str, str]:
    """Why each of these backups cannot be deleted, checked for the whole selection before anything is
    deleted (so a mixed selection deletes nothing). The same two rules `services.backup_delete`
    enforces, which stays the final judge of every single deletion."""
    running = services.active_run()
    refusals = {}
    for backup in backups:
        if running and running.backup_id == backup.id:
            refusals[backup.id] = "it belongs to the running backup run"
        elif backup.pinned:
            refusals[backup.id] = "it is pinned; unpin it before deleting it"
    return refusals


@admin.register(Backup)
class BackupAdmin(SuperuserReadOnlyAdmin):
    list_display = (
        "id",
        "created_at",
        "status_badge",
        "size",
        "type",
        "started_by",
        "flags",
    )
    list_filter = ("status", "type", "pinned", "is_latest", ("created_at", admin.DateFieldListFilter))
    search_fields = ("id", "description", "triggered_by")
    date_hierarchy = "created_at"
    list_per_page = 50
    actions = ("delete_backups", "pin_backups", "unpin_backups")
    fieldsets = (
        (
            None,
            {"fields": ("id", "created_at", "status_badge", "type", "description", "started_by", "run_link")},
        ),
        ("Contents", {"fields": ("size", "file_count", "files_table")}),
        ("Flags", {"fields": ("is_latest", "pinned", "verified", "synced_at")}),
    )
    readonly_fields = (
        "id",
        "created_at",
        "status_badge",
        "type",
        "description",
        "started_by",
        "run_link",
        "size",
        "file_count",
        "files_table",
        "is_latest",
        "pinned",
        "verified",
        "synced_at",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Backup]:
        queryset = super().get_queryset(request)
        # A backup's file list can hold thousands of entries; a page of rows does not need them.
        return queryset.defer("files", "signature") if self._on_changelist(request) else queryset

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        selectors.ensure_catalogue_fresh()
        return super().changelist_view(request, extra_context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        backup = self.get_object(request, unquote(object_id))
        context = {**(extra_context or {})}
        if backup is not None and backup.status != "running":
            context["download_url"] = signed_download_url(backup.id, request.user)
        return super().change_view(request, object_id, form_url, context)

    def get_list_display(self, request: HttpRequest) -> tuple[Any, ...]:
        # The signed link names the user who will follow it, so the column needs the request.
        @admin.display(description="Download")
        def download(backup: Backup) -> str:
            if backup.status == "running":
                return "—"
            return format_html(
                '<a href="{}" download>Download</a>', signed_download_url(backup.id, request.user)
            )

        return (*self.list_display, download)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, backup: Backup) -> SafeString:
        return badge(backup.status)

    @admin.display(description="Size", ordering="size_bytes")
    def size(self, backup: Backup) -> str:
        return filesizeformat(backup.size_bytes)

    @admin.display(description="Started by", ordering="triggered_by")
    def started_by(self, backup: Backup) -> str:
        return backup.triggered_by or "—"

    @admin.display(description="Flags")
    def flags(self, backup: Backup) -> str:
        # One column for three booleans keeps the list readable beside the filters on a laptop screen.
        names = [
            name
            for name, on in (
                ("latest", backup.is_latest),
                ("pinned", backup.pinned),
                ("verified", backup.verified),
            )
            if on
        ]
        return format_html_join(" ", FLAG_HTML, ((name,) for name in names)) or "—"

    @admin.display(description="Run")
    def run_link(self, backup: Backup) -> str:
        if not backup.run_id:
            return "—"
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:backups_run_change", args=[backup.run_id]), backup.run_id
        )

    @admin.display(description="Files")
    def files_table(self, backup: Backup) -> str:
        files = backup.files or []
        rows = format_html_join(
            "",
            "<tr><td><code>{}</code></td><td>{}</td></tr>",
            ((f["path"], filesizeformat(f["size_bytes"])) for f in files[:FILES_SHOWN]),
        )
        more = (
            format_html("<p>… and {} more files.</p>", len(files) - FILES_SHOWN)
            if len(files) > FILES_SHOWN
            else ""
        )
        return format_html(
            "<table><thead><tr><th>Path</th><th>Size</th></tr></thead><tbody>{}</tbody></table>{}", rows, more
        )

    @admin.action(description="Delete selected backups (their folders on disk)")
    def delete_backups(self, request: HttpRequest, queryset: QuerySet[Backup]) -> TemplateResponse | None:
        """Like Django's delete_selected: a confirmation page first, then the service deletes each folder
        and re-points `latest` when needed."""
        backups = list(queryset.defer("files"))
        refusals = _delete_refusals(backups)
        if refusals:
            for backup_id, reason in refusals.items():
                self.message_user(
                    request,
                    f"Nothing was deleted: {backup_id} cannot be deleted because {reason}.",
                    messages.ERROR,
                )
            return None
        if request.POST.get("post") != "yes":
            return TemplateResponse(
                request,
                "admin/backups/backup/delete_selected_confirmation.html",
                {
                    **self.admin_site.each_context(request),
                    "title": "Delete backups?",
                    "opts": self.opts,
                    "backups": backups,
                    "total_size": sum(backup.size_bytes for backup in backups),
                    "includes_latest": any(backup.is_latest for backup in backups),
                    "action_checkbox_name": ACTION_CHECKBOX_NAME,
                },
            )
        deleted = []
        for backup in backups:
            try:
                services.backup_delete(backup_id=backup.id, actor=_actor(request), ip=client_ip(request))
            except services.ServiceError as error:
                self.message_user(request, f"{backup.id}: {error.message}", messages.ERROR)
            else:
                deleted.append(backup.id)
        if deleted:
            self.message_user(
                request, f"Deleted {len(deleted)} backup(s): {', '.join(deleted)}.", messages.SUCCESS
            )
        return None

    @admin.action(description="Pin selected backups (retention and delete keep them)")
    def pin_backups(self, request: HttpRequest, queryset: QuerySet[Backup]) -> None:
        self._set_pinned(request, queryset, pinned=True)

    @admin.action(description="Unpin selected backups")
    def unpin_backups(self, request: HttpRequest, queryset: QuerySet[Backup]) -> None:
        self._set_pinned(request, queryset, pinned=False)

    def _set_pinned(self, request: HttpRequest, queryset: QuerySet[Backup], *, pinned: bool) -> None:
        ids = list(queryset.values_list("id", flat=True))
        for backup_id in ids:
            services.backup_set_pinned(
                backup_id=backup_id, pinned=pinned, actor=_actor(request), ip=client_ip(request)
            )
        verb = "Pinned" if pinned else "Unpinned"
        self.message_user(request, f"{verb} {len(ids)} backup(s).", messages.SUCCESS)


# --- runs ----------------------------------------------------------------------------------------------


@admin.register(Run)
class RunAdmin(SuperuserReadOnlyAdmin):
    list_display = (
        "short_id",
        "status_badge",
        "type",
        "triggered_by",
        "created_at",
        "duration",
        "backup_link",
    )
    list_filter = ("status", "type", ("created_at", admin.DateFieldListFilter))
    search_fields = ("backup_id", "triggered_by", "description", "error")
    date_hierarchy = "created_at"
    list_per_page = 50
    actions = ("cancel_runs",)
    fieldsets = (
        (None, {"fields": ("id", "status_badge", "type", "description", "triggered_by", "backup_link")}),
        ("Timing", {"fields": ("created_at", "started_at", "finished_at", "duration")}),
        ("Progress", {"fields": ("progress", "progress_message", "cancel_requested")}),
        ("Result", {"fields": ("exit_code", "error_text", "output_text", "output_lines")}),
        ("Process", {"fields": ("worker", "pgid"), "classes": ("collapse",)}),
    )
    readonly_fields = (
        "id",
        "status_badge",
        "type",
        "description",
        "triggered_by",
        "backup_link",
        "created_at",
        "started_at",
        "finished_at",
        "duration",
        "progress",
        "progress_message",
        "cancel_requested",
        "exit_code",
        "error_text",
        "output_text",
        "output_lines",
        "worker",
        "pgid",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Run]:
        queryset = super().get_queryset(request)
        return queryset.defer("output") if self._on_changelist(request) else queryset

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Run], search_term: str
    ) -> tuple[QuerySet[Run], bool]:
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        try:
            run_id = uuid.UUID(search_term.strip())
        except ValueError:
            return results, may_have_duplicates
        # A pasted run id (from the API, a log line or the dashboard) finds its run.
        return results | queryset.filter(id=run_id), may_have_duplicates

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = {**(extra_context or {}), "active_run": services.active_run()}
        return super().changelist_view(request, context)

    def get_urls(self) -> list[URLPattern]:
        # Before the defaults: their `<path:object_id>/` would swallow these.
        return [
            path("start/", self.admin_site.admin_view(self.start_view), name="backups_run_start"),
            path(
                "<uuid:run_id>/cancel/",
                self.admin_site.admin_view(self.cancel_view),
                name="backups_run_cancel",
            ),
            *super().get_urls(),
        ]

    def start_view(self, request: HttpRequest) -> HttpResponse:
        """The same service as `POST /api/backup/create`: one run at a time, judged by the database."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = StartBackupForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                run = services.run_enqueue(
                    actor=_actor(request), ip=client_ip(request), description=form.cleaned_data["description"]
                )
            except services.ServiceError as error:
                self.message_user(request, error.message, messages.ERROR)
            else:
                self.message_user(
                    request,
                    format_html(
                        'Backup queued (run <a href="{}">{}</a>); the worker starts it within a second. '
                        'Follow it on the <a href="{}">live dashboard</a>.',
                        reverse("admin:backups_run_change", args=[run.id]),
                        str(run.id)[:8],
                        reverse("dashboard"),
                    ),
                    messages.SUCCESS,
                )
            return HttpResponseRedirect(reverse("admin:backups_run_changelist"))
        return self._confirmation(
            request,
            title="Start a backup",
            form=form,
            submit_label="Start backup",
            question="The backup script runs in the background; its progress appears on the live dashboard.",
            active_run=services.active_run(),
        )

    def cancel_view(self, request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        run = Run.objects.defer("output").filter(id=run_id).first()
        if run is None:
            self.message_user(request, "Run not found.", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:backups_run_changelist"))
        if request.method == "POST":
            self._cancel(request, run)
            return HttpResponseRedirect(reverse("admin:backups_run_change", args=[run.id]))
        return self._confirmation(
            request,
            title="Cancel the backup run?",
            submit_label="Yes, cancel it",
            danger=True,
            question=f"Run {run.id} is {run.status}. Cancelling ends the backup script's whole process "
            "group; the partial folder is kept as incomplete.",
        )

    def _confirmation(self, request: HttpRequest, **context: Any) -> TemplateResponse:
        return TemplateResponse(
            request,
            "admin/backups/confirm.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                **context,
            },
        )

    def _cancel(self, request: HttpRequest, run: Run) -> None:
        try:
            services.run_request_cancel(run=run, actor=_actor(request), ip=client_ip(request))
        except services.ServiceError as error:
            self.message_user(request, f"Run {str(run.id)[:8]}: {error.message}", messages.ERROR)
        else:
            self.message_user(request, f"Run {str(run.id)[:8]}: cancellation requested.", messages.SUCCESS)

    @admin.action(description="Cancel selected runs")
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        for run in queryset.defer("output"):
            self._cancel(request, run)

    @admin.display(description="Run", ordering="created_at")
    def short_id(self, run: Run) -> str:
        return str(run.id)[:8]

    @admin.display(description="Status", ordering="status")
    def status_badge(self, run: Run) -> SafeString:
        if run.is_active:
            return format_html("{} {}%", badge(run.status), run.progress_percent)
        return badge(run.status)

    @admin.display(description="Duration")
    def duration(self, run: Run) -> str:
        return human_duration(run.duration_seconds)

    @admin.display(description="Progress", ordering="progress_percent")
    def progress(self, run: Run) -> str:
        percent = f"{run.progress_percent}%"
        return f"{percent} · {run.progress_stage}" if run.progress_stage else percent

    @admin.display(description="Backup", ordering="backup_id")
    def backup_link(self, run: Run) -> str:
        if not run.backup_id:
            return "—"
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:backups_backup_change", args=[quote(run.backup_id)]),
            run.backup_id,
        )

    @admin.display(description="Error")
    def error_text(self, run: Run) -> str:
        if not run.error:
            return "—"
        return format_html('<pre style="white-space:pre-wrap;margin:0">{}</pre>', run.error)

    @admin.display(description="Output (head and tail)")
    def output_text(self, run: Run) -> str:
        if not run.output:
            return "—"
        return format_html(
            '<pre style="white-space:pre-wrap;max-height:30em;overflow:auto;margin:0">{}</pre>', run.output
        )


# --- config --------------------------------------------------------------------------------------------


@admin.register(BackupConfig)
class BackupConfigAdmin(SuperuserReadOnlyAdmin):
    """One row: the changelist opens its form. Saved through `services.config_update` (a PUT)."""

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
        return _is_superuser(request)

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
        services.config_update(
            document=form.document, actor=_actor(request), partial=False, ip=client_ip(request)
        )

    @admin.display(description="Next scheduled run")
    def next_run(self, config: BackupConfig) -> str:
        moment = selectors.next_scheduled_at()
        if moment is None:
            return "— (schedule disabled)"
        return f"{timezone.localtime(moment):%Y-%m-%d %H:%M %Z}"


# --- audit ---------------------------------------------------------------------------------------------


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
