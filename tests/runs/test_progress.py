"""Tests for backups.progress: plain strings in, Progress out; no Django, no processes, no filesystem."""

from __future__ import annotations

import dataclasses
import random
import time

import pytest

from backups.runs.progress import (
    DEFAULT_ARTIFACTS,
    Marker,
    Progress,
    ProgressTracker,
    clean_line,
    find_backup_folder,
    is_error_line,
    parse_marker,
)

GREEN = "\x1b[0;32m"
BLUE = "\x1b[0;34m"
YELLOW = "\x1b[1;33m"
RED = "\x1b[0;31m"
BOLD_GREEN = "\x1b[1;32m"
RESET = "\x1b[0m"

# What production-backup.sh prints on a good night, colours, emoji and all.
PRODUCTION_OUTPUT = [
    f"{BLUE}╔══════════════════════════════════════════════╗{RESET}",
    f"{BLUE}║  🚀 Beauty Platform — production backup       ║{RESET}",
    f"{BLUE}╚══════════════════════════════════════════════╝{RESET}",
    "[2025-08-21 03:00:01] 📁 Backup directory: /root/BACKUPS/production/backup-20250821_030001",
    "",
    f"{GREEN}[1/7]{RESET} 🔍 Checking prerequisites...",
    "  ✅ pg_dump found: /usr/bin/pg_dump (PostgreSQL) 16.3",
    "  ✅ Disk space OK: 120G available (35% used)",
    f"{GREEN}[2/7]{RESET} 📦 Archiving application code...",
    "tar: Removing leading `/' from member names",
    f"  {GREEN}✅ Done{RESET} (beauty-platform.tar.gz, 48M)",
    f"{GREEN}[3/7]{RESET} 🗄️  Dumping PostgreSQL databases...",
    "  → beauty_platform_new ... ✅ Done (45M)",
    "  → beauty_audit ... ✅ Done (2.1M)",
    f"{GREEN}[4/7]{RESET} 🖼️  Archiving images and uploads...",
    f"  {YELLOW}⚠️  /var/www/uploads/tmp skipped (not found){RESET}",
    "  ✅ Done (1.1G)",
    f"{GREEN}[5/7]{RESET} 🌐 Backing up nginx configs...",
    "  ✅ Done",
    f"{GREEN}[6/7]{RESET} ⚙️  Copying configs (.env, ecosystem.config.js, docker-compose.yml)...",
    "  ✅ Done",
    f"{GREEN}[7/7]{RESET} 🖥️  Collecting system info...",
    "  ✅ Done",
    "",
    f"{BOLD_GREEN}✅ Backup completed successfully!{RESET}",
    "📊 Total size: 1.2G",
    "🕐 Finished at 2025-08-21 03:04:12",
]


def feed_all(tracker: ProgressTracker, lines: list[str]) -> list[Progress]:
    updates = []
    for line in lines:
        update = tracker.feed_line(line)
        if update is not None:
            updates.append(update)
    return updates


def distinct_percents(updates: list[Progress]) -> list[int]:
    percents: list[int] = []
    for update in updates:
        if not percents or percents[-1] != update.percent:
            percents.append(update.percent)
    return percents


def assert_monotonic(updates: list[Progress]) -> None:
    percents = [u.percent for u in updates]
    assert percents == sorted(percents), percents


