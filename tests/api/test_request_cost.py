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
# config, current run, newest backup, last successful run, worker lease, last finished run, each read
# once; and one aggregate of the catalogue: totals, off-site counts, last off-site copy, the newest
# completed backup (the banner's staleness counts backups made outside the service)
STATUS_QUERIES = 7


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


def test_the_catalogue_figures_of_one_query_equal_those_read_one_by_one(api, backup_root):
    from datetime import UTC, datetime

    from backups.catalogue import selectors
    from backups.catalogue.models import Backup
    from backups.offsite import services as offsite
    from backups.status import banner
    from backups.status.documents import backup_figures

    def separately() -> dict:
        return {
            "totals": selectors.totals(),
            "offsite_counts": offsite.status_counts(),
            "last_copy_at": offsite.last_copy_at(),
            "newest_completed_at": banner.newest_completed_local_at(),
        }

    assert (
        backup_figures()
        == separately()
        == {
            "totals": {"count": 0, "total_size_bytes": 0},
            "offsite_counts": {"none": 0, "pending": 0, "uploading": 0, "ok": 0, "failed": 0},
            "last_copy_at": None,
            "newest_completed_at": None,
        }
    )
    fill(backup_root, 5)
    assert api.get("/api/backup/list").status_code == 200
    first, second, third, fourth, newest = Backup.objects.order_by("created_at")
    Backup.objects.filter(id=first.id).update(
        offsite_status="ok", offsite_at=datetime(2026, 3, 1, tzinfo=UTC)
    )
    Backup.objects.filter(id=second.id).update(
        offsite_status="ok", offsite_at=datetime(2026, 3, 2, tzinfo=UTC)
    )
    Backup.objects.filter(id=third.id).update(
        offsite_status="failed", offsite_at=datetime(2026, 3, 9, tzinfo=UTC)
    )
    Backup.objects.filter(id=fourth.id).update(offsite_status="pending")
    Backup.objects.filter(id=newest.id).update(local=False)  # the newest completed *local* one is the fourth
    figures = backup_figures()
    assert figures == separately()
    assert figures["last_copy_at"] == datetime(2026, 3, 2, tzinfo=UTC)
    assert figures["newest_completed_at"] == fourth.created_at
    assert figures["offsite_counts"] == {"none": 1, "pending": 1, "uploading": 0, "ok": 2, "failed": 1}
    assert figures["totals"]["count"] == 5 and figures["totals"]["total_size_bytes"] > 0
