"""The retention policy over generated histories: restic's keep rules, the floor and the reasons."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from backups.retention.policy import (
    BackupInfo,
    Candidate,
    Decision,
    Policy,
    decide,
    select_prunable,
    to_delete,
    validate_retention,
)

BERLIN = ZoneInfo("Europe/Berlin")
# Only the keep rules: no floor beyond what every policy has (newest, pinned, running).
RULES_ONLY = {"keep_within_hours": 0, "keep_manual": False}


def rules(**counts: int) -> Policy:
    return Policy(**{"daily": 0, "weekly": 0, "monthly": 0, "yearly": 0, "last": 0, **RULES_ONLY, **counts})


def at(text: str, tz=UTC) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=tz)


def backup(moment: datetime, **fields) -> BackupInfo:
    return BackupInfo(
        id="backup-" + moment.astimezone(UTC).strftime("%Y%m%d_%H%M%S"), created_at=moment, **fields
    )


def daily_history(first: date, last: date, times=("03:00",), skip=(), tz=UTC) -> list[BackupInfo]:
    items = []
    day = first
    while day <= last:
        if day not in skip:
            for clock in times:
                items.append(backup(at(f"{day.isoformat()}T{clock}", tz)))
        day += timedelta(days=1)
    return items


def kept(decisions: list[Decision]) -> dict[str, tuple[str, ...]]:
    return {d.created_at.isoformat(): d.reasons for d in decisions if d.keep}


def by_id(decisions: list[Decision]) -> dict[str, Decision]:
    return {d.id: d for d in decisions}


LATER = at("2030-01-01T00:00")


def test_daily_keeps_the_newest_backup_of_each_of_the_last_days_that_have_backups():
    history = daily_history(date(2026, 11, 1), date(2026, 11, 10), times=("01:00", "03:00", "23:30"))
    decisions = decide(history, rules(daily=3), now=LATER, tz=UTC)
    assert kept(decisions) == {
        "2026-11-10T23:30:00+00:00": ("newest", "daily 2026-11-10"),
        "2026-11-09T23:30:00+00:00": ("daily 2026-11-09",),
        "2026-11-08T23:30:00+00:00": ("daily 2026-11-08",),
    }
    assert len(to_delete(decisions)) == 30 - 3


def test_days_without_backups_use_up_no_count():
    history = [backup(at(f"2026-11-{day:02d}T03:00")) for day in (1, 2, 5, 10, 20)]
    decisions = decide(history, rules(daily=3), now=LATER, tz=UTC)
    assert list(kept(decisions)) == [
        "2026-11-20T03:00:00+00:00",
        "2026-11-10T03:00:00+00:00",
        "2026-11-05T03:00:00+00:00",
    ]


def test_a_deleted_backup_says_which_newer_backup_holds_its_slot_or_that_it_is_beyond_the_counts():
    history = daily_history(date(2026, 11, 1), date(2026, 11, 5), times=("01:00", "03:00"))
    decisions = by_id(decide(history, rules(daily=2, weekly=1), now=LATER, tz=UTC))
    assert decisions["backup-20261105_010000"].reasons == ("daily 2026-11-05 keeps a newer backup",)
    # 2026-11-02 is the Monday of the week of the newest backup: weekly 2026-W45 holds it.
    assert decisions["backup-20261102_030000"].reasons == ("weekly 2026-W45 keeps a newer backup",)
    assert decisions["backup-20261101_030000"].reasons == ("beyond daily 2, weekly 1",)
    assert not decisions["backup-20261101_030000"].keep


def test_iso_week_53_spans_the_new_year():
    history = daily_history(date(2026, 12, 20), date(2027, 1, 10))
    decisions = decide(history, rules(weekly=3), now=LATER, tz=UTC)
    assert kept(decisions) == {
        "2027-01-10T03:00:00+00:00": ("newest", "weekly 2027-W01"),
        "2027-01-03T03:00:00+00:00": ("weekly 2026-W53",),
        "2026-12-27T03:00:00+00:00": ("weekly 2026-W52",),
    }


def test_monthly_and_yearly_across_year_boundaries():
    history = [backup(at(f"{y}-{m:02d}-15T03:00")) for y in (2025, 2026, 2027) for m in range(1, 13)]
    history = [b for b in history if b.created_at < at("2027-03-01T00:00")]
    decisions = decide(history, rules(monthly=2, yearly=2), now=LATER, tz=UTC)
    assert kept(decisions) == {
        "2027-02-15T03:00:00+00:00": ("newest", "monthly 2027-02", "yearly 2027"),
        "2027-01-15T03:00:00+00:00": ("monthly 2027-01",),
        "2026-12-15T03:00:00+00:00": ("yearly 2026",),
    }


def test_yearly_keeps_the_oldest_backup_while_its_count_is_not_used_up():
    # restic >= 0.17: a count left over when the walk reaches the oldest backup keeps it too.
    history = daily_history(date(2026, 1, 1), date(2026, 12, 31))
    decisions = decide(history, rules(yearly=5), now=LATER, tz=UTC)
    assert kept(decisions) == {
        "2026-12-31T03:00:00+00:00": ("newest", "yearly 2026"),
        "2026-01-01T03:00:00+00:00": ("oldest yearly 2026",),
    }


def test_last_keeps_the_newest_backups_and_names_their_rank():
    history = daily_history(date(2026, 11, 1), date(2026, 11, 2), times=("01:00", "02:00", "03:00"))
    decisions = decide(history, rules(last=3), now=LATER, tz=UTC)
    assert kept(decisions) == {
        "2026-11-02T03:00:00+00:00": ("newest", "last 1"),
        "2026-11-02T02:00:00+00:00": ("last 2",),
        "2026-11-02T01:00:00+00:00": ("last 3",),
    }


def test_days_are_local_days_across_the_autumn_dst_change_in_berlin():
    # 2026-10-25: clocks go from 03:00 CEST back to 02:00 CET, so 02:30 happens twice.
    first = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=0)
    second = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=1)
    assert second.astimezone(UTC) - first.astimezone(UTC) == timedelta(hours=1)
    # 00:30 local on the 26th is still the 25th in UTC: it must count for the 26th.
    just_after_midnight = datetime(2026, 10, 26, 0, 30, tzinfo=BERLIN)
    assert just_after_midnight.astimezone(UTC).day == 25
    history = [
        BackupInfo("once-0230", first),
        BackupInfo("again-0230", second),
        BackupInfo("after-midnight", just_after_midnight),
        BackupInfo("day-before", datetime(2026, 10, 24, 3, 0, tzinfo=BERLIN)),
    ]
    decisions = by_id(decide(history, rules(daily=3), now=LATER, tz=BERLIN))
    assert decisions["after-midnight"].reasons == ("newest", "daily 2026-10-26")
    assert decisions["again-0230"].reasons == ("daily 2026-10-25",)
    assert decisions["once-0230"].reasons == ("daily 2026-10-25 keeps a newer backup",)
    assert decisions["day-before"].reasons == ("daily 2026-10-24",)
    # The same history read in UTC puts the after-midnight backup on the 25th.
    in_utc = by_id(decide(history, rules(daily=3), now=LATER, tz=UTC))
    assert in_utc["after-midnight"].reasons == ("newest", "daily 2026-10-25")


def test_spring_dst_change_in_berlin_keeps_one_backup_per_local_day():
    # 2026-03-29 has 23 hours; a backup every 6 hours local still gives one daily per local date.
    history = [
        backup(datetime(2026, 3, day, hour, 0, tzinfo=BERLIN))
        for day in (28, 29, 30)
        for hour in (1, 7, 13, 19)
    ]
    decisions = decide(history, rules(daily=3), now=LATER, tz=BERLIN)
    assert sorted(r for reasons in kept(decisions).values() for r in reasons if r != "newest") == [
        "daily 2026-03-28",
        "daily 2026-03-29",
        "daily 2026-03-30",
    ]
    assert all(d.created_at.astimezone(BERLIN).hour == 19 for d in decisions if d.keep)


def test_a_manual_backup_made_before_the_next_one_of_the_day_stays():
    # The original service deleted the "before release" backup 63 s after it was made.
    release = backup(at("2026-11-30T10:00:00"), type="manual")
    history = [
        *daily_history(date(2026, 11, 25), date(2026, 11, 29)),
        release,
        backup(at("2026-11-30T10:01:03")),
    ]
    policy = Policy(daily=2, weekly=0, monthly=0, keep_within_hours=0)
    decisions = by_id(decide(history, policy, now=at("2026-12-03T00:00"), tz=UTC))
    assert decisions[release.id].keep and decisions[release.id].reasons == ("manual",)
    without = by_id(decide(history, Policy(daily=2, weekly=0, monthly=0, **RULES_ONLY), now=LATER, tz=UTC))
    assert without[release.id].reasons == ("daily 2026-11-30 keeps a newer backup",)


def test_manual_and_external_backups_fill_buckets_like_scheduled_ones():
    history = [
        backup(at("2026-11-01T03:00")),
        backup(at("2026-11-02T03:00"), type="external"),
        backup(at("2026-11-02T12:00"), type="manual"),
        backup(at("2026-11-03T03:00"), type="external"),
    ]
    decisions = by_id(decide(history, rules(daily=2), now=LATER, tz=UTC))
    assert decisions["backup-20261103_030000"].reasons == ("newest", "daily 2026-11-03")
    assert decisions["backup-20261102_120000"].reasons == ("daily 2026-11-02",)
    assert not decisions["backup-20261102_030000"].keep
    assert not decisions["backup-20261101_030000"].keep


def test_a_failed_backup_never_takes_the_slot_of_a_good_one_and_is_kept_for_a_week():
    good = backup(at("2026-11-30T03:00"))
    failed = backup(at("2026-11-30T04:00"), status="failed")
    decisions = by_id(decide([good, failed], rules(daily=1), now=at("2026-12-02T00:00"), tz=UTC))
    assert decisions[good.id].reasons == ("newest", "daily 2026-11-30")
    assert decisions[failed.id].keep and decisions[failed.id].reasons == ("failed, younger than 7 days",)


@pytest.mark.parametrize(
    ("prune", "pinned", "keep", "reasons"),
    [
        (False, False, True, ("incomplete, pruneIncomplete is off",)),
        (True, False, False, ("incomplete, older than 7 days",)),
        (True, True, True, ("pinned",)),
    ],
)
def test_old_incomplete_folders_go_only_when_prune_incomplete_is_on(prune, pinned, keep, reasons):
    old = backup(at("2026-11-01T03:00"), status="incomplete", pinned=pinned)
    history = [old, backup(at("2026-11-20T03:00"))]
    policy = Policy(daily=7, prune_incomplete=prune, **RULES_ONLY)
    decision = by_id(decide(history, policy, now=at("2026-11-20T04:00"), tz=UTC))[old.id]
    assert (decision.keep, decision.reasons) == (keep, reasons)


def test_the_newest_completed_backup_survives_a_week_of_failures():
    history = [backup(at("2026-11-01T03:00")), backup(at("2026-10-31T03:00"))]
    history += [backup(at(f"2026-11-{d:02d}T03:00"), status="failed") for d in range(2, 30)]
    policy = Policy(daily=1, weekly=0, monthly=0, prune_incomplete=True)
    decisions = by_id(decide(history, policy, now=at("2026-11-30T00:00"), tz=UTC))
    assert decisions["backup-20261101_030000"].reasons == ("newest", "daily 2026-11-01")
    assert not decisions["backup-20261031_030000"].keep
    assert decisions["backup-20261123_030000"].reasons == ("failed, younger than 7 days",)
    assert decisions["backup-20261122_030000"].reasons == ("failed, older than 7 days",)


def test_everything_younger_than_keep_within_hours_stays():
    history = daily_history(
        date(2026, 11, 28), date(2026, 11, 30), times=("00:00", "06:00", "12:00", "18:00")
    )
    policy = Policy(daily=1, weekly=0, monthly=0, keep_within_hours=24, keep_manual=False)
    decisions = decide(history, policy, now=at("2026-11-30T18:00"), tz=UTC)
    # Exactly 24 hours old (2026-11-29T18:00) is no longer within 24 hours.
    assert kept(decisions) == {
        "2026-11-30T18:00:00+00:00": ("newest", "within 24 h", "daily 2026-11-30"),
        "2026-11-30T12:00:00+00:00": ("within 24 h",),
        "2026-11-30T06:00:00+00:00": ("within 24 h",),
        "2026-11-30T00:00:00+00:00": ("within 24 h",),
    }


def test_the_running_runs_folder_and_running_folders_stay():
    history = [
        backup(at("2026-11-01T03:00")),
        BackupInfo("being-written", at("2026-10-01T03:00"), status="incomplete"),
        BackupInfo("marked-running", at("2026-10-02T03:00"), status="running"),
    ]
    policy = Policy(daily=1, prune_incomplete=True, **RULES_ONLY)
    decisions = by_id(decide(history, policy, now=LATER, tz=UTC, running_backup_id="being-written"))
    assert decisions["being-written"].reasons == ("running",)
    assert decisions["marked-running"].reasons == ("running",)


def test_all_counts_zero_keep_everything_even_old_failures():
    history = [
        *daily_history(date(2026, 1, 1), date(2026, 1, 20)),
        backup(at("2025-01-01T00:00"), status="failed"),
    ]
    policy = Policy(daily=0, weekly=0, monthly=0, yearly=0, last=0, prune_incomplete=True, **RULES_ONLY)
    decisions = decide(history, policy, now=LATER, tz=UTC)
    assert all(d.keep for d in decisions) and len(decisions) == 21
    assert decisions[-1].reasons == ("no keep rule set",)


def test_decisions_come_newest_first_and_as_the_preview_shows_them():
    history = daily_history(date(2026, 11, 1), date(2026, 11, 3))
    decisions = decide(reversed(history), rules(daily=1), now=LATER, tz=UTC)
    assert [d.id for d in decisions] == [b.id for b in reversed(history)]
    assert decisions[0].as_dict() == {
        "id": "backup-20261103_030000",
        "created_at": "2026-11-03T03:00:00+00:00",
        "keep": True,
        "reasons": ["newest", "daily 2026-11-03"],
    }
    assert decisions[1].reason == "beyond daily 1"


def test_duplicate_ids_and_naive_times_are_refused():
    moment = at("2026-11-01T03:00")
    with pytest.raises(ValueError, match="unique"):
        decide([BackupInfo("a", moment), BackupInfo("a", moment)], Policy(), now=LATER, tz=UTC)
    with pytest.raises(ValueError, match="aware"):
        decide([BackupInfo("a", moment.replace(tzinfo=None))], Policy(), now=LATER, tz=UTC)


def test_policy_from_a_document_of_the_original_service_takes_the_new_defaults():
    policy = Policy.from_document({"daily": 3, "weekly": 2, "monthly": 1})
    assert policy == Policy(daily=3, weekly=2, monthly=1, yearly=0, last=0, keep_within_hours=24)
    full = Policy.from_document(
        {
            "daily": 1,
            "weekly": 0,
            "monthly": 0,
            "yearly": 2,
            "last": 5,
            "keepWithinHours": 0,
            "keepManual": False,
            "afterFailure": True,
            "pruneIncomplete": True,
        }
    )
    assert (full.yearly, full.last, full.keep_within_hours, full.keep_manual, full.prune_incomplete) == (
        2,
        5,
        0,
        False,
        True,
    )


def test_the_original_call_keeps_its_meaning():
    candidates = [Candidate(f"b{d}", at(f"2026-01-{d:02d}T03:00"), keep=d == 1) for d in range(1, 6)]
    assert select_prunable(candidates, {"daily": 2, "weekly": 0, "monthly": 0}, tz=UTC) == ["b3", "b2"]
    assert select_prunable(candidates, {"daily": 0, "weekly": 0, "monthly": 0}, tz=UTC) == []


@pytest.mark.parametrize(
    ("document", "partial", "errors"),
    [
        ({"daily": 7, "weekly": 4, "monthly": 12}, False, {}),
        (
            {
                "daily": 7,
                "weekly": 4,
                "monthly": 12,
                "yearly": 1000,
                "last": 0,
                "keepWithinHours": 87600,
                "keepManual": True,
                "afterFailure": False,
                "pruneIncomplete": True,
            },
            False,
            {},
        ),
        ({"yearly": 3}, True, {}),
        ({"yearly": 3}, False, {key: ["This field is required."] for key in ("daily", "weekly", "monthly")}),
        ({"last": 1001}, True, {"last": ["Must be between 0 and 1000."]}),
        ({"yearly": -1}, True, {"yearly": ["Must be between 0 and 1000."]}),
        ({"last": True}, True, {"last": ["Must be an integer."]}),
        ({"yearly": 1.5}, True, {"yearly": ["Must be an integer."]}),
        ({"keepWithinHours": 87601}, True, {"keepWithinHours": ["Must be between 0 and 87600."]}),
        ({"keepWithinHours": "24"}, True, {"keepWithinHours": ["Must be an integer (hours)."]}),
        ({"keepManual": 1}, True, {"keepManual": ["Must be true or false."]}),
        (
            {"pruneIncomplete": "yes", "afterFailure": None},
            True,
            {"pruneIncomplete": ["Must be true or false."], "afterFailure": ["Must be true or false."]},
        ),
        ({"hourly": 24}, True, {"hourly": ["Unknown field."]}),
        ([], True, {"non_field_errors": ["Must be a JSON object."]}),
    ],
)
def test_the_retention_document_is_validated_with_drf_shaped_errors(document, partial, errors):
    assert validate_retention(document, partial=partial) == errors