# ------------------------------------------------------------------------------------------ clean_line


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("plain text", "plain text"),
        ("  padded   and    spaced  ", "padded and spaced"),
        (f"{GREEN}[3/7]{RESET} 🗄️  Dumping PostgreSQL databases...", "[3/7] Dumping PostgreSQL databases..."),
        ("\x1b[1;31;48;5;236mred on grey\x1b[0m", "red on grey"),
        ("\x1b[38;2;255;0;0mtruecolour\x1b[m", "truecolour"),
        ("\x1b[2K\x1b[1Gcursor moved\x1b[?25h", "cursor moved"),
        ("\x1b]0;window title\x07visible", "visible"),
        ("\x1b]8;;https://example.com\x1b\\link\x1b]8;;\x1b\\ text", "link text"),
        ("\x1b(Bcharset\x1b7saved\x1b8", "charsetsaved"),
        ("\x9b31m8-bit CSI\x9b0m", "8-bit CSI"),
        ("old text\rnew text", "new text"),
        ("10%\r20%\r30%", "30%"),
        ("line with CRLF\r\n", "line with CRLF"),
        ("line with newline\n", "line with newline"),
        ("50%\r\x1b[K", "50%"),
        ("⠋ Working\r⠙ Working\r⠹ Still working", "Still working"),
        ("✅ Done", "Done"),
        ("❌ Failed", "Failed"),
        ("👨‍👩‍👧 family, 👍🏽 thumbs", "family, thumbs"),
        ("🇺🇦 flag and 3️⃣ keycap", "flag and 3 keycap"),
        ("⚠️ warning ℹ️ info ⏳ wait", "warning info wait"),
        ("tab\tseparated\tvalues", "tab separated values"),
        ("bell\x07 and backspace\x08", "bell and backspace"),
        ("\ufeffBOM and zero\u200bwidth", "BOM and zerowidth"),
        ("Резервное копирование 数据库 — ok", "Резервное копирование 数据库 — ok"),
        ("arrows → stay, © too", "arrows → stay, © too"),
        ("", ""),
        ("   \t  ", ""),
        ("✅", ""),
        ("\x1b[0m", ""),
    ],
)
def test_clean_line(raw: str, expected: str) -> None:
    assert clean_line(raw) == expected


@pytest.mark.parametrize("raw", PRODUCTION_OUTPUT)
def test_clean_line_is_idempotent_and_leaves_no_escapes(raw: str) -> None:
    cleaned = clean_line(raw)
    assert clean_line(cleaned) == cleaned
    assert "\x1b" not in cleaned
    assert "  " not in cleaned
    assert cleaned == cleaned.strip()


# ---------------------------------------------------------------------------------------- parse_marker


def approx_marker(percent: float | None, stage: str | None, step: tuple[int, int] | None) -> Marker:
    return Marker(pytest.approx(percent) if percent is not None else None, stage, step)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("line", "percent", "stage", "step"),
    [
        ("[3/7] Dumping databases...", 200 / 7, "Dumping databases", (3, 7)),
        ("[1/7] Checking prerequisites", 0.0, "Checking prerequisites", (1, 7)),
        ("[7/7] Collecting system info", 600 / 7, "Collecting system info", (7, 7)),
        ("[ 2 / 4 ] Spaced out:", 25.0, "Spaced out", (2, 4)),
        ("[3/7]", 200 / 7, "Step 3/7", (3, 7)),
        ("(3/7) Archiving uploads", 200 / 7, "Archiving uploads", (3, 7)),
        ("Step 3/7: Dumping", 200 / 7, "Dumping", (3, 7)),
        ("STEP 3 of 7 - Archiving files", 200 / 7, "Archiving files", (3, 7)),
        ("step 2 OF 4 — nginx", 25.0, "nginx", (2, 4)),
        ("==> Step 4/8: Uploading to S3…", 37.5, "Uploading to S3", (4, 8)),
        ("Running step 2/4", 25.0, "Step 2/4", (2, 4)),
        ("Step #5/10: Verifying", 40.0, "Verifying", (5, 10)),
        ("PROGRESS: 42", 42.0, None, None),
        ("progress=42.5", 42.5, None, None),
        ("Progress 42%", 42.0, None, None),
        ("Progress: 42% - Compressing uploads", 42.0, "Compressing uploads", None),
        ("42%", 42.0, None, None),
        ("42 %", 42.0, None, None),
        ("Uploading 42%", 42.0, "Uploading", None),
        ("Uploading (42.5%)", 42.5, "Uploading", None),
        ("[=========>          ] 45%", 45.0, None, None),
        ("0%", 0.0, None, None),
        ("100% done", 100.0, None, None),
        ("1,234,567  45%  1.23MB/s  0:00:12", 45.0, None, None),
        ("[3/7] Dumping databases 50%", 2.5 / 7 * 100, "Dumping databases", (3, 7)),
        ("[3/7] PROGRESS: 60", 60.0, "Step 3/7", (3, 7)),
        ("[0/5] Preparing", 0.0, "Preparing", (0, 5)),
        ("[3/7] Создание дампа базы...", 200 / 7, "Создание дампа базы", (3, 7)),
    ],
)
def test_parse_marker_styles(
    line: str, percent: float, stage: str | None, step: tuple[int, int] | None
) -> None:
    assert parse_marker(line) == approx_marker(percent, stage, step)


