"""The live dashboard (admin session): rendered from the same documents as the API, then kept current
from the WebSocket."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import render

from backups.api.serializers.backups import BackupListSerializer
from backups.api.serializers.runs import RunSerializer
from backups.api.serializers.status import StatusSerializer
from backups.catalogue import selectors as catalogue_selectors
from backups.catalogue import sync
from backups.catalogue.models import BackupStatus
from backups.config.selectors import config_current, schedule_in_words
from backups.download_links import signed_download_url
from backups.runs.selectors import last_run
from backups.status import documents

RECENT_BACKUPS = 20


@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    if not request.user.is_superuser:
        return HttpResponseForbidden("Only superusers may use the backup dashboard.")
    sync.ensure_fresh()
    status = StatusSerializer(documents.status()).data
    backups = BackupListSerializer(catalogue_selectors.recent_backups(RECENT_BACKUPS), many=True).data
    for row in backups:
        if row["status"] != BackupStatus.RUNNING:
            row["download_url"] = signed_download_url(row["id"], request.user)
    run = last_run()
    document = config_current()
    # The page renders itself from this document, then keeps it current from the WebSocket and the API.
    initial = {
        "status": status,
        "backups": backups,
        "last_run": RunSerializer(run).data if run else None,
        "recent": RECENT_BACKUPS,
        "schedule": schedule_in_words(document),
        "retention": document["retention"],
    }
    context = {**admin.site.each_context(request), "title": "Live dashboard", "initial": initial}
    return render(request, "backups/dashboard.html", context)
