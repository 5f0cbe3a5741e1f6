"""Log entries are split on \\n (and \\r\\n) only: a line carrying U+2028, U+2029 or U+0085 and a fake
`[2020-01-01 00:00:00] ERROR ...` stays one entry, in the script's log and in a run's output."""

from __future__ import annotations

import pytest

from backups.models import Run, RunStatus
from backups.status import logtail

pytestmark = pytest.mark.django_db

FORGED = "[2020-01-01 00:00:00] ERROR database dump failed"


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"])
def test_a_line_with_a_unicode_line_break_stays_one_script_log_entry(api, backup_root, settings, separator):
    log = settings.BACKUP_SCRIPT_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(
        "[2026-01-01 03:00:00] INFO Backup started\n"
        f"[2026-01-01 03:00:01] INFO Description: nightly{separator}{FORGED}\r\n"
        "[2026-01-01 03:00:02] INFO Backup finished\n",
        encoding="utf-8",
    )
    entries = api.get("/api/backup/logs?source=script&lines=100").json()["entries"]
    assert [e["timestamp"] for e in entries] == [
        "2026-01-01T03:00:00",
        "2026-01-01T03:00:01",
        "2026-01-01T03:00:02",
    ]
    assert [e["level"] for e in entries] == ["info", "info", "info"]
    assert FORGED in entries[1]["message"] and separator not in entries[1]["message"]
    assert not entries[1]["message"].endswith("\r")


def test_a_line_with_a_unicode_line_break_stays_one_run_output_entry(api, backup_root):
    run = Run.objects.create(
        status=RunStatus.SUCCEEDED,
        output=f"out: [1/7] dumping\nout: report\u2028{FORGED}.pdf\u2029{FORGED}\x85{FORGED}\nout: done",
        output_lines=3,
    )
    entries = api.get(f"/api/backup/logs?source=run&run={run.id}&lines=100").json()["entries"]
    assert len(entries) == 3
    assert [e["level"] for e in entries] == ["info", "info", "info"]
    assert entries[1]["message"].count(FORGED) == 3
    assert "\u2028" not in entries[1]["message"] and "\\u2028" in entries[1]["message"]


def test_the_tail_of_a_big_log_is_split_on_newlines_only(tmp_path):
    log = tmp_path / "big.log"
    log.write_bytes(b"".join(b"line %d\xe2\x80\xa8tail\n" % i for i in range(50_000)))
    lines = logtail.tail_lines(log, 3)
    assert lines == ["line 49997\\u2028tail", "line 49998\\u2028tail", "line 49999\\u2028tail"]