@pytest.mark.parametrize(
    "line",
    [
        "[2026-01-01 03:00:00] [3/7] Dumping",
        "[2026-01-01T03:00:00Z] [3/7] Dumping",
        "2026-01-01T03:00:00Z [3/7] Dumping",
        "2026-01-01 03:00:00.123456+02:00 [3/7] Dumping",
        "2026-01-01 03:00:00,123 - INFO - [3/7] Dumping",
        "03:00:01 [3/7] Dumping",
        "[03:00:01] [3/7] Dumping",
        "Jan  1 03:00:01 [3/7] Dumping",
        "INFO [3/7] Dumping",
        "[INFO] [3/7] Dumping",
        "info: [3/7] Dumping",
        "[2026-01-01 03:00:00] [INFO] [3/7] Dumping",
        "2026-01-01T03:00:00Z WARN (3/7) Dumping",
        "==> [3/7] Dumping",
        "*** [3/7] Dumping ***",
        "[2026-01-01 03:00:00] Step 3/7: Dumping",
        "2026-01-01 03:00:00 INFO step 3 of 7: Dumping",
    ],
)
def test_parse_marker_after_timestamp_and_level_prefixes(line: str) -> None:
    assert parse_marker(line) == approx_marker(200 / 7, "Dumping", (3, 7))


@pytest.mark.parametrize(
    "line",
    [
        "",
        "Starting backup",
        "2026/01/02 backup started",
        "[2026/01/02] backup started",
        "[2026/01/02 03:00:00] backup started",
        "Backup of 2026/01/02",
        "Copying /var/lib/3/7 to staging",
        "/var/lib/postgresql/16/main",
        "Add 1/2 cup of flour",
        "Connecting to 192.168.1.10:5432",
        "pg_dump (PostgreSQL) 16.3",
        "Deploying v1.2.3",
        "Release 2.0/3.1 notes",
        "see item [3/7] in the list",
        "file (3/7).txt written",
        "[8/7] too far",
        "[0/0] empty",
        "[3/0] division by zero",
        "[3/1001] too many steps",
        "Step 9/7: beyond the end",
        "Step 3/7/9 nested path",
        "stepping 3/7",
        "150%",
        "Progress: 150%",
        "progress: 3 files copied",
        "progress 3/7",
        "1234%",
        "v1%",
        "adding: var/www/index.html (deflated 63%)",
        "beauty_audit.sql: 81.4% -- replaced with beauty_audit.sql.gz",
        "Disk usage: 42%",
        "Disk space OK: 120G available (35% used)",
        "/dev/sda1 50G 20G 30G 40% /",
        "CPU 12% MEM 40%",
        "3 packets transmitted, 3 received, 0% packet loss",
        "Compression ratio 3.2 (68%)",
        "in-progress 40",
    ],
)
def test_parse_marker_rejects_non_markers(line: str) -> None:
    assert parse_marker(line) is None


def test_parse_marker_takes_only_the_first_percentage() -> None:
    assert parse_marker("42% of 180% target") == approx_marker(42.0, None, None)
    # The first percentage is not a progress figure, so nothing later is either.
    assert parse_marker("150% then 42%") is None


def test_parse_marker_stage_is_trimmed_and_capped() -> None:
    marker = parse_marker("[2/4] " + "Very long stage name " * 10 + "...")
    assert marker is not None and marker.stage is not None
    assert len(marker.stage) <= 80
    assert marker.stage.startswith("Very long stage name")
    assert not marker.stage.endswith((" ", "."))
    assert parse_marker("[2/4] Dumping databases:::") == approx_marker(25.0, "Dumping databases", (2, 4))
    assert parse_marker("[2/4] Dumping databases…") == approx_marker(25.0, "Dumping databases", (2, 4))


def test_parse_marker_accepts_a_raw_line_too() -> None:
    assert parse_marker(f"{GREEN}[3/7]{RESET} 🗄️  Dumping...") == approx_marker(200 / 7, "Dumping", (3, 7))


# ------------------------------------------------------------------------------------- tracker: basics


def test_tracker_starts_at_zero() -> None:
    tracker = ProgressTracker()
    assert tracker.current == Progress(0, "starting", "")
    assert tracker.saw_markers is False


