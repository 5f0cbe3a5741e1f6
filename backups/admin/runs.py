"""The runs: start a backup, cancel one, read its output."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from backups.admin.forms import StartBackupForm
from backups.admin.site import SuperuserReadOnlyAdmin, badge, human_duration
from backups.audit import Actor
from backups.errors import ServiceError
from backups.runs.models import Run
from backups.runs.selectors import current_run
from backups.runs.services import run_enqueue, run_request_cancel


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
        context = {**(extra_context or {}), "active_run": current_run()}
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
                description = form.cleaned_data["description"]
                run = run_enqueue(actor=Actor.from_request(request), description=description)
            except ServiceError as error:
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
            active_run=current_run(),
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
            run_request_cancel(run=run, actor=Actor.from_request(request))
        except ServiceError as error:
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
