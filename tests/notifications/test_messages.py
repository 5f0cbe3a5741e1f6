"""What each event says: short titles for 3 a.m., escaped HTML, masked secrets, the webhook data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from backups.notifications.messages import (
    LIST_MAX,
    RunInfo,
    backup_stale,
    channel_test,
    duration,
    retention_deleted,
    run_finished,
    run_started,
    size,
    verification_failed,
)

NOW = datetime(2026, 11, 30, 3, 4, 12, tzinfo=UTC)
STARTED = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


def run(status: str, **fields) -> RunInfo:
    return RunInfo(id="r-1", status=status, started_at=STARTED, finished_at=NOW, **fields)


@pytest.mark.parametrize(
    ("status", "title", "severity"),
    [
        ("failed", "[db1] Backup failed: disk full", "failure"),
        ("cancelled", "[db1] Backup was cancelled: disk full", "warning"),
        ("timed_out", "[db1] Backup timed out: disk full", "failure"),
        ("interrupted", "[db1] Backup was interrupted: disk full", "failure"),
    ],
)
def test_every_unsuccessful_end_is_a_run_failed_event_that_says_which(status, title, severity):
    message = run_finished(
        run(status, error="disk full\nmore detail"), message_id="m", timestamp=NOW, source="db1"
    )
    assert (message.event, message.title, message.severity) == ("run.failed", title, severity)
    assert message.data["run"]["status"] == status
    assert message.payload()["type"] == "run.failed"


def test_a_failure_message_leads_with_what_happened_and_ends_with_the_output_tail():
    output = "\n".join(f"step {n}" for n in range(1, 200)) + "\n" + "x" * 5000
    message = run_finished(
        run("failed", exit_code=3, error="tar: /srv: Cannot open", backup_id="backup-1", output=output),
        message_id="m",
        timestamp=NOW,
        source="db1",
    )
    lines = message.text.splitlines()
    assert lines[0] == "Backup failed (scheduled run, exit code 3)."
    assert lines[1] == "Started 2026-11-30 03:00:00 UTC, took 4 min 12 s."
    assert lines[2] == "Error: tar: /srv: Cannot open"
    assert "Folder: backup-1" in lines and "Run: r-1" in lines
    tail = message.data["output_tail"]
    assert len(tail) == 50 and tail[0] == "step 151" and tail[-1] == "x" * 400 + " …"
    assert message.text.endswith("x" * 400 + " …\n")


def test_times_are_shown_in_the_servers_zone():
    message = run_finished(run("failed"), message_id="m", timestamp=NOW, tz=ZoneInfo("Europe/Berlin"))
    assert "Started 2026-11-30 04:00:00 CET" in message.text
    assert message.data["run"]["started_at"] == "2026-11-30T03:00:00Z"


def test_html_escapes_what_came_from_outside_and_passwords_are_masked_everywhere():
    message = run_finished(
        run("failed", error="<script>alert(1)</script> postgres://u:hunter2@db/x", output="<b>&</b>"),
        message_id="m",
        timestamp=NOW,
    )
    assert "<script>" not in message.html and "&lt;script&gt;" in message.html
    assert "&lt;b&gt;&amp;&lt;/b&gt;" in message.html
    for rendering in (message.title, message.text, message.html, str(message.data)):
        assert "hunter2" not in rendering


def test_a_success_says_which_folder_and_how_big():
    message = run_finished(
        run("succeeded", backup_id="backup-20261130_030000", size_bytes=3 * 1024**3 // 2),
        message_id="m",
        timestamp=NOW,
        source="db1",
    )
    assert message.event == "run.succeeded" and message.severity == "success"
    assert message.title == "[db1] Backup succeeded: backup-20261130_030000"
    assert "Folder: backup-20261130_030000 (1.5 GiB)" in message.text
    assert "output_tail" not in message.data


def test_a_run_start_is_its_own_event():
    message = run_started(run("running"), message_id="m", timestamp=STARTED, source="db1")
    assert (message.event, message.title) == ("run.started", "[db1] Backup started (scheduled)")


def test_retention_lists_each_deleted_backup_with_its_reason():
    deleted = [(f"backup-{n:03d}", f"daily 2026-11-{n % 28 + 1:02d} keeps a newer backup") for n in range(60)]
    message = retention_deleted(deleted, kept=12, message_id="m", timestamp=NOW, source="db1")
    assert message.title == "[db1] Retention deleted 60 backups"
    assert message.text.startswith("Retention deleted 60 backups; 12 kept.\n")
    assert "- backup-000: daily 2026-11-01 keeps a newer backup" in message.text
    assert f"… and {60 - LIST_MAX} more" in message.text
    assert len(message.data["deleted"]) == 60 and message.data["deleted"][1] == {
        "id": "backup-001",
        "reason": "daily 2026-11-02 keeps a newer backup",
    }
    one = retention_deleted(deleted[:1], kept=1, message_id="m", timestamp=NOW)
    assert one.title == "Retention deleted 1 backup"


def test_verification_failure_names_the_backup_and_its_problems():
    message = verification_failed(
        backup_id="backup-1",
        level="deep",
        problems=["database.sql.gz: truncated", "MANIFEST: 2 files differ"],
        message_id="m",
        timestamp=NOW,
    )
    assert message.event == "verification.failed" and message.title == "Verification failed: backup-1"
    assert "- database.sql.gz: truncated" in message.text
    assert message.data == {
        "backup_id": "backup-1",
        "level": "deep",
        "problems": ["database.sql.gz: truncated", "MANIFEST: 2 files differ"],
    }


def test_a_stale_alert_says_how_long_since_the_last_success():
    last = NOW - timedelta(hours=27, minutes=10)
    message = backup_stale(
        last_success_at=last, stale_after_hours=26, message_id="m", timestamp=NOW, source="db1"
    )
    assert message.event == "backup.stale" and message.title == "[db1] No successful backup for 27 hours"
    assert message.data["hours_since_success"] == 27 and message.data["stale_after_hours"] == 26
    never = backup_stale(last_success_at=None, stale_after_hours=26, message_id="m", timestamp=NOW)
    assert never.title == "No backup has succeeded yet" and never.data["last_success_at"] is None


def test_the_test_message_is_a_test_event():
    message = channel_test(message_id="m", timestamp=NOW, source="db1")
    assert message.payload() == {"type": "test", "timestamp": "2026-11-30T03:04:12Z", "data": {"test": True}}


def test_durations_and_sizes_read_at_a_glance():
    assert [duration(s) for s in (None, 0.4, 59, 61, 3600, 3725)] == [
        "-",
        "0 s",
        "59 s",
        "1 min 01 s",
        "1 h 00 min",
        "1 h 02 min",
    ]
    assert [size(b) for b in (None, 512, 2048, 5 * 1024**4)] == ["-", "512 B", "2.0 KiB", "5.0 TiB"]