def test_production_script_output_gives_step_percents() -> None:
    tracker = ProgressTracker(expected_duration=250.0)
    updates = feed_all(tracker, PRODUCTION_OUTPUT)

    assert distinct_percents(updates) == [0, 14, 28, 42, 57, 71, 85]
    assert_monotonic(updates)
    assert tracker.saw_markers is True
    stages = list(dict.fromkeys(u.stage for u in updates))
    assert stages == [
        "starting",
        "Checking prerequisites",
        "Archiving application code",
        "Dumping PostgreSQL databases",
        "Archiving images and uploads",
        "Backing up nginx configs",
        "Copying configs (.env, ecosystem.config.js, docker-compose.yml)",
        "Collecting system info",
    ]
    # "35% used" in the disk check must not have been read as progress.
    assert all(u.percent == 0 for u in updates if u.stage == "Checking prerequisites")
    assert tracker.current.percent == 85
    assert tracker.current.message == "Finished at 2025-08-21 03:04:12"
    # The script says it is done, but only the exit status may make it 100.
    assert max(u.percent for u in updates) <= 99

    final = tracker.finish(success=True)
    assert final == Progress(100, "completed", "Finished at 2025-08-21 03:04:12")
    assert tracker.current == final


def test_production_script_output_names_the_backup_folder() -> None:
    folders = {find_backup_folder(line) for line in PRODUCTION_OUTPUT} - {None}
    assert folders == {"backup-20250821_030001"}


def test_feed_line_updates_the_message_and_reports_changes_only() -> None:
    tracker = ProgressTracker()
    first = tracker.feed_line(f"{GREEN}hello{RESET}  world ✅")
    assert first == Progress(0, "starting", "hello world")
    assert tracker.feed_line("hello world") is None
    assert tracker.feed_line("") is None
    assert tracker.feed_line("   ") is None
    assert tracker.feed_line("✅") is None  # nothing left once cleaned: the message stays
    assert tracker.current.message == "hello world"
    assert tracker.feed_line("next") == Progress(0, "starting", "next")


def test_feed_line_truncates_the_message() -> None:
    tracker = ProgressTracker()
    update = tracker.feed_line("x" * 2000)
    assert update is not None
    assert update.message == "x" * 500


def test_percent_never_goes_down() -> None:
    tracker = ProgressTracker()
    lines = [
        "[5/7] Archiving",
        "[2/7] Dumping again",
        "PROGRESS: 10",
        "30%",
        "Step 1/7: restart",
        "[6/7] nginx",
    ]
    updates = feed_all(tracker, lines)
    assert [u.percent for u in updates] == [57, 57, 57, 57, 57, 71]
    # The stage follows the script even when the percent cannot.
    assert updates[1].stage == "Dumping again"


def test_mid_run_100_percent_is_capped_at_99() -> None:
    tracker = ProgressTracker()
    assert tracker.feed_line("100% done") == Progress(99, "starting", "100% done")
    tracker = ProgressTracker()
    assert tracker.feed_line("PROGRESS: 100") == Progress(99, "starting", "PROGRESS: 100")
    tracker = ProgressTracker()
    tracker.feed_line("[7/7] last step")
    update = tracker.feed_line("[7/7] last step 100%")
    assert update is not None and update.percent == 99
    tracker = ProgressTracker()
    update = tracker.feed_line("99.99%")
    assert update is not None and update.percent == 99  # floors: never rounds up to 100


def test_bare_percent_line_keeps_the_stage() -> None:
    tracker = ProgressTracker()
    tracker.feed_line("Uploading archive 10%")
    assert tracker.current.stage == "Uploading archive"
    update = tracker.feed_line("25%")
    assert update == Progress(25, "Uploading archive", "25%")


def test_bare_percent_inside_a_step_is_progress_within_that_step() -> None:
    tracker = ProgressTracker()
    tracker.feed_line("[3/7] Dumping databases...")
    assert tracker.current.percent == 28
    assert tracker.feed_line("  50%") == Progress(35, "Dumping databases", "50%")
    assert tracker.feed_line("100%") == Progress(42, "Dumping databases", "100%")
    # An explicit PROGRESS figure speaks for the whole run.
    assert tracker.feed_line("PROGRESS: 60") == Progress(60, "Dumping databases", "PROGRESS: 60")


def test_finish_failure_keeps_the_percent() -> None:
    tracker = ProgressTracker()
    feed_all(tracker, PRODUCTION_OUTPUT[:14])
    assert tracker.current.percent == 28
    final = tracker.finish(success=False, message=f"{RED}❌ pg_dump: error: connection refused{RESET}")
    assert final == Progress(28, "failed", "pg_dump: error: connection refused")


