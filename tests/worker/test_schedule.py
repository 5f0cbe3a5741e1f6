"""The schedule with an injected clock: edits never fire a slot that was due before them, no slot fires
twice, DST nights in Europe/Berlin fire what cron fires, a restart catches one missed slot up (never
on a fresh install, never after a backup succeeded since), and failed scheduled runs are retried."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from backups.audit import Actor
from backups.config.models import BackupConfig
from backups.config.services import config_update
from backups.models import Checkpoint, Run, RunStatus, RunType
from backups.worker import schedule

pytestmark = pytest.mark.django_db

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture(autouse=True)
def berlin(settings):
    settings.TIME_ZONE = "Europe/Berlin"


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


def configure(now: datetime, **changes) -> None:
    """Save the config as an admin would, at `now`."""
    config_update(document=changes, actor=Actor("admin"), partial=True)
    BackupConfig.objects.filter(id=1).update(updated_at=now)


def scheduled() -> list[Run]:
    return list(Run.objects.filter(type=RunType.SCHEDULED).order_by("created_at", "id"))


def end_active_runs(at: datetime, status: str = RunStatus.SUCCEEDED) -> None:
    Run.objects.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).update(
        status=status, started_at=at, finished_at=at
    )


def ticks(start: datetime, end: datetime, every: timedelta) -> list[bool]:
    """Tick from start to end (UTC steps: wall-clock steps would skip or repeat an hour at DST)."""
    fired = []
    moment = start.astimezone(UTC)
    while moment <= end.astimezone(UTC):
        fired.append(schedule.tick(now=moment))
        end_active_runs(moment)
        moment += every
    return fired


def test_a_fresh_install_catches_nothing_up():
    configure(local(2026, 6, 1, 9, 0), schedule="0 3 * * *")
    assert schedule.tick(now=local(2026, 6, 1, 10, 0)) is False
    assert schedule.tick(now=local(2026, 6, 1, 10, 0, 5)) is False
    assert scheduled() == []


def test_each_slot_fires_once_however_often_the_schedule_ticks():
    configure(local(2026, 6, 1, 9, 0), schedule="* * * * *")
    fired = ticks(local(2026, 6, 1, 10, 0, 1), local(2026, 6, 1, 10, 3, 1), timedelta(seconds=2))
    assert sum(fired) == 3  # 10:01, 10:02, 10:03
    assert len(scheduled()) == 3
    assert not Run.objects.filter(status=RunStatus.SKIPPED).exists()


def test_saving_the_schedule_in_its_own_minute_does_not_start_a_backup():
    configure(local(2026, 6, 1, 9, 0), schedule="0 3 * * *")
    schedule.tick(now=local(2026, 6, 1, 19, 34, 12))
    configure(local(2026, 6, 1, 19, 34, 15), schedule="34 19 * * *")
    assert schedule.tick(now=local(2026, 6, 1, 19, 34, 17)) is False
    assert not any(ticks(local(2026, 6, 1, 19, 34, 22), local(2026, 6, 1, 19, 36), timedelta(seconds=5)))
    assert scheduled() == []
    # The next day the slot fires, once.
    assert schedule.tick(now=local(2026, 6, 2, 19, 33, 58)) is False
    assert schedule.tick(now=local(2026, 6, 2, 19, 34, 3)) is True
    assert schedule.tick(now=local(2026, 6, 2, 19, 34, 8)) is False
    assert len(scheduled()) == 1


def test_a_change_just_after_a_slot_does_not_fire_that_slot():
    configure(local(2026, 6, 1, 9, 0), schedule="0 3 * * *")
    schedule.tick(now=local(2026, 6, 1, 19, 33, 58))
    configure(local(2026, 6, 1, 19, 34, 1), schedule="34 19 * * *")
    assert schedule.tick(now=local(2026, 6, 1, 19, 34, 3)) is False
    assert scheduled() == []


def test_enabling_the_schedule_never_fires_a_slot_due_while_it_was_off():
    configure(local(2026, 6, 1, 9, 0), schedule="0 3 * * *", enabled=False)
    assert not any(ticks(local(2026, 6, 2, 2, 59, 50), local(2026, 6, 2, 3, 0, 25), timedelta(seconds=5)))
    configure(local(2026, 6, 2, 3, 0, 30), enabled=True)
    assert schedule.tick(now=local(2026, 6, 2, 3, 0, 33)) is False
    assert scheduled() == []
    assert schedule.tick(now=local(2026, 6, 3, 3, 0, 2)) is True


def test_an_unrelated_save_does_not_swallow_a_due_slot():
    configure(local(2026, 6, 1, 9, 0), schedule="0 3 * * *")
    schedule.tick(now=local(2026, 6, 2, 2, 59, 58))
    configure(local(2026, 6, 2, 3, 0, 1), retention={"daily": 3})
    assert schedule.tick(now=local(2026, 6, 2, 3, 0, 3)) is True


def test_a_disabled_schedule_never_fires():
    configure(local(2026, 6, 1, 9, 0), schedule="* * * * *", enabled=False)
    assert not any(ticks(local(2026, 6, 1, 10, 0), local(2026, 6, 1, 10, 10), timedelta(seconds=30)))
    assert scheduled() == []


def test_a_slot_during_another_run_is_recorded_as_skipped():
    configure(local(2026, 6, 1, 9, 0), schedule="0 3 * * *")
    schedule.tick(now=local(2026, 6, 2, 2, 59, 58))
    Run.objects.create(triggered_by="admin", status=RunStatus.RUNNING)
    assert schedule.tick(now=local(2026, 6, 2, 3, 0, 2)) is True
    skipped = Run.objects.get(status=RunStatus.SKIPPED)
    assert skipped.type == RunType.SCHEDULED and "another backup" in skipped.error
    assert schedule.tick(now=local(2026, 6, 2, 3, 0, 7)) is False


def test_slots_missed_while_the_service_was_down_run_once_after_a_restart():
    configure(local(2026, 6, 1, 9, 0), schedule="0 * * * *")  # hourly: six slots missed below
    schedule.tick(now=local(2026, 6, 2, 2, 59, 55))
    # Down from 02:59:55 to 09:20:10; the worker that starts knows only what the database holds.
    assert schedule.tick(now=local(2026, 6, 2, 9, 20, 10)) is True
    runs = scheduled()
    assert len(runs) == 1 and "catching up the run of 2026-06-02 09:00" in runs[0].description
    end_active_runs(local(2026, 6, 2, 9, 30))
    assert not any(ticks(local(2026, 6, 2, 9, 20, 15), local(2026, 6, 2, 9, 59, 55), timedelta(minutes=1)))
    assert schedule.tick(now=local(2026, 6, 2, 10, 0, 2)) is True  # the next slot as usual
    assert len(scheduled()) == 2


def test_a_missed_slot_is_not_caught_up_when_a_backup_succeeded_since():
    configure(local(2026, 6, 1, 9, 0), schedule="0 3 * * *")
    schedule.tick(now=local(2026, 6, 2, 2, 0))
    Run.objects.create(
        triggered_by="cli",
        status=RunStatus.SUCCEEDED,
        started_at=local(2026, 6, 2, 5, 0),
        finished_at=local(2026, 6, 2, 5, 10),
    )
    assert schedule.tick(now=local(2026, 6, 2, 9, 0)) is False
    assert scheduled() == []
    assert schedule.tick(now=local(2026, 6, 2, 9, 0, 5)) is False  # and the slot is used up


def test_the_checkpoint_moves_on_every_tick():
    configure(local(2026, 6, 1, 9, 0), schedule="0 3 * * *")
    for second in (0, 5, 10):
        schedule.tick(now=local(2026, 6, 1, 12, 0, second))
        assert Checkpoint.objects.get(name="schedule").at == local(2026, 6, 1, 12, 0, second)


def test_the_night_dst_begins_a_daily_slot_in_the_skipped_hour_fires_once():
    # 2026-03-29: 02:00 CET becomes 03:00 CEST; cron runs a 02:30 job at 03:00.
    configure(local(2026, 3, 28, 9, 0), schedule="30 2 * * *")
    fired = ticks(local(2026, 3, 29, 0, 0), local(2026, 3, 29, 5, 0), timedelta(minutes=1))
    assert sum(fired) == 1
    (run,) = scheduled()
    assert Checkpoint.objects.get(name="schedule").data["last_slot"] == "2026-03-29T01:00:00+00:00"
    assert run.type == RunType.SCHEDULED


def test_the_night_dst_ends_a_daily_slot_in_the_repeated_hour_fires_once():
    # 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice, the job runs once.
    configure(local(2026, 10, 24, 9, 0), schedule="30 2 * * *")
    fired = ticks(local(2026, 10, 25, 0, 0), local(2026, 10, 25, 5, 0), timedelta(minutes=1))
    assert sum(fired) == 1
    assert Checkpoint.objects.get(name="schedule").data["last_slot"] == "2026-10-25T00:30:00+00:00"


def test_the_night_dst_ends_a_half_hourly_schedule_fires_every_real_half_hour():
    configure(local(2026, 10, 24, 9, 0), schedule="*/30 * * * *")
    start = datetime(2026, 10, 24, 22, 0, 30, tzinfo=UTC)  # 00:00:30 CEST
    fired = ticks(start, start + timedelta(hours=5), timedelta(minutes=1))
    assert sum(fired) == 10  # five real hours, the repeated hour included


def test_a_failed_scheduled_run_is_retried_count_times_after_the_delay():
    configure(local(2026, 6, 1, 9, 0), schedule="0 3 * * *", scheduleRetries={"count": 2, "delayMinutes": 10})
    schedule.tick(now=local(2026, 6, 2, 2, 59, 58))
    assert schedule.tick(now=local(2026, 6, 2, 3, 0, 2)) is True
    (first,) = scheduled()
    Run.objects.filter(id=first.id).update(
        status=RunStatus.FAILED, created_at=local(2026, 6, 2, 3, 0), finished_at=local(2026, 6, 2, 3, 5)
    )
    assert schedule.tick(now=local(2026, 6, 2, 3, 14, 59)) is False
    assert schedule.tick(now=local(2026, 6, 2, 3, 15, 1)) is True
    retry = scheduled()[-1]
    assert retry.retry_of_id == first.id and retry.description.startswith("retry 1 of 2")
    assert schedule.tick(now=local(2026, 6, 2, 3, 15, 6)) is False  # queued: not twice
    end_active_runs(local(2026, 6, 2, 3, 20), RunStatus.FAILED)
    assert schedule.tick(now=local(2026, 6, 2, 3, 30, 1)) is True
    assert scheduled()[-1].description.startswith("retry 2 of 2")
    end_active_runs(local(2026, 6, 2, 3, 35), RunStatus.INTERRUPTED)
    assert not any(ticks(local(2026, 6, 2, 3, 45), local(2026, 6, 2, 5, 0), timedelta(minutes=5)))
    assert len(scheduled()) == 3


def test_no_retry_after_a_backup_succeeded_or_for_a_cancelled_run():
    configure(local(2026, 6, 1, 9, 0), schedule="0 3 * * *", scheduleRetries={"count": 3, "delayMinutes": 10})
    failed = Run.objects.create(
        type=RunType.SCHEDULED,
        triggered_by="schedule",
        status=RunStatus.FAILED,
        finished_at=local(2026, 6, 2, 3, 5),
    )
    Run.objects.filter(id=failed.id).update(created_at=local(2026, 6, 2, 3, 0))
    schedule.tick(now=local(2026, 6, 2, 3, 6))
    Run.objects.create(triggered_by="admin", status=RunStatus.SUCCEEDED, finished_at=local(2026, 6, 2, 3, 10))
    assert schedule.tick(now=local(2026, 6, 2, 3, 20)) is False

    Run.objects.all().delete()
    cancelled = Run.objects.create(
        type=RunType.SCHEDULED,
        triggered_by="schedule",
        status=RunStatus.CANCELLED,
        finished_at=local(2026, 6, 2, 3, 5),
    )
    assert cancelled.status == RunStatus.CANCELLED
    assert schedule.tick(now=local(2026, 6, 2, 3, 30)) is False
    assert scheduled() == [cancelled]
