"""`GET /metrics`: the service's state in the Prometheus text exposition format (version 0.0.4).

Written by hand rather than with prometheus_client: a dozen gauges read from the database on each
scrape need no registry, no multi-process collector directory and no new dependency. Every value
is computed at scrape time, so web processes keep no state and any of them can answer.

A plain Django view, not a DRF one: scrapers carry a static `METRICS_TOKEN`, not a platform JWT.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from django.db.models import Count, Sum
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

from backups import catalogue, selectors
from backups.models import ACTIVE_RUN_STATUSES, Backup, Run, RunStatus

logger = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = dict[str, str]
Sample = tuple[Labels, float | int]


def _escape_label_value(value: str) -> str:
    # The exposition format's three escapes; status values never need them, but labels are data.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float | int) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _format_labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{name}="{_escape_label_value(value)}"' for name, value in labels.items())
    return "{" + inner + "}"


def render_metric(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> list[str]:
    """HELP and TYPE first, then one line per sample. A metric with no samples keeps its HELP/TYPE so
    that scrapers and readers still learn it exists (e.g. the last run's status before any run)."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines.extend(f"{name}{_format_labels(labels)} {_format_value(value)}" for labels, value in samples)
    return lines


def collect() -> list[str]:
    """Every metric line, read from the database and the backup root at the moment of the scrape."""
    # The same freshness rule as /api/backup/status: one stat when nothing changed on disk.
    try:
        selectors.ensure_catalogue_fresh()
    except catalogue.CatalogueError:
        # An unreadable root must not fail the scrape: the run metrics (the last success above all)
        # are what alerts hang on. /health reports the root itself.
        logger.warning("metrics: backup root not readable; catalogue metrics may be stale")

    # `finished_at` is filtered explicitly: PostgreSQL sorts NULLs first in a descending order.
    finished = Run.objects.filter(finished_at__isnull=False).order_by("-finished_at", "-created_at")
    last_success = finished.filter(status=RunStatus.SUCCEEDED).first()
    last_finished = finished.first()
    by_status = dict(Run.objects.values_list("status").annotate(count=Count("id")).order_by())
    totals = Backup.objects.aggregate(count=Count("id"), size=Sum("size_bytes"))
    running = Run.objects.filter(status__in=ACTIVE_RUN_STATUSES).exists()
    disk_free: list[Sample] = []
    disk_total: list[Sample] = []
    try:
        total_bytes, free_bytes = catalogue.disk_usage(Path(settings.BACKUP_ROOT))
        disk_free, disk_total = [({}, free_bytes)], [({}, total_bytes)]
    except catalogue.CatalogueError:
        pass  # no existing ancestor of the root: leave the samples out rather than claim 0 bytes free

    lines: list[str] = []
    lines += render_metric(
        "backup_last_success_timestamp_seconds",
        "gauge",
        "Unix time at which the last successful backup run finished (0 if none yet).",
        [({}, last_success.finished_at.timestamp() if last_success else 0)],
    )
    lines += render_metric(
        "backup_last_run_duration_seconds",
        "gauge",
        "Duration of the last finished backup run, whatever its outcome (0 if none yet).",
        [({}, (last_finished.duration_seconds or 0) if last_finished else 0)],
    )
    lines += render_metric(
        "backup_last_run_status",
        "gauge",
        "Outcome of the last finished backup run: 1 on the series labelled with its status.",
        [({"status": last_finished.status}, 1)] if last_finished else [],
    )
    lines += render_metric(
        "backup_count",
        "gauge",
        "Number of backups in the catalogue (folders in the backup root).",
        [({}, totals["count"] or 0)],
    )
    lines += render_metric(
        "backup_total_size_bytes",
        "gauge",
        "Sum of the sizes of all catalogued backups.",
        [({}, totals["size"] or 0)],
    )
    # A gauge despite the `_total` suffix: these are row counts, and the queued/running ones go down
    # again (and retention may prune old runs), which a Prometheus counter must never do.
    lines += render_metric(
        "backup_runs_total",
        "gauge",
        "Number of recorded backup runs, by status.",
        [({"status": status}, by_status.get(status, 0)) for status in RunStatus.values],
    )
    lines += render_metric(
        "backup_disk_free_bytes",
        "gauge",
        "Bytes still available to the service on the file system of the backup root.",
        disk_free,
    )
    lines += render_metric(
        "backup_disk_total_bytes",
        "gauge",
        "Size of the file system of the backup root.",
        disk_total,
    )
    lines += render_metric(
        "backup_worker_up",
        "gauge",
        "1 if a backup worker renewed its lease in the last minute, else 0.",
        [({}, 1 if selectors.worker_alive() else 0)],
    )
    lines += render_metric(
        "backup_running",
        "gauge",
        "1 while a backup run is queued or running (as `running` in /api/backup/status), else 0.",
        [({}, 1 if running else 0)],
    )
    return lines


def _authorized(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return True  # open when no token is configured (loopback-only or embedded installs)
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header may carry any latin-1 byte.
    return hmac.compare_digest(presented.strip().encode(), token.encode())


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _authorized(request):
        response = HttpResponse(
            "Authentication credentials were not provided or are invalid.\n",
            status=401,
            content_type="text/plain; charset=utf-8",
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    response = HttpResponse("\n".join(collect()) + "\n", content_type=CONTENT_TYPE)
    # A scrape is a reading of the moment: no proxy or browser may serve an old one.
    response["Cache-Control"] = "no-store"
    return response