def test_finish_without_message_keeps_the_last_line() -> None:
    tracker = ProgressTracker()
    tracker.feed_line("[2/4] Archiving")
    assert tracker.finish(success=False) == Progress(25, "failed", "[2/4] Archiving")


def test_finish_is_final() -> None:
    tracker = ProgressTracker(expected_duration=100.0)
    tracker.feed_line("[2/4] Archiving")
    done = tracker.finish(success=True, message="Backup completed")
    assert done == Progress(100, "completed", "Backup completed")
    assert tracker.finish(success=False, message="too late") == done
    assert tracker.feed_line("[3/4] more output") is None
    assert tracker.feed_artifacts(DEFAULT_ARTIFACTS) is None
    assert tracker.feed_elapsed(50.0) is None
    assert tracker.current == done
    assert tracker.eta_seconds(10.0) == 0.0


def test_failed_finish_cannot_become_success() -> None:
    tracker = ProgressTracker()
    failed = tracker.finish(success=False, message="No space left on device")
    assert failed == Progress(0, "failed", "No space left on device")
    assert tracker.finish(success=True) == failed
    assert tracker.eta_seconds(10.0) is None


def test_progress_objects_are_ordinary_frozen_dataclasses() -> None:
    tracker = ProgressTracker()
    update = tracker.feed_line("[2/4] Archiving")
    assert update == Progress(25, "Archiving", "[2/4] Archiving")
    assert hash(update) == hash(Progress(25, "Archiving", "[2/4] Archiving"))
    assert dataclasses.asdict(tracker.current) == {
        "percent": 25,
        "stage": "Archiving",
        "message": "[2/4] Archiving",
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        tracker.current.percent = 50  # type: ignore[misc]
    assert isinstance(update.percent, int)


# --------------------------------------------------------------------------- tracker: other script styles


def test_step_word_script() -> None:
    lines = [
        "==> Step 1 of 4: Preparing",
        "    preparing /srv/app",
        "==> Step 2 of 4: Dumping database",
        "==> Step 3 of 4: Compressing",
        "==> Step 4 of 4: Uploading",
        "All done.",
    ]
    tracker = ProgressTracker()
    updates = feed_all(tracker, lines)
    assert distinct_percents(updates) == [0, 25, 50, 75]
    assert updates[-1] == Progress(75, "Uploading", "All done.")


def test_progress_keyword_script() -> None:
    lines = [f"PROGRESS: {p}" for p in (0, 5, 12.5, 40, 40, 73, 100)]
    tracker = ProgressTracker()
    updates = feed_all(tracker, lines)
    assert [u.percent for u in updates] == [0, 5, 12, 40, 73, 99]
    assert tracker.finish(success=True).percent == 100


def test_timestamped_logger_script() -> None:
    lines = [
        "2026-01-01T03:00:00Z INFO Starting backup run",
        "2026-01-01T03:00:01Z INFO [1/5] Locking",
        "2026-01-01T03:00:02Z INFO [2/5] Dumping",
        "2026-01-01T03:00:09Z DEBUG wrote 2026/01/01 segment 3/7",
        "2026-01-01T03:00:10Z INFO [3/5] Archiving",
        "2026-01-01T03:00:20Z WARN [4/5] Syncing: slow link",
        "2026-01-01T03:00:30Z INFO [5/5] Cleaning up",
    ]
    tracker = ProgressTracker()
    updates = feed_all(tracker, lines)
    assert distinct_percents(updates) == [0, 20, 40, 60, 80]
    assert updates[-1].stage == "Cleaning up"
    assert [u.stage for u in updates if u.percent == 60] == ["Syncing: slow link"]


def test_pv_style_carriage_return_progress() -> None:
    tracker = ProgressTracker()
    update = tracker.feed_line(" 10% [=>    ]\r 55% [=====>  ]\r 80% [=======> ]")
    assert update is not None
    assert update.percent == 80
    assert update.message == "80% [=======> ]"


def test_lines_without_markers_leave_percent_alone() -> None:
    lines = [
        "Backup of 2026/01/02 started",
        "Connecting to 192.168.1.10",
        "Using pg_dump v16.3.1",
        "Add 1/2 cup of sugar",
        "Copying /var/lib/3/7/data",
        "adding: uploads/a.jpg (deflated 12%)",
        "Disk usage: 93% used",
    ]
    tracker = ProgressTracker()
    updates = feed_all(tracker, lines)
    assert {u.percent for u in updates} == {0}
    assert tracker.saw_markers is False


# ------------------------------------------------------------------------------------- tracker: artifacts


def test_artifacts_only_progress() -> None:
    tracker = ProgressTracker()
    assert tracker.feed_line("Starting backup, please wait") is not None
    assert tracker.feed_artifacts([]) is None
    assert tracker.feed_artifacts(["unrelated.log", ".tmp"]) is None

    first = tracker.feed_artifacts(["beauty_platform_new.sql"])
    assert first == Progress(13, "writing beauty_platform_new.sql", "Starting backup, please wait")
    assert tracker.feed_artifacts(["beauty_platform_new.sql"]) is None

    # Two new ones between listings: the stage names the later one in the script's order.
    second = tracker.feed_artifacts(["beauty-platform.tar.gz", "beauty_platform_new.sql", "beauty_audit.sql"])
    assert second == Progress(40, "writing beauty-platform.tar.gz", "Starting backup, please wait")

    third = tracker.feed_artifacts(["configs/", "images-uploads.tar.gz"])
    assert third is not None and third.percent == 67 and third.stage == "writing configs"

    last = tracker.feed_artifacts(list(DEFAULT_ARTIFACTS))
    assert last == Progress(95, "writing system-info", "Starting backup, please wait")
    assert tracker.saw_markers is False
    assert tracker.finish(success=True).percent == 100


def test_artifacts_progress_never_goes_down_when_entries_vanish() -> None:
    tracker = ProgressTracker()
    tracker.feed_artifacts(["beauty_platform_new.sql", "beauty_audit.sql"])
    assert tracker.current.percent == 27
    assert tracker.feed_artifacts([]) is None
    assert tracker.feed_artifacts(["beauty_audit.sql"]) is None
    assert tracker.current.percent == 27


def test_artifacts_with_compression_suffix_count() -> None:
    tracker = ProgressTracker()
    update = tracker.feed_artifacts(["beauty_audit.sql.gz"])
    assert update == Progress(13, "writing beauty_audit.sql", "")


def test_custom_expected_artifacts() -> None:
    tracker = ProgressTracker(expected_artifacts=["db.dump", "files.tar", "files.tar", "etc/"])
    assert tracker.feed_artifacts(["db.dump"]) == Progress(31, "writing db.dump", "")
    assert tracker.feed_artifacts(["db.dump", "files.tar", "etc"]) == Progress(95, "writing etc", "")


def test_no_expected_artifacts_means_no_artifact_progress() -> None:
    tracker = ProgressTracker(expected_artifacts=())
    assert tracker.feed_artifacts(DEFAULT_ARTIFACTS) is None


def test_artifacts_ignored_once_markers_are_seen() -> None:
    tracker = ProgressTracker()
    tracker.feed_artifacts(["beauty_platform_new.sql"])
    tracker.feed_line("[1/7] Starting")
    assert tracker.saw_markers is True
    assert tracker.feed_artifacts(DEFAULT_ARTIFACTS) is None
    assert tracker.current.percent == 13  # what was shown before the first marker is kept


# --------------------------------------------------------------------------------------- tracker: time


def test_elapsed_based_progress() -> None:
    tracker = ProgressTracker(expected_duration=200.0)
    assert tracker.feed_elapsed(0.0) is None
    assert tracker.feed_elapsed(20.0) == Progress(10, "starting", "")
    assert tracker.feed_elapsed(10.0) is None
    assert tracker.feed_elapsed(20.5) is None
    assert tracker.feed_elapsed(150.0) == Progress(75, "starting", "")
    assert tracker.feed_elapsed(1000.0) == Progress(95, "starting", "")
    assert tracker.feed_elapsed(5000.0) is None


def test_elapsed_and_artifacts_combine_to_the_larger() -> None:
    tracker = ProgressTracker(expected_duration=100.0)
    tracker.feed_artifacts(["beauty_platform_new.sql", "beauty_audit.sql", "beauty-platform.tar.gz"])
    assert tracker.current.percent == 40
    assert tracker.feed_elapsed(30.0) is None  # time says 30, the artifacts already say more
    update = tracker.feed_elapsed(50.0)
    assert update == Progress(50, "writing beauty-platform.tar.gz", "")
    assert tracker.feed_artifacts(["images-uploads.tar.gz"]) == Progress(
        54, "writing images-uploads.tar.gz", ""
    )


def test_elapsed_needs_an_expected_duration_and_no_markers() -> None:
    assert ProgressTracker().feed_elapsed(100.0) is None
    assert ProgressTracker(expected_duration=0.0).feed_elapsed(100.0) is None
    assert ProgressTracker(expected_duration=float("nan")).feed_elapsed(100.0) is None
    tracker = ProgressTracker(expected_duration=100.0)
    assert tracker.feed_elapsed(float("inf")) is None
    assert tracker.feed_elapsed(-5.0) is None
    tracker.feed_line("Step 1/4: go")
    assert tracker.feed_elapsed(90.0) is None
    assert tracker.current.percent == 0


def test_eta_from_expected_duration() -> None:
    tracker = ProgressTracker(expected_duration=300.0)
    assert tracker.eta_seconds(0.0) == pytest.approx(300.0)
    assert tracker.eta_seconds(120.0) == pytest.approx(180.0)


def test_eta_from_rate() -> None:
    tracker = ProgressTracker()
    assert tracker.eta_seconds(10.0) is None
    tracker.feed_line("PROGRESS: 4")
    assert tracker.eta_seconds(10.0) is None  # under 5 % the rate is noise
    tracker.feed_line("PROGRESS: 25")
    assert tracker.eta_seconds(60.0) == pytest.approx(180.0)
    assert tracker.eta_seconds(float("nan")) is None


def test_eta_after_overrunning_the_expected_duration_falls_back_to_the_rate() -> None:
    tracker = ProgressTracker(expected_duration=100.0)
    tracker.feed_line("[3/4] Archiving")
    assert tracker.current.percent == 50
    assert tracker.eta_seconds(150.0) == pytest.approx(150.0)
    assert ProgressTracker(expected_duration=100.0).eta_seconds(150.0) is None


# --------------------------------------------------------------------------------- find_backup_folder


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/root/BACKUPS/production/backup-20250821_030001/", "backup-20250821_030001"),
        ("/root/BACKUPS/production/backup-20250821_030001", "backup-20250821_030001"),
        ("Backup directory: backup-20250821_030001", "backup-20250821_030001"),
        ("📁 Backup directory: /root/BACKUPS/production/backup-20250821_030001", "backup-20250821_030001"),
        (f"Created {GREEN}backup-20250821_030001{RESET}.", "backup-20250821_030001"),
        ("BACKUP_DIR='/srv/backups/backup-20251231_235959'", "backup-20251231_235959"),
        ("wrote backup-20250821_030001/beauty_audit.sql", "backup-20250821_030001"),
        ("../backup-20250101_000000", "backup-20250101_000000"),
        ("backup-20250821_0300 then backup-20250821_030001", "backup-20250821_030001"),
    ],
)
def test_find_backup_folder_positive(line: str, expected: str) -> None:
    found = find_backup_folder(line)
    assert found == expected
    assert "/" not in found and ".." not in found


