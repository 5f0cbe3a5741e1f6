"""The service's state as Prometheus metrics, computed at scrape time by a custom collector.

Every value is read from the database and the backup root when scraped, so web processes keep no
state, any of them can answer, and no multi-process directory is needed. `prometheus_client` renders
the text format (and OpenMetrics when a scraper asks for it) and does the escaping.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.db.models import Count, Sum
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from backups.catalogue import sync
from backups.catalogue.models import Backup, VerificationStatus
from backups.catalogue.paths import CatalogueError, disk_usage
from backups.offsite import services as offsite
from backups.offsite.models import RemoteDeletion
from backups.runs.models import ACTIVE_RUN_STATUSES, Run, RunStatus
from backups.worker.lease import worker_alive

logger = logging.getLogger(__name__)


class BackupCollector(Collector):
    """Every metric, read at the moment of the scrape."""

    def collect(self) -> Iterator[Metric]:
        # The same freshness rule as /api/backup/status: one stat when nothing changed on disk.
        try:
            sync.ensure_fresh()
        except CatalogueError:
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

        yield _gauge(
            "backup_last_success_timestamp_seconds",
            "Unix time at which the last successful backup run finished (0 if none yet).",
            last_success.finished_at.timestamp() if last_success else 0,
        )
        yield _gauge(
            "backup_last_run_duration_seconds",
            "Duration of the last finished backup run, whatever its outcome (0 if none yet).",
            (last_finished.duration_seconds or 0) if last_finished else 0,
        )
        status = GaugeMetricFamily(
            "backup_last_run_status",
            "Outcome of the last finished backup run: 1 on the series labelled with its status.",
            labels=["status"],
        )
        if last_finished:
            status.add_metric([last_finished.status], 1)
        yield status
        yield _gauge(
            "backup_backups",
            "Number of backups in the catalogue (folders in the backup root).",
            totals["count"] or 0,
        )
        yield _gauge(
            "backup_total_size_bytes", "Sum of the sizes of all catalogued backups.", totals["size"] or 0
        )
        # Row counts, and the queued/running ones go down again: a gauge (so no `_total` suffix).
        runs = GaugeMetricFamily(
            "backup_runs", "Number of recorded backup runs, by status.", labels=["status"]
        )
        for value in RunStatus.values:
            runs.add_metric([value], by_status.get(value, 0))
        yield runs
        free = GaugeMetricFamily(
            "backup_disk_free_bytes",
            "Bytes still available to the service on the file system of the backup root.",
        )
        total = GaugeMetricFamily("backup_disk_total_bytes", "Size of the file system of the backup root.")
        try:
            total_bytes, free_bytes = disk_usage(Path(settings.BACKUP_ROOT))
            free.add_metric([], free_bytes)
            total.add_metric([], total_bytes)
        except CatalogueError:
            pass  # no existing ancestor of the root: leave the samples out rather than claim 0 bytes free
        yield free
        yield total
        yield _gauge(
            "backup_worker_up",
            "1 if a backup worker renewed its lease in the last minute, else 0.",
            int(worker_alive()),
        )
        verification = dict(
            Backup.objects.values_list("verification_status").annotate(n=Count("id")).order_by()
        )
        states = GaugeMetricFamily(
            "backup_verification_state_backups",
            "Backups by the outcome of their last verification (failed: do not rely on them).",
            labels=["state"],
        )
        for state in VerificationStatus.values:
            states.add_metric([state], verification.get(state, 0))
        yield states
        copies = GaugeMetricFamily(
            "backup_offsite_backups",
            "Number of catalogued backups by the state of their off-site copy.",
            labels=["status"],
        )
        for value, count in offsite.status_counts().items():
            copies.add_metric([value], count)
        yield copies
        last_copy = offsite.last_copy_at()
        yield _gauge(
            "backup_offsite_last_success_timestamp_seconds",
            "Unix time at which the last off-site copy completed (0 if none yet).",
            last_copy.timestamp() if last_copy else 0,
        )
        yield _gauge(
            "backup_offsite_removals_owed",
            "Copies of deleted backups still to be removed from the off-site store.",
            RemoteDeletion.objects.count(),
        )
        yield _gauge(
            "backup_running",
            "1 while a backup run is queued or running (as `running` in /api/backup/status), else 0.",
            int(running),
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def registry() -> CollectorRegistry:
    """A registry holding only this service's collector (no process or platform metrics of the
    library's default registry: they would describe whichever web process answered)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BackupCollector())
    return registry
