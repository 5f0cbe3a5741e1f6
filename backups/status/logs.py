"""The log entries of `GET /api/backup/logs`: the script's log, the service's, the audit trail, a run's
output. Newest last."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

from backups.audit import AuditEvent
from backups.runs.models import Run
from backups.status import logtail

SOURCES = ("script", "service", "audit", "run")


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
    if run is None:
        raise ValueError("source=run needs a run")
    text_lines = logtail.split_lines(run.output)[-lines:] if run.output else []
    return [
        {
            "timestamp": None,
            "level": "error" if line.startswith("err: ") else "info",
            "message": line[5:] if line[:5] in {"out: ", "err: "} else line,
            "stream": "stderr" if line.startswith("err: ") else "stdout",
        }
        for line in text_lines
    ]