@pytest.mark.parametrize(
    "line",
    [
        "",
        "no folder here",
        "backup-2025",
        "backup-20250101",
        "backup-20250101_0000",
        "../backup-20250101_000000x",
        "backup-20250101_0000001",
        "mybackup-20250101_000000",
        "old-backup-20250101_000000",
        "backup-20250101_000000.tar.gz",
        "backup-20251301_000000",
        "backup-20250132_000000",
        "backup-20250101_250000",
        "backup-20250101_006100",
        "Backup-20250101_000000",
        "backup_20250101_000000",
        "backup-2025-01-01_000000",
    ],
)
def test_find_backup_folder_negative(line: str) -> None:
    assert find_backup_folder(line) is None


# -------------------------------------------------------------------------------------- is_error_line


@pytest.mark.parametrize(
    "line",
    [
        "ERROR: pg_dump failed",
        "pg_dump: error: connection to server failed",
        "[2026-01-01 03:00:00] [ERROR] something broke",
        f"{RED}ERROR{RESET} disk problem",
        "FATAL: password authentication failed for user",
        "Backup FAILED",
        "CRITICAL: out of memory",
        "Traceback (most recent call last):",
        "tar: beauty-platform.tar.gz: Wrote only 4096 of 10240 bytes: No space left on device",
        "cp: cannot open '/etc/nginx/ssl/key.pem': Permission denied",
        "production-backup.sh: line 42: pg_dumpall: command not found",
        "❌ Database dump",
        f"{RED}❌ Database dump{RESET}",
        "  ✗ nginx configs missing",
        "[2026-01-01 03:00:00] ❌ upload",
        "Error.",
    ],
)
def test_is_error_line_positive(line: str) -> None:
    assert is_error_line(line) is True


