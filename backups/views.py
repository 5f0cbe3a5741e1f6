"""Pages for people: the live dashboard (admin session)."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import render

from backups import selectors
from backups.api.serializers import BackupListSerializer, RunSerializer
from backups.download_links import signed_download_url
from backups.models import Backup, BackupStatus, Run

RECENT_BACKUPS = 20


@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    if not request.user.is_superuser:
        return HttpResponseForbidden("Only superusers may use the backup dashboard.")
    status = selectors.status_document()  # first: it brings the catalogue up to date with the disk
    backups = BackupListSerializer(
        Backup.objects.defer("files", "signature").order_by("-created_at", "-id")[:RECENT_BACKUPS], many=True
    ).data
    for row in backups:
        if row["status"] != BackupStatus.RUNNING:
            row["download_url"] = signed_download_url(row["id"], request.user)
    last_run = Run.objects.defer("output").order_by("-created_at").first()
    # The page renders itself from this document, then keeps it current from the WebSocket and the API.
    initial = {
        "status": status,
        "backups": backups,
        "last_run": RunSerializer(last_run).data if last_run else None,
        "recent": RECENT_BACKUPS,
    }
    context = {**admin.site.each_context(request), "title": "Live dashboard", "initial": initial}
    return render(request, "backups/dashboard.html", context)
