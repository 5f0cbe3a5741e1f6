"""What one request of the hot reads costs in queries: pinned, so that a change adding a query per
request (or per backup on a page) shows up here."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.conftest import make_backup

pytestmark = pytest.mark.django_db

LIST_QUERIES = 2  # the count and the page; the freshness check is one stat of the root
# config, current run, newest backup, last successful run, totals, worker lease, last finished run,
# off-site counts, last off-site copy, the newest completed backup (the banner's staleness counts backups
# made outside the service): each read once
STATUS_QUERIES = 10


def fill(root: Path, count: int) -> None:
    for index in range(count):
        make_backup(root, f"backup-2026{1 + index // 28:02d}{1 + index % 28:02d}_030000")


def queries(api, path: str) -> list[str]:
    assert api.get(path).status_code == 200  # the first request syncs the new folders
    with CaptureQueriesContext(connection) as captured:
        response = api.get(path)
    assert response.status_code == 200
    return [query["sql"] for query in captured.captured_queries]


@pytest.mark.parametrize("count", [3, 60])
def test_list_costs_the_same_queries_whatever_the_catalogue_holds(api, backup_root, count):
    fill(backup_root, count)
    sql = queries(api, "/api/backup/list?page_size=50")
    assert len(sql) == LIST_QUERIES, sql


@pytest.mark.parametrize("count", [3, 60])
def test_status_costs_the_same_queries_whatever_the_catalogue_holds(api, backup_root, count):
    fill(backup_root, count)
    sql = queries(api, "/api/backup/status")
    assert len(sql) == STATUS_QUERIES, sql


def test_a_list_row_written_directly_equals_the_field_by_field_document(api, backup_root, settings):
    from datetime import UTC, datetime

    from backups.api.serializers.backups import BackupListSerializer
    from backups.catalogue.models import Backup
    from backups.runs.models import Run, RunStatus

    fill(backup_root, 3)
    assert api.get("/api/backup/list").status_code == 200
    run = Run.objects.create(status=RunStatus.SUCCEEDED, triggered_by="t")
    first, second, _ = Backup.objects.order_by("id")
    Backup.objects.filter(id=first.id).update(
        run=run,
        problems=["configs: not readable (permission denied)"],
        verified=True,
        verification_status="passed",
        verification_level="deep",
        verified_at=datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC),
        verification={"problems": ["x"], "databases": []},
        offsite_status="ok",
        offsite_at=datetime(2026, 3, 2, tzinfo=UTC),
        offsite={"error": None},
        pinned=True,
        description="nightly",
    )
    Backup.objects.filter(id=second.id).update(local=False, offsite={"error": "store refused"})
    for zone in ("UTC", "Europe/Berlin"):
        settings.TIME_ZONE = zone
        serializer = BackupListSerializer()
        rows = Backup.objects.order_by("id").values(*BackupListSerializer.ROW_FIELDS)
        for backup, values in zip(Backup.objects.order_by("id"), rows, strict=True):
            assert serializer.to_representation(backup) == serializer.field_by_field(backup)
            assert serializer.to_representation(values) == serializer.field_by_field(backup)
        listed = {row["id"]: row for row in api.get("/api/backup/list").json()["results"]}
        for backup in Backup.objects.all():
            assert listed[backup.id] == serializer.field_by_field(backup)
    settings.TIME_ZONE = "UTC"
    listed = api.get("/api/backup/list").json()["results"]
    assert listed[-1]["created_at"].endswith("Z") and listed[-1]["id"] == first.id


def test_the_status_document_written_directly_equals_the_field_by_field_document(api, backup_root, settings):
    from datetime import UTC, datetime, timedelta

    from backups.api.serializers.status import StatusSerializer
    from backups.catalogue.models import Backup
    from backups.runs.models import Run, RunStatus
    from backups.status import documents

    def check() -> None:
        for zone in ("UTC", "Europe/Berlin"):
            settings.TIME_ZONE = zone
            document = documents.status()
            serializer = StatusSerializer()
            assert serializer.to_representation(document) == serializer.field_by_field(document)
            served, expected = api.get("/api/backup/status").json(), serializer.field_by_field(document)
            served.pop("disk"), expected.pop("disk")  # free space moves with everything else on the machine
            assert served == expected

    check()  # nothing at all: no backup, no run, the worker never seen (a notice)
    fill(backup_root, 3)
    assert api.get("/api/backup/list").status_code == 200
    finished = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    Run.objects.create(
        status=RunStatus.SUCCEEDED,
        triggered_by="t",
        started_at=finished - timedelta(minutes=3),
        finished_at=finished,
    )
    Run.objects.create(status=RunStatus.FAILED, triggered_by="t", finished_at=finished + timedelta(hours=1))
    Run.objects.create(status=RunStatus.RUNNING, triggered_by="schedule", progress_percent=40)
    Backup.objects.filter(id=Backup.objects.order_by("id").first().id).update(
        offsite_status="ok", offsite_at=finished, offsite_bytes=10
    )
    check()  # a run under way, a failed last run (a notice), a successful one, an off-site copy
    document = documents.status()
    assert document["current_run"] and document["last_successful_run"] and document["last_backup"]
    assert document["offsite"]["last_copy_at"] and len(document["notices"]) >= 2