def test_is_error_line_works_on_cleaned_lines() -> None:
    assert is_error_line(clean_line(f"{RED}ERROR{RESET} disk problem")) is True
    assert is_error_line(clean_line("❌ pg_dump: Permission denied")) is True


@pytest.mark.parametrize(
    "line",
    [
        "",
        "✅ Done",
        "[3/7] Dumping databases...",
        "Rotating /var/log/nginx/error.log",
        "option --on-error=stop",
        "a non-fatal warning",
        "PLAY RECAP: ok=5 changed=0 failed=0",
        "0 errors, 0 warnings",
        "terrorist mirror",
        "Backup completed successfully",
        "Disk space OK",
        "⚠️ slow link",
    ],
)
def test_is_error_line_negative(line: str) -> None:
    assert is_error_line(line) is False


# ---------------------------------------------------------------------------------- hostile input, speed

PATHOLOGICAL_LINES = [
    "[" * 65536,
    "(" * 65536,
    "[1/" * 21845,
    "1" * 65536,
    "1" * 65535 + "%",
    "1." * 32768 + "%",
    "9/" * 32768,
    "[9/9" * 16384,
    "step " * 13107,
    "Step 1/" * 9362,
    "progress " * 7281,
    "progress: 1" * 5957,
    "% " * 32768,
    "1% " * 21845,
    "backup-2025" * 5957,
    "\x1b[" * 32768,
    "\x1b]" * 32768,
    "\x1b[1;" * 16384,
    "\r" * 65536,
    "🗄️" * 32768,
    "✅ " * 32768,
    " " * 65536,
    "error " * 10922,
    "[2026-01-01 03:00:00] " * 2978,
]


