"""The backups: the catalogue as the disk has it; delete, pin and download go through the services."""

from __future__ import annotations

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
from django.utils.http import urlencode
from django.utils.safestring import SafeString

from backups.admin.site import FLAG_HTML, SuperuserReadOnlyAdmin, badge
from backups.audit import Actor
from backups.catalogue import sync
from backups.catalogue.models import Backup
from backups.catalogue.services import backup_delete, backup_set_pinned, deletion_refusal
from backups.download_links import signed_download_url
from backups.errors import ServiceError
from backups.offsite.services import configuration_problems, offsite_mark_owed, offsite_request
from backups.runs.selectors import current_run
from backups.verification.services import verification_request

FILES_SHOWN = 500
DESCRIPTION_SHOWN = 40


def _delete_refusals(backups: list[Backup]) -> dict[str, str]:
    """Why each of these backups cannot be deleted, checked for the whole selection before anything is
    deleted (so a mixed selection deletes nothing). The rule is `deletion_refusal`, the one
    `backup_delete` enforces, which stays the final judge of every single deletion."""
    running = current_run()
    refusals = {}
    for backup in backups:
        refusal = deletion_refusal(backup, backup_id=backup.id, running=running)
        if refusal:
            refusals[backup.id] = refusal
    return refusals


@admin.register(Backup)
class BackupAdmin(SuperuserReadOnlyAdmin):
    list_display = (
        "id",
        "created",
        "status_badge",
        "size",
        "type",
        "short_description",
        "started_by",
        "flags",
    )
    list_filter = (
        "status",
        "type",
        "pinned",
        "is_latest",
        "local",
        "offsite_status",
        ("created_at", admin.DateFieldListFilter),
    )
    search_fields = ("id", "description", "triggered_by")
    date_hierarchy = "created_at"
    list_per_page = 50
    actions = ("delete_backups", "pin_backups", "unpin_backups", "copy_offsite")
    fieldsets = (
        (
            None,
            {"fields": ("id", "created_at", "status_badge", "type", "description", "started_by", "run_link")},
        ),
        ("Contents", {"fields": ("size", "file_count", "files_table")}),
        ("Verification", {"fields": ("verification_summary",)}),
        ("Flags", {"fields": ("is_latest", "pinned", "verified", "local", "synced_at")}),
        (
            "Off-site copy",
            {
                "fields": (
                    "offsite_badge",
                    "offsite_copied_at",
                    "offsite_size",
                    "offsite_sent",
                    "offsite_error",
                )
            },
        ),
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
        "verification_summary",
        "is_latest",
        "pinned",
        "verified",
        "local",
        "synced_at",
        "offsite_badge",
        "offsite_copied_at",
        "offsite_size",
        "offsite_sent",
        "offsite_error",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Backup]:
        queryset = super().get_queryset(request)
        # A backup's file list can hold thousands of entries; a page of rows does not need them.
        return queryset.defer("files", "signature") if self._on_changelist(request) else queryset

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        sync.ensure_fresh()
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
        if backup is not None:
            quoted = quote(backup.id)
            context["pin_url"] = reverse("admin:backups_backup_pin", args=[quoted])
            context["delete_url"] = reverse("admin:backups_backup_delete_one", args=[quoted])
            if backup.status != "running":
                context["download_url"] = signed_download_url(backup.id, request.user)
                context["verify_url"] = reverse("admin:backups_backup_verify", args=[quoted])
        return super().change_view(request, object_id, form_url, context)

    def get_urls(self) -> list[URLPattern]:
        # Before the defaults: their `<path:object_id>/` would swallow these.
        return [
            path(
                "<path:object_id>/verify/",
                self.admin_site.admin_view(self.verify_view),
                name="backups_backup_verify",
            ),
            path(
                "<path:object_id>/offsite/",
                self.admin_site.admin_view(self.offsite_view),
                name="backups_backup_offsite",
            ),
            path(
                "<path:object_id>/pin/",
                self.admin_site.admin_view(self.pin_view),
                name="backups_backup_pin",
            ),
            path(
                "<path:object_id>/delete-backup/",
                self.admin_site.admin_view(self.delete_one_view),
                name="backups_backup_delete_one",
            ),
            path(
                "<path:object_id>/file/",
                self.admin_site.admin_view(self.file_view),
                name="backups_backup_file",
            ),
            *super().get_urls(),
        ]

    def pin_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Pin or unpin (`pinned=1|0`): the same service as `POST /api/backup/<id>/pin` and `/unpin`."""
        if not self.has_view_permission(request) or request.method != "POST":
            raise PermissionDenied
        backup_id = unquote(object_id)
        pinned = request.POST.get("pinned") == "1"
        try:
            backup_set_pinned(backup_id=backup_id, pinned=pinned, actor=Actor.from_request(request))
        except ServiceError as error:
            self.message_user(request, error.message, messages.ERROR)
        else:
            verb = "Pinned" if pinned else "Unpinned"
            what = "retention and delete keep it" if pinned else "retention may delete it again"
            self.message_user(request, f"{verb} {backup_id}: {what}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:backups_backup_change", args=[quote(backup_id)]))

    def delete_one_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Delete this one backup after a confirmation: the same service as `DELETE /api/backup/<id>`."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        backup_id = unquote(object_id)
        change_url = reverse("admin:backups_backup_change", args=[quote(backup_id)])
        backup = Backup.objects.defer("files").filter(id=backup_id).first()
        refusal = _delete_refusals([backup]).get(backup_id) if backup is not None else "Backup not found."
        if refusal:
            self.message_user(request, f"{backup_id} cannot be deleted. {refusal}", messages.ERROR)
            return HttpResponseRedirect(change_url if backup is not None else self._changelist_url())
        if request.method == "POST":
            try:
                backup_delete(backup_id=backup_id, actor=Actor.from_request(request))
            except ServiceError as error:
                self.message_user(request, f"{backup_id}: {error.message}", messages.ERROR)
                return HttpResponseRedirect(change_url)
            self.message_user(request, f"Deleted {backup_id}.", messages.SUCCESS)
            return HttpResponseRedirect(self._changelist_url())
        latest = " It is the latest backup: `latest` moves to the newest completed one left."
        if not backup.is_latest:
            latest = ""
        return TemplateResponse(
            request,
            "admin/backups/confirm.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": f"Delete {backup_id}?",
                "submit_label": "Yes, delete its folder",
                "danger": True,
                "question": f"The folder {backup_id} ({filesizeformat(backup.size_bytes)}, "
                f"{backup.file_count} files) is removed from the backup root. This cannot be undone.{latest}",
            },
        )

    def file_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """One file of the backup (`?path=`): a freshly signed link for this user, followed at once. The
        download endpoint checks the path beneath the folder as it does for `?file=`."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        rel_path = request.GET.get("path", "")
        if not rel_path:
            raise PermissionDenied
        return HttpResponseRedirect(signed_download_url(unquote(object_id), request.user, rel_path))

    def _changelist_url(self) -> str:
        return reverse("admin:backups_backup_changelist")

    def offsite_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """ "Copy off-site now": the same service as `POST /api/backup/<id>/offsite`."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        backup_id = unquote(object_id)
        change_url = reverse("admin:backups_backup_change", args=[quote(backup_id)])
        if request.method == "POST":
            try:
                run = offsite_request(backup_id=backup_id, actor=Actor.from_request(request))
            except ServiceError as error:
                self.message_user(request, error.message, messages.ERROR)
            else:
                self.message_user(
                    request,
                    format_html(
                        'Off-site copy queued (run <a href="{}">{}</a>); follow it on the '
                        '<a href="{}">live dashboard</a>.',
                        reverse("admin:backups_run_change", args=[run.id]),
                        str(run.id)[:8],
                        reverse("dashboard"),
                    ),
                    messages.SUCCESS,
                )
            return HttpResponseRedirect(change_url)
        return TemplateResponse(
            request,
            "admin/backups/confirm.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": f"Copy {backup_id} off site now?",
                "submit_label": "Copy off-site now",
                "question": "The backup is uploaded to the off-site store in the background (files the "
                "store already holds are not sent again). A backup requested meanwhile waits for it.",
                "active_run": current_run(),
            },
        )

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

    def verify_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The same service as `POST /api/backup/<id>/verify`: a verify run in the one-at-a-time lane."""
        if not self.has_view_permission(request) or request.method != "POST":
            raise PermissionDenied
        backup_id = unquote(object_id)
        level = "quick" if request.POST.get("level") == "quick" else "deep"
        try:
            run = verification_request(backup_id=backup_id, level=level, actor=Actor.from_request(request))
        except ServiceError as error:
            self.message_user(request, error.message, messages.ERROR)
        else:
            self.message_user(
                request,
                format_html(
                    'A {} verification of {} is queued (run <a href="{}">{}</a>); follow it on the '
                    '<a href="{}">live dashboard</a>.',
                    level,
                    backup_id,
                    reverse("admin:backups_run_change", args=[run.id]),
                    str(run.id)[:8],
                    reverse("dashboard"),
                ),
                messages.SUCCESS,
            )
        return HttpResponseRedirect(reverse("admin:backups_backup_change", args=[quote(backup_id)]))

    @admin.display(description="Verification")
    def verification_summary(self, backup: Backup) -> str:
        details = backup.verification or {}
        when = (
            f"{timezone.localtime(backup.verified_at):%Y-%m-%d %H:%M:%S %Z}"
            if backup.verified_at
            else "never"
        )
        head = format_html(
            "{} {} · {}{}",
            badge(backup.verification_status),
            backup.verification_level or "",
            when,
            format_html(" · a {} check is owed", backup.verification_due) if backup.verification_due else "",
        )
        problems = format_html_join("", "<li>{}</li>", ((p,) for p in details.get("problems", [])[:100]))
        databases = format_html_join(
            "",
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{} s</td></tr>",
            (
                (
                    d.get("dump"),
                    "ok" if d.get("ok") else "failed",
                    d.get("tables"),
                    d.get("rows"),
                    d.get("seconds"),
                )
                for d in details.get("databases", [])
            ),
        )
        return format_html(
            "<p>{}</p>{}{}",
            head,
            format_html("<ul>{}</ul>", problems) if problems else "",
            format_html(
                "<table><thead><tr><th>Restore-test of</th><th>Result</th><th>Tables</th><th>Rows</th>"
                "<th>Took</th></tr></thead><tbody>{}</tbody></table>",
                databases,
            )
            if databases
            else "",
        )

    @admin.display(description="Created", ordering="created_at")
    def created(self, backup: Backup) -> str:
        # Compact, to the minute, in the server's zone: the list stays within a laptop's width.
        return f"{timezone.localtime(backup.created_at):%Y-%m-%d %H:%M}"

    @admin.display(description="Description", ordering="description")
    def short_description(self, backup: Backup) -> str:
        text = backup.description or ""
        if len(text) <= DESCRIPTION_SHOWN:
            return text or "—"
        return format_html('<span title="{}">{}…</span>', text, text[: DESCRIPTION_SHOWN - 1])

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
        flags = format_html_join(" ", FLAG_HTML, ((name,) for name in names))
        if backup.verification_status == "failed":
            flags = format_html("{} {}", flags, badge("verification failed", colour="failed"))
        # The off-site copy shares the column (its own filter is beside the list): the list stays
        # within a laptop's width with the Download link in view.
        if backup.offsite_status != "none" or not backup.local:
            flags = format_html("{} {}", flags, self.offsite_badge(backup))
        return flags or "—"

    @admin.display(description="Off-site", ordering="offsite_status")
    def offsite_badge(self, backup: Backup) -> SafeString:
        if backup.local:
            return badge(f"off-site {backup.offsite_status}", colour=backup.offsite_status)
        return format_html("{} {}", badge(backup.offsite_status), format_html(FLAG_HTML, "only off site"))

    @admin.display(description="Copied at")
    def offsite_copied_at(self, backup: Backup) -> str:
        return str(backup.offsite_at) if backup.offsite_at else "—"

    @admin.display(description="Copy holds")
    def offsite_size(self, backup: Backup) -> str:
        return filesizeformat(backup.offsite_bytes) if backup.offsite_status == "ok" else "—"

    @admin.display(description="Last upload sent")
    def offsite_sent(self, backup: Backup) -> str:
        return filesizeformat(backup.offsite_uploaded_bytes) if backup.offsite_at else "—"

    @admin.display(description="Last error")
    def offsite_error(self, backup: Backup) -> str:
        return (backup.offsite or {}).get("error") or "—"

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
        file_url = reverse("admin:backups_backup_file", args=[quote(backup.id)])
        downloadable = backup.status != "running" and backup.local
        rows = format_html_join(
            "",
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            (
                (
                    f["path"],
                    filesizeformat(f["size_bytes"]),
                    format_html(
                        '<a href="{}?{}" download>Download</a>', file_url, urlencode({"path": f["path"]})
                    )
                    if downloadable
                    else "",
                )
                for f in files[:FILES_SHOWN]
            ),
        )
        more = (
            format_html("<p>… and {} more files.</p>", len(files) - FILES_SHOWN)
            if len(files) > FILES_SHOWN
            else ""
        )
        return format_html(
            '<table id="backup-files"><thead><tr><th>Path</th><th>Size</th><th></th></tr></thead>'
            "<tbody>{}</tbody></table>{}",
            rows,
            more,
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
                    f"Nothing was deleted: {backup_id} cannot be deleted. {reason}",
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
                backup_delete(backup_id=backup.id, actor=Actor.from_request(request))
            except ServiceError as error:
                self.message_user(request, f"{backup.id}: {error.message}", messages.ERROR)
            else:
                deleted.append(backup.id)
        if deleted:
            self.message_user(
                request, f"Deleted {len(deleted)} backup(s): {', '.join(deleted)}.", messages.SUCCESS
            )
        return None

    @admin.action(description="Copy selected backups off site (one after the other, when the lane is free)")
    def copy_offsite(self, request: HttpRequest, queryset: QuerySet[Backup]) -> None:
        problems = configuration_problems()
        if problems:
            self.message_user(request, "Off-site copies are not ready: " + " ".join(problems), messages.ERROR)
            return
        ids = list(queryset.values_list("id", flat=True))
        count = offsite_mark_owed(backup_ids=ids, actor=Actor.from_request(request))
        skipped = len(ids) - count
        note = (
            f" ({skipped} skipped: running, incomplete, only off site or being uploaded)" if skipped else ""
        )
        self.message_user(request, f"{count} backup(s) owed an off-site copy{note}.", messages.SUCCESS)

    @admin.action(description="Pin selected backups (retention and delete keep them)")
    def pin_backups(self, request: HttpRequest, queryset: QuerySet[Backup]) -> None:
        self._set_pinned(request, queryset, pinned=True)

    @admin.action(description="Unpin selected backups")
    def unpin_backups(self, request: HttpRequest, queryset: QuerySet[Backup]) -> None:
        self._set_pinned(request, queryset, pinned=False)

    def _set_pinned(self, request: HttpRequest, queryset: QuerySet[Backup], *, pinned: bool) -> None:
        ids = list(queryset.values_list("id", flat=True))
        for backup_id in ids:
            backup_set_pinned(backup_id=backup_id, pinned=pinned, actor=Actor.from_request(request))
        verb = "Pinned" if pinned else "Unpinned"
        self.message_user(request, f"{verb} {len(ids)} backup(s).", messages.SUCCESS)
