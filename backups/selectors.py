"""Reads used by views, consumers and the status document."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from backups import catalogue, config_document, logtail, services
from backups.models import (
    ACTIVE_RUN_STATUSES,
    AuditEvent,
    Backup,
    BackupStatus,
    Run,
    RunStatus,
    WorkerLease,
)

_sync_lock = threading.Lock()
_seen_root_signature: str | None = None


def _root_signature(root: Path) -> str:
    try:
        stat = root.stat()
    except OSError:
        return "missing"
    return f"{stat.st_mtime_ns}:{stat.st_ino}"


def ensure_catalogue_fresh() -> None:
    """Re-sync before answering when folders were added or removed since this process last looked
    (the root's mtime changes then); otherwise cost one stat."""
    global _seen_root_signature
    signature = _root_signature(Path(settings.BACKUP_ROOT))
    if signature == _seen_root_signature:
        return
    with _sync_lock:
        if signature == _seen_root_signature:
            return
        services.catalogue_sync()
        _seen_root_signature = signature


def sync_catalogue() -> dict[str, int]:
    """A full sync that also counts as this process having looked (the worker's start-up and periodic
    syncs, so the first list request after them does not walk the root again)."""
    global _seen_root_signature
    with _sync_lock:
        signature = _root_signature(Path(settings.BACKUP_ROOT))
        result = services.catalogue_sync()
        _seen_root_signature = signature
    return result


def latest_backup() -> Backup | None:
    """The target of `latest`: the link when it names a completed backup, else the newest completed."""
    backup = Backup.objects.filter(is_latest=True, status=BackupStatus.COMPLETED).first()
    return (
        backup or Backup.objects.filter(status=BackupStatus.COMPLETED).order_by("-created_at", "-id").first()
    )


def get_backup(backup_id: str) -> Backup:
    """A catalogued backup by id or `latest`, only if its folder is safely inside the root."""
    ensure_catalogue_fresh()
    if backup_id == catalogue.LATEST_LINK:
        backup = latest_backup()
        if backup is None:
            raise services.NotFound("No completed backup yet.")
        return backup
    try:
        catalogue.resolve(Path(settings.BACKUP_ROOT), backup_id)
    except catalogue.BackupNotFound:
        raise services.NotFound("Backup not found.") from None
    backup = Backup.objects.filter(id=backup_id).first()
    if backup is None:
        services.catalogue_sync(force_ids=[backup_id])
        backup = Backup.objects.filter(id=backup_id).first()
    if backup is None:
        raise services.NotFound("Backup not found.")
    return backup


def current_run() -> Run | None:
    return Run.objects.filter(status__in=ACTIVE_RUN_STATUSES).order_by("created_at").first()


def last_successful_run() -> Run | None:
    return Run.objects.filter(status=RunStatus.SUCCEEDED).order_by("-finished_at").first()


def expected_duration() -> float | None:
    """The previous successful run's duration: the time-based progress estimate and the ETA."""
    run = last_successful_run()
    return run.duration_seconds if run else None


def next_scheduled_at(document: dict[str, Any] | None = None) -> datetime | None:
    """When the schedule fires next, in the server's time zone; None when it is disabled."""
    document = document or services.config_current()
    if not document["enabled"]:
        return None
    return config_document.next_fire_time(document["schedule"], timezone.localtime())


def script_available() -> bool:
    script = Path(settings.BACKUP_SCRIPT)
    return script.is_file() and os.access(script, os.X_OK)


def worker_alive() -> bool:
    lease = WorkerLease.objects.filter(id=1).first()
    if lease is None or not lease.holder:
        return False
    return lease.renewed_at >= timezone.now() - timedelta(seconds=settings.WORKER_STALE_SECONDS)


def status_document() -> dict[str, Any]:
    from backups.api.serializers import BackupSerializer, RunSerializer

    ensure_catalogue_fresh()
    run = current_run()
    last = Backup.objects.order_by("-created_at", "-id").defer("files").first()
    totals = Backup.objects.aggregate(total=Sum("size_bytes"))
    total_bytes, free_bytes = catalogue.disk_usage(Path(settings.BACKUP_ROOT))
    successful = last_successful_run()
    document = services.config_current()
    next_at = next_scheduled_at(document)
    return {
        "running": run is not None,
        "current_run": RunSerializer(run).data if run else None,
        "last_backup": BackupSerializer(last, context={"without_files": True}).data if last else None,
        "last_successful_run": RunSerializer(successful).data if successful else None,
        "next_scheduled_at": next_at.isoformat() if next_at else None,
        "backups": {"count": Backup.objects.count(), "total_size_bytes": totals["total"] or 0},
        "disk": {"total_bytes": total_bytes, "free_bytes": free_bytes},
        "script": {"available": script_available()},
        "config": {"enabled": document["enabled"], "schedule": document["schedule"]},
    }


STARTED = time.monotonic()


def health_document() -> tuple[dict[str, Any], int]:
    checks: dict[str, Any] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = {"ok": True}
    except Exception:
        checks["database"] = {"ok": False, "detail": "database unreachable"}
    root = Path(settings.BACKUP_ROOT)
    if root.is_dir() and os.access(root, os.W_OK | os.X_OK):
        total, free = catalogue.disk_usage(root)
        used = 1 - free / total if total else 0
        checks["backup_root"] = {"ok": used <= 0.95, "used_percent": round(used * 100, 1)}
        if used > 0.95:
            checks["backup_root"]["detail"] = "disk almost full"
    else:
        checks["backup_root"] = {"ok": False, "detail": "backup root missing or not writable"}
    checks["script"] = {"ok": script_available()}
    if not checks["script"]["ok"]:
        checks["script"]["detail"] = "backup script missing or not executable"
    worker_ok = False
    if checks["database"]["ok"]:
        try:
            worker_ok = worker_alive()
        except Exception:
            worker_ok = False
    checks["worker"] = {"ok": worker_ok}
    if not worker_ok:
        checks["worker"]["detail"] = "no worker heartbeat in the last minute"
    if not checks["database"]["ok"]:
        status, code = "error", 503
    elif all(check["ok"] for check in checks.values()):
        status, code = "ok", 200
    else:
        status, code = "degraded", 200
    from backup_platform import __version__

    return {
        "status": status,
        "checks": checks,
        "version": __version__,
        "uptime_seconds": round(time.monotonic() - STARTED, 1),
    }, code


# --- logs -----------------------------------------------------------------------------------------------


def log_entries(source: str, lines: int, run: Run | None = None) -> list[dict[str, Any]]:
    if source == "script":
        return [
            logtail.parse_script_line(line)
            for line in logtail.tail_lines(Path(settings.BACKUP_SCRIPT_LOG), lines)
        ]
    if source == "service":
        return [
            logtail.parse_json_line(line) for line in logtail.tail_lines(Path(settings.SERVICE_LOG), lines)
        ]
    if source == "audit":
        rows = list(AuditEvent.objects.order_by("-created_at", "-id")[:lines])
        return [
            {
                "timestamp": row.created_at.isoformat(),
                "level": "info" if row.outcome == "ok" else "warning",
                "message": f"{row.action} {row.target}".strip(),
                "actor": row.actor,
                "action": row.action,
                "target": row.target,
                "outcome": row.outcome,
                "client_ip": row.client_ip,
                "details": row.details,
            }
            for row in reversed(rows)
        ]
    assert run is not None
    text_lines = run.output.splitlines()[-lines:] if run.output else []
    return [
        {
            "timestamp": None,
            "level": "error" if line.startswith("err: ") else "info",
            "message": line[5:] if line[:5] in {"out: ", "err: "} else line,
            "stream": "stderr" if line.startswith("err: ") else "stdout",
        }
        for line in text_lines
    ]