@pytest.mark.parametrize("line", PATHOLOGICAL_LINES, ids=lambda line: repr(line[:12]))
def test_pathological_long_lines_are_fast(line: str) -> None:
    start = time.perf_counter()
    cleaned = clean_line(line)
    parse_marker(cleaned)
    find_backup_folder(line)
    is_error_line(line)
    tracker = ProgressTracker()
    tracker.feed_line(line)
    assert time.perf_counter() - start < 1.0
    assert len(tracker.current.message) <= 500
    assert 0 <= tracker.current.percent <= 99


def test_random_marker_soup_keeps_the_invariants() -> None:
    pieces = list("[]()/0123456789%.:- \r\t") + [
        "step ",
        "Step ",
        "PROGRESS",
        "progress=",
        " of ",
        "\x1b[",
        "\x1b]",
        "m",
        "🗄️",
        "✅",
        "backup-",
        "20250821_030001",
        "INFO ",
        "[2026-01-01 03:00:00] ",
        "ERROR",
        "used",
    ]
    rng = random.Random(20250821)
    tracker = ProgressTracker(expected_duration=60.0)
    last = 0
    for i in range(3000):
        line = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        marker = parse_marker(clean_line(line))
        if marker is not None:
            assert marker.percent is None or 0 <= marker.percent <= 100
            assert marker.step is None or 0 <= marker.step[0] <= marker.step[1] <= 1000
            assert marker.stage is None or 0 < len(marker.stage) <= 80
        folder = find_backup_folder(line)
        assert folder is None or ("/" not in folder and ".." not in folder)
        tracker.feed_line(line)
        tracker.feed_elapsed(i / 100)
        assert last <= tracker.current.percent <= 99
        last = tracker.current.percent


def test_speed_sanity() -> None:
    # Not a benchmark: a generous bound that only catches a regression to per-line regex scanning.
    templates = [
        "beauty-platform/apps/web/src/components/Button{}.tsx",
        'pg_dump: dumping contents of table "public.appointments_{}"',
        "Copied {} files to staging area",
        "[2025-08-21 03:00:01] Archiving uploads batch {}",
        "  inflating: node_modules/lodash/fp/chunk{}.js",
        "INFO compressing segment {} of the archive",
    ]
    lines = [templates[i % len(templates)].format(i) for i in range(200_000)]
    tracker = ProgressTracker()
    feed = tracker.feed_line
    start = time.perf_counter()
    for line in lines:
        feed(line)
    assert time.perf_counter() - start < 5.0
    assert tracker.current.percent == 0
    assert tracker.saw_markers is False
