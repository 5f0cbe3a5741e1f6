"""GET /metrics: Prometheus text format, values read from the database and the disk, token protection."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from backups.catalogue import paths
from backups.models import Backup, Run, RunStatus, WorkerLease
from tests.conftest import make_backup

pytestmark = pytest.mark.django_db

TOKEN = "metrics-" + "x" * 40

# name{label="value",...} value — label values may hold escaped quotes, backslashes and newlines.
SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'(?:\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*)?\})?'
    r" (?P<value>[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|Inf|NaN))$"
)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[Series, dict[str, str]]:
    """A tiny exposition-format parser: every sample line must match, and every sampled metric must
    have been declared by HELP and TYPE lines before its first sample."""
    assert text.endswith("\n"), "the format requires a final line feed"
    series: Series = {}
    types: dict[str, str] = {}
    helped: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split(" ", 3)[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}, line
            types[name] = kind
            continue
        assert not line.startswith("#"), f"unknown comment line: {line!r}"
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name = match["name"]
        assert name in types and name in helped, f"{name} sampled before its HELP/TYPE"
        labels = frozenset(LABEL.findall(match["labels"] or ""))
        key = (name, labels)
        assert key not in series, f"duplicate series {key}"
        series[key] = float(match["value"].replace("Inf", "inf"))
    return series, types


def value(series: Series, name: str, **labels: str) -> float:
    return series[(name, frozenset(labels.items()))]


def scrape(client: Client | None = None, **headers: str) -> tuple[Series, dict[str, str]]:
    response = (client or Client()).get("/metrics", headers=headers)
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(response.content.decode())


def add_run(status: str, *, started: datetime | None = None, seconds: float = 0, **fields) -> Run:
    ended = started is not None and status not in {RunStatus.QUEUED, RunStatus.RUNNING}
    finished = started + timedelta(seconds=seconds) if ended else None
    return Run.objects.create(
        status=status, triggered_by="test", started_at=started, finished_at=finished, **fields
    )


def test_metrics_of_an_empty_service_are_zero_and_declare_every_metric(backup_root: Path) -> None:
    series, types = scrape()

    assert value(series, "backup_last_success_timestamp_seconds") == 0
    assert value(series, "backup_last_run_duration_seconds") == 0
    assert not [key for key in series if key[0] == "backup_last_run_status"]
    assert value(series, "backup_backups") == 0
    assert value(series, "backup_total_size_bytes") == 0
    for status in RunStatus.values:
        assert value(series, "backup_runs", status=status) == 0
    assert value(series, "backup_worker_up") == 0
    assert value(series, "backup_running") == 0
    assert value(series, "backup_offsite_last_success_timestamp_seconds") == 0
    assert value(series, "backup_offsite_backups", status="none") == 0
    assert set(types) == {
        "backup_last_success_timestamp_seconds",
        "backup_last_run_duration_seconds",
        "backup_last_run_status",
        "backup_backups",
        "backup_total_size_bytes",
        "backup_runs",
        "backup_disk_free_bytes",
        "backup_disk_total_bytes",
        "backup_worker_up",
        "backup_running",
        "backup_verification_state_backups",
        "backup_offsite_backups",
        "backup_offsite_last_success_timestamp_seconds",
        "backup_offsite_removals_owed",
    }
    for state in ("never", "ok", "failed", "running"):
        assert value(series, "backup_verification_state_backups", state=state) == 0
    # Row counts that go down again are gauges, whatever their suffix.
    assert set(types.values()) == {"gauge"}


def test_metrics_match_the_runs_and_backups_in_the_database(backup_root: Path) -> None:
    make_backup(
        backup_root, "backup-20260101_030000", {"database.sql": b"x" * 1000, "configs/app.env": b"A=1\n"}
    )
    make_backup(backup_root, "backup-20260102_030000", {"database.sql": b"y" * 2500})
    day = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
    add_run(RunStatus.SUCCEEDED, started=day, seconds=61.5)
    newest_success = add_run(RunStatus.SUCCEEDED, started=day + timedelta(days=1), seconds=90)
    add_run(RunStatus.FAILED, started=day + timedelta(days=2), seconds=12.25, exit_code=3)
    add_run(RunStatus.CANCELLED, started=day - timedelta(days=5), seconds=5)  # older: not the last run
    add_run(RunStatus.QUEUED)

    series, _ = scrape()

    assert value(series, "backup_last_success_timestamp_seconds") == newest_success.finished_at.timestamp()
    assert value(series, "backup_last_run_duration_seconds") == 12.25
    assert [key for key in series if key[0] == "backup_last_run_status"] == [
        ("backup_last_run_status", frozenset({("status", "failed")}))
    ]
    assert value(series, "backup_last_run_status", status="failed") == 1
    assert value(series, "backup_backups") == 2 == Backup.objects.count()
    assert value(series, "backup_total_size_bytes") == 1000 + 4 + 2500
    expected = {"succeeded": 2, "failed": 1, "cancelled": 1, "queued": 1}
    for status in RunStatus.values:
        assert value(series, "backup_runs", status=status) == expected.get(status, 0), status
    assert value(series, "backup_running") == 1


def test_backup_running_follows_the_active_run(backup_root: Path) -> None:
    run = add_run(RunStatus.RUNNING, started=timezone.now())
    assert value(scrape()[0], "backup_running") == 1

    Run.objects.filter(id=run.id).update(status=RunStatus.SUCCEEDED, finished_at=timezone.now())
    series, _ = scrape()
    assert value(series, "backup_running") == 0
    assert value(series, "backup_last_run_status", status="succeeded") == 1


def test_new_folders_on_disk_show_up_in_the_next_scrape(backup_root: Path) -> None:
    client = Client()
    assert value(scrape(client)[0], "backup_backups") == 0

    make_backup(backup_root, "backup-20260103_030000", {"database.sql": b"z" * 300})
    series, _ = scrape(client)

    assert value(series, "backup_backups") == 1
    assert value(series, "backup_total_size_bytes") == 300


def test_worker_up_reflects_a_fresh_lease(backup_root: Path, settings) -> None:
    WorkerLease.objects.create(id=1, holder="worker-1", renewed_at=timezone.now())
    assert value(scrape()[0], "backup_worker_up") == 1

    stale = timezone.now() - timedelta(seconds=settings.WORKER_STALE_SECONDS + 5)
    WorkerLease.objects.filter(id=1).update(renewed_at=stale)
    assert value(scrape()[0], "backup_worker_up") == 0


def test_disk_metrics_describe_the_backup_root_file_system(backup_root: Path) -> None:
    series, _ = scrape()

    total, _free = paths.disk_usage(backup_root)
    assert value(series, "backup_disk_total_bytes") == total
    assert 0 < value(series, "backup_disk_free_bytes") <= total


def test_token_is_required_when_configured(backup_root: Path, settings) -> None:
    settings.METRICS_TOKEN = TOKEN
    client = Client()

    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN}x"},
    ):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert b"backup_" not in response.content

    series, _ = scrape(client, Authorization=f"Bearer {TOKEN}")
    assert ("backup_backups", frozenset()) in series


def test_a_non_ascii_token_is_refused_not_crashed(backup_root: Path, settings) -> None:
    settings.METRICS_TOKEN = TOKEN
    response = Client().get("/metrics", headers={"Authorization": "Bearer caf\u00e9"})
    assert response.status_code == 401


def test_without_a_token_metrics_are_served_to_this_machine_only(backup_root: Path, settings) -> None:
    settings.METRICS_TOKEN = ""
    scrape()
    # A platform JWT or any other header does not matter then.
    scrape(Authorization="Bearer anything")
    scrape(Client(REMOTE_ADDR="::1"))
    for address in ("203.0.113.9", "10.0.0.2", "2001:db8::1", "", "not-an-ip"):
        response = Client(REMOTE_ADDR=address).get("/metrics")
        assert response.status_code == 403, address
        assert response["Content-Type"] == "application/json"
        assert "this machine only" in response.json()["detail"] and b"backup_" not in response.content


def test_with_a_token_any_address_may_scrape(backup_root: Path, settings) -> None:
    settings.METRICS_TOKEN = TOKEN
    far = Client(REMOTE_ADDR="203.0.113.9")
    assert far.get("/metrics").json()["detail"].startswith("Authentication credentials")
    series, _ = scrape(far, Authorization=f"Bearer {TOKEN}")
    assert ("backup_backups", frozenset()) in series


def test_metrics_are_read_only_and_never_cached(backup_root: Path) -> None:
    client = Client()
    assert client.post("/metrics").status_code == 405
    assert client.head("/metrics").status_code == 200
    assert client.get("/metrics")["Cache-Control"] == "no-store"


def test_openmetrics_is_served_to_a_scraper_that_asks_for_it(backup_root: Path) -> None:
    response = Client().get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    text = response.content.decode()
    assert text.endswith("# EOF\n")
    assert "# TYPE backup_last_success_timestamp_seconds gauge" in text


def test_backups_whose_verification_failed_are_counted(backup_root: Path) -> None:
    make_backup(backup_root, "backup-20260101_030000")
    make_backup(backup_root, "backup-20260102_030000")
    scrape()  # catalogues them
    Backup.objects.filter(id="backup-20260101_030000").update(verification_status="failed")
    series, _ = scrape()
    assert value(series, "backup_verification_state_backups", state="failed") == 1
    assert value(series, "backup_verification_state_backups", state="never") == 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus) is not installed")
def test_promtool_finds_nothing_to_lint_in_a_scrape(backup_root: Path) -> None:
    make_backup(backup_root, "backup-20260101_030000")
    add_run(RunStatus.SUCCEEDED, started=timezone.now(), seconds=3)
    text = Client().get("/metrics").content
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)
    complaints = done.stdout + done.stderr
    assert done.returncode == 0 and not complaints.strip(), complaints
