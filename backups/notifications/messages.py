"""What a notification says: for each event, a title, a plain text, an HTML body and the JSON data
of the webhook. Pure: the caller gives the message id, the clock and the facts.

Written for someone woken at 3 a.m.: the title says what happened and where, the first lines what
to look at; the details (the error, the last 50 lines of output) follow. Every text that came from
outside (error messages, the script's output, backup ids) is escaped in the HTML and has URL
passwords masked everywhere.
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from backups.notifications.masking import mask_text

RUN_STARTED = "run.started"  # only the monitor ping hears it
RUN_SUCCEEDED = "run.succeeded"
RUN_FAILED = "run.failed"
RETENTION_DELETED = "retention.deleted"
VERIFICATION_FAILED = "verification.failed"
BACKUP_STALE = "backup.stale"
OFFSITE_FAILED = "offsite.failed"  # the people's channels only: the webhook's types are a closed list
TEST = "test"
EVENTS = (
    RUN_STARTED,
    RUN_SUCCEEDED,
    RUN_FAILED,
    RETENTION_DELETED,
    VERIFICATION_FAILED,
    BACKUP_STALE,
    OFFSITE_FAILED,
    TEST,
)
# The `type`s a webhook receiver is promised (the contract's list); other events skip the webhook.
WEBHOOK_EVENTS = (RUN_SUCCEEDED, RUN_FAILED, RETENTION_DELETED, VERIFICATION_FAILED, BACKUP_STALE, TEST)

# Apprise's notify types, also a hint for any other channel.
INFO, SUCCESS, WARNING, FAILURE = "info", "success", "warning", "failure"

OUTPUT_TAIL_LINES = 50
LINE_MAX = 400
LIST_MAX = 50

_FAILED_WORDS = {
    "failed": "failed",
    "cancelled": "was cancelled",
    "timed_out": "timed out",
    "interrupted": "was interrupted",
}


@dataclass(frozen=True)
class Message:
    id: str  # the same for every attempt: the receiver's key to drop duplicates (webhook-id)
    event: str
    timestamp: datetime  # when the event happened
    title: str
    text: str
    html: str
    data: dict[str, Any] = field(default_factory=dict)
    severity: str = INFO

    def payload(self) -> dict[str, Any]:
        """The webhook body."""
        return {"type": self.event, "timestamp": iso(self.timestamp), "data": self.data}


@dataclass(frozen=True)
class RunInfo:
    id: str
    status: str  # running, succeeded, failed, cancelled, timed_out, interrupted
    type: str = "scheduled"  # manual, scheduled
    kind: str = "backup"
    backup_id: str = ""
    description: str = ""
    triggered_by: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    error: str = ""
    output: str = ""  # what the run kept of the script's output; its tail goes into a failure message
    size_bytes: int | None = None


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _local(moment: datetime | None, tz: tzinfo) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "-"
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def tail_lines(output: str, count: int = OUTPUT_TAIL_LINES) -> list[str]:
    # Only line feeds end a line: str.splitlines() would also split on form feeds and other controls
    # that a script's output may carry, and count them against the 50.
    lines = output.rstrip("\r\n").replace("\r\n", "\n").split("\n")[-count:] if count > 0 and output else []
    return [mask_text(line if len(line) <= LINE_MAX else line[:LINE_MAX] + " …") for line in lines]


def _title(source: str, text: str) -> str:
    return f"[{source}] {text}" if source else text


def _first_line(text: str, limit: int = 120) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _html(paragraphs: Sequence[str], pre: Sequence[str] = (), items: Sequence[str] = ()) -> str:
    """A small HTML document of escaped paragraphs, an optional list and an optional <pre> block."""
    parts = [f"<p>{html.escape(p)}</p>" for p in paragraphs if p]
    if items:
        parts.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
    if pre:
        parts.append(
            '<pre style="font-size:12px;background:#f4f4f4;padding:8px">'
            + html.escape("\n".join(pre))
            + "</pre>"
        )
    return "<!doctype html><html><body>" + "".join(parts) + "</body></html>"


def _run_data(run: RunInfo) -> dict[str, Any]:
    seconds = (
        (run.finished_at - run.started_at).total_seconds() if run.started_at and run.finished_at else None
    )
    return {
        "run": {
            "id": run.id,
            "kind": run.kind,
            "status": run.status,
            "type": run.type,
            "description": run.description,
            "triggered_by": run.triggered_by,
            "backup_id": run.backup_id or None,
            "started_at": iso(run.started_at),
            "finished_at": iso(run.finished_at),
            "duration_seconds": seconds,
            "exit_code": run.exit_code,
            "error": mask_text(run.error),
            "size_bytes": run.size_bytes,
        }
    }


def run_started(run: RunInfo, *, message_id: str, timestamp: datetime, source: str = "") -> Message:
    title = _title(source, f"Backup started ({run.type})")
    return Message(
        id=message_id,
        event=RUN_STARTED,
        timestamp=timestamp,
        title=title,
        text=f"{title}\nRun: {run.id}\n",
        html=_html([title, f"Run: {run.id}"]),
        data=_run_data(run),
    )


def run_finished(
    run: RunInfo, *, message_id: str, timestamp: datetime, source: str = "", tz: tzinfo = UTC
) -> Message:
    """`run.succeeded` for a succeeded run, `run.failed` for one that failed, was cancelled, timed
    out or was interrupted (`data.run.status` tells which)."""
    data = _run_data(run)
    took = duration(data["run"]["duration_seconds"])
    what = "Backup" if run.kind == "backup" else run.kind.capitalize()
    when = f"Started {_local(run.started_at, tz)}, took {took}."
    if run.status == "succeeded":
        folder = f"{run.backup_id} ({size(run.size_bytes)})" if run.backup_id else "-"
        title = _title(source, f"{what} succeeded: {run.backup_id or run.id}")
        lines = [f"{what} succeeded ({run.type} run).", when, f"Folder: {folder}", f"Run: {run.id}"]
        return Message(
            id=message_id,
            event=RUN_SUCCEEDED,
            timestamp=timestamp,
            title=title,
            text="\n".join(lines) + "\n",
            html=_html(lines),
            data=data,
            severity=SUCCESS,
        )
    verb = _FAILED_WORDS.get(run.status, run.status)
    error = mask_text(run.error.strip())
    exit_code = f", exit code {run.exit_code}" if run.exit_code is not None else ""
    title = _title(source, f"{what} {verb}" + (f": {_first_line(error)}" if error else ""))
    tail = tail_lines(run.output)
    lines = [
        f"{what} {verb} ({run.type} run{exit_code}).",
        when,
        f"Error: {error}" if error else "",
        f"Folder: {run.backup_id}" if run.backup_id else "",
        f"Run: {run.id}",
    ]
    lines = [line for line in lines if line]
    text = "\n".join(lines) + "\n"
    if tail:
        text += f"\nLast {len(tail)} lines of output:\n" + "\n".join(tail) + "\n"
    data["output_tail"] = tail
    return Message(
        id=message_id,
        event=RUN_FAILED,
        timestamp=timestamp,
        title=title,
        text=text,
        html=_html([*lines, f"Last {len(tail)} lines of output:" if tail else ""], pre=tail),
        data=data,
        severity=WARNING if run.status == "cancelled" else FAILURE,
    )


def retention_deleted(
    deleted: Sequence[tuple[str, str]], *, kept: int, message_id: str, timestamp: datetime, source: str = ""
) -> Message:
    """`deleted` is [(backup id, reason)], as retention applied them."""
    count = len(deleted)
    noun = "backup" if count == 1 else "backups"
    title = _title(source, f"Retention deleted {count} {noun}")
    items = [f"{backup_id}: {reason}" for backup_id, reason in deleted[:LIST_MAX]]
    if count > LIST_MAX:
        items.append(f"… and {count - LIST_MAX} more")
    intro = f"Retention deleted {count} {noun}; {kept} kept."
    return Message(
        id=message_id,
        event=RETENTION_DELETED,
        timestamp=timestamp,
        title=title,
        text=intro + "\n\n" + "\n".join(f"- {i}" for i in items) + "\n",
        html=_html([intro], items=items),
        data={"deleted": [{"id": b, "reason": r} for b, r in deleted], "kept": kept},
        severity=INFO,
    )


def verification_failed(
    *,
    backup_id: str,
    level: str,
    problems: Sequence[str],
    message_id: str,
    timestamp: datetime,
    source: str = "",
) -> Message:
    title = _title(source, f"Verification failed: {backup_id}")
    shown = [mask_text(p) for p in problems[:LIST_MAX]]
    if len(problems) > LIST_MAX:
        shown.append(f"… and {len(problems) - LIST_MAX} more")
    intro = f"The {level} verification of {backup_id} found {len(problems)} problem(s)."
    advice = "Do not rely on this backup for a restore; check the next one."
    return Message(
        id=message_id,
        event=VERIFICATION_FAILED,
        timestamp=timestamp,
        title=title,
        text=f"{intro}\n{advice}\n\n" + "\n".join(f"- {p}" for p in shown) + "\n",
        html=_html([intro, advice], items=shown),
        data={"backup_id": backup_id, "level": level, "problems": [mask_text(p) for p in problems]},
        severity=FAILURE,
    )


def backup_stale(
    *,
    last_success_at: datetime | None,
    stale_after_hours: int,
    message_id: str,
    timestamp: datetime,
    source: str = "",
    tz: tzinfo = UTC,
) -> Message:
    if last_success_at is None:
        title = _title(source, "No backup has succeeded yet")
        intro = f"No backup has succeeded in the {stale_after_hours} h this alert waits for."
        hours = None
    else:
        hours = int((timestamp - last_success_at).total_seconds() // 3600)
        title = _title(source, f"No successful backup for {hours} hours")
        intro = f"The last backup that succeeded finished {_local(last_success_at, tz)}, {hours} h ago."
    advice = f"This alert comes after {stale_after_hours} h; check the schedule and the last runs."
    return Message(
        id=message_id,
        event=BACKUP_STALE,
        timestamp=timestamp,
        title=title,
        text=f"{intro}\n{advice}\n",
        html=_html([intro, advice]),
        data={
            "last_success_at": iso(last_success_at),
            "hours_since_success": hours,
            "stale_after_hours": stale_after_hours,
        },
        severity=FAILURE,
    )


def offsite_failed(
    *, backup_id: str, error: str, message_id: str, timestamp: datetime, source: str = ""
) -> Message:
    title = _title(source, f"Off-site copy failed: {backup_id}")
    intro = f"The off-site copy of {backup_id} failed: {_first_line(mask_text(error))}"
    advice = "The local backup is intact; the copy is retried later. Check the store's settings and reach."
    detail = tail_lines(error)
    return Message(
        id=message_id,
        event=OFFSITE_FAILED,
        timestamp=timestamp,
        title=title,
        text=f"{intro}\n{advice}\n\n" + "\n".join(detail) + "\n",
        html=_html([intro, advice], pre=detail),
        data={"backup_id": backup_id, "error": mask_text(error)},
        severity=FAILURE,
    )


def channel_test(*, message_id: str, timestamp: datetime, source: str = "") -> Message:
    title = _title(source, "Test notification")
    text = "If you read this, notifications of the backup service reach you here."
    return Message(
        id=message_id,
        event=TEST,
        timestamp=timestamp,
        title=title,
        text=text + "\n",
        html=_html([text]),
        data={"test": True},
        severity=INFO,
    )
