"""The health banner of the dashboard and the admin index: what is wrong right now, each with what to
do about it, worst first. It reads; it never writes."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from backups.catalogue.models import Backup, BackupStatus
from backups.catalogue.paths import CatalogueError, disk_usage
from backups.config.selectors import config_current
from backups.config.warnings import config_warnings
from backups.runs.models import Run, RunKind, RunStatus
from backups.runs.selectors import cancelled_by, last_successful_run
from backups.status.script import script_available
from backups.worker.lease import worker_last_seen_seconds

NEARLY_FULL = 0.90


@dataclass(frozen=True)
class Notice:
    level: str  # "error" | "warning"
    message: str
    action: str


_UNREAD = object()


def notices(
    document: dict[str, Any] | None = None, last_success: Any = _UNREAD, newest_completed_at: Any = _UNREAD
) -> list[dict[str, Any]]:
    """`document`, `last_success` and `newest_completed_at` (the config document, the last successful
    run and when the newest completed local backup was made, None for none) when the caller has just
    read them (the status document does), so they are not read twice."""
    found: list[Notice] = []
    seen = worker_last_seen_seconds()
    if seen is None or seen > settings.WORKER_STALE_SECONDS:
        when = "ever" if seen is None else f"for {int(seen)} s"
        found.append(
            Notice(
                "error",
                f"No backup worker has been seen {when}: queued and scheduled backups do not run.",
                "Start `python manage.py backup_worker` (or `serve` without --no-worker) and check its log.",
            )
        )
    if not script_available():
        found.append(
            Notice(
                "error",
                "The backup script is missing or not executable.",
                "Check BACKUP_SCRIPT and `chmod +x` it; POST /api/backup/test-script says what is wrong.",
            )
        )
    root = Path(settings.BACKUP_ROOT)
    if not (root.is_dir() and os.access(root, os.W_OK | os.X_OK)):
        found.append(
            Notice("error", "The backup root is missing or not writable.", "Check BACKUP_ROOT and its owner.")
        )
    else:
        try:
            total, free = disk_usage(root)
        except CatalogueError:
            total, free = 0, 0
        if total and 1 - free / total >= NEARLY_FULL:
            found.append(
                Notice(
                    "warning",
                    f"The disk of the backup root is {round(100 * (1 - free / total))} % full.",
                    "Free space, or tighten retention (the config's retention counts).",
                )
            )
    last = (
        Run.objects.filter(kind=RunKind.BACKUP, finished_at__isnull=False)
        .exclude(status=RunStatus.SKIPPED)
        .order_by("-finished_at")
        .first()
    )
    if last is not None and last.status != RunStatus.SUCCEEDED:
        who = cancelled_by(last.id) if last.status == RunStatus.CANCELLED else ""
        if who:
            # A person's decision, not a fault: said, but not as an error.
            found.append(
                Notice(
                    "warning",
                    f"The last backup run was cancelled by {who}; no backup was made by it.",
                    "Start one with “Back up now” when it suits.",
                )
            )
        else:
            verb = "failed" if last.status == RunStatus.FAILED else f"was {last.status}"
            found.append(
                Notice(
                    "error",
                    f"The last backup run {verb}: {(last.error or last.status).splitlines()[0][:200]}",
                    f"Read its log (Runs in the admin, or /api/backup/logs?source=run&run={last.id}) "
                    "and run it again.",
                )
            )
    document = document if document is not None else config_current()
    stale_hours = document["notifications"]["staleAfterHours"] or 26
    success = last_successful_run() if last_success is _UNREAD else last_success
    # A backup made outside the service (cron, by hand) counts too: its folder is as good as a run's.
    newest = newest_completed_at if newest_completed_at is not _UNREAD else newest_completed_local_at()
    moments = [moment for moment in (success and success.finished_at, newest) if moment]
    if not moments or max(moments) < timezone.now() - timedelta(hours=stale_hours):
        found.append(
            Notice(
                "warning",
                f"No backup has succeeded in the last {stale_hours} h."
                if moments
                else "No backup has succeeded yet.",
                "Start one now, and check the schedule and the last runs.",
            )
        )
    found.extend(
        Notice("warning", text, "Change it in the configuration if this is not meant.")
        for text in config_warnings(document)
    )
    found.sort(key=lambda notice: notice.level != "error")
    return [asdict(notice) for notice in found]


def newest_completed_local_at() -> Any:
    return (
        Backup.objects.filter(status=BackupStatus.COMPLETED, local=True)
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
