"""Pages for people: the live dashboard (admin session)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import render
from django.urls import reverse

from backups import selectors
from backups.api.serializers import BackupListSerializer, RunSerializer
from backups.auth import actor_of
from backups.download_links import make_link_token
from backups.models import Backup, BackupStatus, Run

RECENT_BACKUPS = 20


def signed_download_url(backup_id: str, user: Any) -> str:
    """A link a browser can follow without an Authorization header: bound to this backup and user,
    valid DOWNLOAD_LINK_TTL seconds."""
    token = make_link_token(backup_id=backup_id, user_id=actor_of(user))
    return f"{reverse('backup-download', kwargs={'pk': backup_id})}?{urlencode({'sig': token})}"


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
