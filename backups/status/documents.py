"""The status and health documents: what the service and its backups look like right now.

`status()` returns model objects and plain values; the API's `StatusSerializer` renders it for both
`GET /api/backup/status` and the WebSocket's `realtime-status`, so the two can never differ.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from backups.catalogue import selectors as catalogue_selectors
from backups.catalogue.models import Backup, BackupStatus, OffsiteStatus
from backups.catalogue.paths import disk_usage
from backups.config.selectors import config_current, next_scheduled_at
from backups.runs import selectors as run_selectors
from backups.status import banner
from backups.status.migrations import pending_migrations
from backups.status.script import script_available
from backups.worker.lease import WorkerLease, worker_alive

STARTED = time.monotonic()


def status() -> dict[str, Any]:
    """The status document of `GET /api/backup/status`, with runs and backups as model objects. Call
    `catalogue.sync.ensure_fresh()` first when it must reflect the disk as it is now."""
    document = config_current()
    next_at = next_scheduled_at(document)
    total_bytes, free_bytes = disk_usage(Path(settings.BACKUP_ROOT))
    current = run_selectors.current_run()
    last_success = run_selectors.last_successful_run()
    figures = backup_figures()
    return {
        "running": current is not None,
        "current_run": current,
        "last_backup": catalogue_selectors.newest_backup(),
        "last_successful_run": last_success,
        "next_scheduled_at": next_at,
        "backups": figures["totals"],
        "disk": {"total_bytes": total_bytes, "free_bytes": free_bytes},
        "script": {"available": script_available()},
        "config": {"enabled": document["enabled"], "schedule": document["schedule"]},
        "notices": banner.notices(document, last_success, figures["newest_completed_at"]),
        "offsite": {
            "enabled": bool(document["offsite"]["enabled"]),
            "backups": figures["offsite_counts"],
            "last_copy_at": figures["last_copy_at"],
        },
    }


def backup_figures() -> dict[str, Any]:
    """In one query, what the status document says about the catalogue as a whole: the totals
    (`catalogue.selectors.totals`), the off-site counts and last copy (`offsite.services.status_counts`,
    `last_copy_at`) and when the newest completed local backup was made (the banner's staleness).

    Written in SQL: the same aggregate through the ORM spent a millisecond of Python resolving its
    eight filtered expressions on every request, for a statement that never changes."""
    with connection.cursor() as cursor:
        sql = _FIGURES_SQL.get(connection.vendor)
        if sql is None:
            sql = _FIGURES_SQL[connection.vendor] = _figures_sql(connection.ops.quote_name)
        cursor.execute(sql, _FIGURES_PARAMS)
        count, total, last_copy_at, newest_completed_at, *offsite_counts = cursor.fetchone()
    return {
        "totals": {"count": int(count), "total_size_bytes": int(total or 0)},
        "offsite_counts": {
            value: int(counted or 0)
            for value, counted in zip(OffsiteStatus.values, offsite_counts, strict=True)
        },
        "last_copy_at": _moment(last_copy_at),
        "newest_completed_at": _moment(newest_completed_at),
    }


_FIGURES_SQL: dict[str, str] = {}  # by database vendor (the quoting)
_FIGURES_PARAMS = [OffsiteStatus.OK, BackupStatus.COMPLETED, True, *OffsiteStatus.values]


def _figures_sql(quote: Any) -> str:
    def column(name: str) -> str:
        return quote(Backup._meta.get_field(name).column)

    offsite_status, offsite_at, created_at = (
        column("offsite_status"),
        column("offsite_at"),
        column("created_at"),
    )
    counts = ", ".join(
        f"SUM(CASE WHEN {offsite_status} = %s THEN 1 ELSE 0 END)" for _ in OffsiteStatus.values
    )
    return (
        f"SELECT COUNT(*), SUM({column('size_bytes')}), "
        f"MAX(CASE WHEN {offsite_status} = %s AND {offsite_at} IS NOT NULL THEN {offsite_at} END), "
        f"MAX(CASE WHEN {column('status')} = %s AND {column('local')} = %s THEN {created_at} END), "
        f"{counts} FROM {quote(Backup._meta.db_table)}"
    )


def _moment(value: Any) -> datetime | None:
    """A timestamp as the ORM returns it: aware (UTC) when USE_TZ; SQLite hands back its text."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = parse_datetime(str(value))
    if settings.USE_TZ and value is not None and timezone.is_naive(value):
        value = timezone.make_aware(value, UTC)
    return value


def health() -> tuple[dict[str, Any], int]:
    """The health document and its HTTP status: 503 when the database is unreachable or does not
    accept writes (no run could be recorded); `degraded` when a folder could not be read completely."""
    checks: dict[str, Any] = {"database": _database_check()}
    if checks["database"]["ok"]:
        checks["migrations"] = _migrations_check()
    if settings.REDIS_URL:
        checks["redis"] = _redis_check()
    root = Path(settings.BACKUP_ROOT)
    if root.is_dir() and os.access(root, os.W_OK | os.X_OK):
        total, free = disk_usage(root)
        used = 1 - free / total if total else 0
        checks["backup_root"] = {"ok": used <= 0.95, "used_percent": round(used * 100, 1)}
        if used > 0.95:
            checks["backup_root"]["detail"] = "disk almost full"
    else:
        checks["backup_root"] = {"ok": False, "detail": "backup root missing or not writable"}
    if checks["database"]["ok"]:
        checks["catalogue"] = _catalogue_check()
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
    if not checks["database"]["ok"] or not checks.get("migrations", {"ok": True})["ok"]:
        state, code = "error", 503
    elif all(check["ok"] for check in checks.values()):
        state, code = "ok", 200
    else:
        state, code = "degraded", 200
    from backup_platform import __version__

    return {
        "status": state,
        "checks": checks,
        "version": __version__,
        "uptime_seconds": round(time.monotonic() - STARTED, 1),
    }, code


def _database_check() -> dict[str, Any]:
    """Reachable, and accepting writes: a read-only database (a replica, a full disk, a read-only
    mount) answers SELECT 1 while every run would fail to be recorded."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        return {"ok": False, "detail": "database unreachable"}
    table = connection.ops.quote_name(WorkerLease._meta.db_table)
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            # A write statement that changes nothing: it still needs a writable database (SQLite takes
            # its write lock, PostgreSQL refuses it in a read-only transaction), and it is rolled back.
            cursor.execute(f"UPDATE {table} SET holder = holder WHERE 1 = 0")
            transaction.set_rollback(True)
    except Exception:
        return {"ok": False, "detail": "database does not accept writes"}
    return {"ok": True}


# How long a migrations answer is reused: loading the migration graph costs tens of milliseconds, and
# the answer changes only when someone runs `migrate` or deploys new code.
MIGRATIONS_CHECK_SECONDS = 30.0
_migrations_answer: tuple[float, int] | None = None


def _migrations_check() -> dict[str, Any]:
    """Migrations this code knows and the database lacks: every request touching them would fail."""
    global _migrations_answer
    now = time.monotonic()
    answer = _migrations_answer
    if answer is None or answer[1] or now - answer[0] > MIGRATIONS_CHECK_SECONDS:
        try:
            _migrations_answer = (now, pending_migrations(connection))
        except Exception:
            return {"ok": False, "detail": "migration state could not be read"}
    pending = _migrations_answer[1]
    if not pending:
        return {"ok": True}
    return {
        "ok": False,
        "unapplied": pending,
        "detail": f"{pending} database migration(s) not applied: run `python manage.py migrate`",
    }


_redis_clients: dict[str, Any] = {}


def _redis_check() -> dict[str, Any]:
    """Redis carries the events between processes and the shared cache: reachable within half a second."""
    import redis

    url = settings.REDIS_URL
    try:
        client = _redis_clients.get(url)
        if client is None:
            client = _redis_clients[url] = redis.Redis.from_url(
                url, socket_timeout=0.5, socket_connect_timeout=0.5
            )
        client.ping()
    except Exception as error:
        return {"ok": False, "detail": f"Redis (REDIS_URL) unreachable: {type(error).__name__}"}
    return {"ok": True}


def _catalogue_check() -> dict[str, Any]:
    unreadable = catalogue_selectors.unreadable_count()
    if not unreadable:
        return {"ok": True}
    return {
        "ok": False,
        "unreadable_folders": unreadable,
        "detail": f"{unreadable} backup folder{'s' if unreadable != 1 else ''} could not be read completely",
    }
