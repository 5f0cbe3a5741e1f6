"""Properties of the retention policy over random histories (hypothesis): the floor always holds, the
decision is deterministic, and it keeps exactly what the restic rules and the floor keep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backups.retention.policy import BackupInfo, Policy, decide

ZONES = [UTC, ZoneInfo("Europe/Berlin"), ZoneInfo("America/Sao_Paulo"), ZoneInfo("Pacific/Chatham")]
BASE = datetime(2025, 12, 1, tzinfo=UTC)
SPAN_MINUTES = 3 * 366 * 24 * 60

backups_strategy = st.lists(
    st.tuples(
        # Minutes: clustered histories (many a day) and sparse ones (years) both come out.
        st.one_of(st.integers(0, 7 * 24 * 60), st.integers(0, SPAN_MINUTES)),
        st.sampled_from(["completed", "completed", "completed", "failed", "incomplete", "running"]),
        st.sampled_from(["scheduled", "scheduled", "manual", "external"]),
        st.sampled_from([False, False, False, True]),
    ),
    max_size=40,
).map(
    lambda rows: [
        BackupInfo(id=f"b{i:03d}", created_at=BASE + timedelta(minutes=m), status=s, type=t, pinned=p)
        for i, (m, s, t, p) in enumerate(rows)
    ]
)

count = st.one_of(st.just(0), st.integers(0, 12))
policy_strategy = st.builds(
    Policy,
    daily=count,
    weekly=count,
    monthly=count,
    yearly=count,
    last=count,
    keep_within_hours=st.sampled_from([0, 1, 24, 72]),
    keep_manual=st.booleans(),
    prune_incomplete=st.booleans(),
)
now_strategy = st.integers(0, SPAN_MINUTES + 30 * 24 * 60).map(lambda m: BASE + timedelta(minutes=m))
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def labels(moment: datetime, tz) -> dict[str, str]:
    local = moment.astimezone(tz)
    iso = local.isocalendar()
    return {
        "daily": local.date().isoformat(),
        "weekly": f"{iso.year}-W{iso.week:02d}",
        "monthly": f"{local.year}-{local.month:02d}",
        "yearly": str(local.year),
    }


def restic_oracle(backups: list[BackupInfo], policy: Policy, tz) -> set[str]:
    """The completed backups restic's rules keep, computed by grouping rather than by walking."""
    completed = sorted(
        (b for b in backups if b.status == "completed"),
        key=lambda b: (b.created_at.astimezone(UTC), b.id),
        reverse=True,
    )
    keep: set[str] = {b.id for b in completed[: policy.last]}
    for rule in ("daily", "weekly", "monthly", "yearly"):
        n = getattr(policy, rule)
        if n == 0 or not completed:
            continue
        newest_of_bucket: dict[str, str] = {}
        for b in completed:
            newest_of_bucket.setdefault(labels(b.created_at, tz)[rule], b.id)
        keep.update(list(newest_of_bucket.values())[:n])
        before_oldest = {labels(b.created_at, tz)[rule] for b in completed[:-1]}
        if len(before_oldest) < n:
            keep.add(completed[-1].id)
    return keep


def floor_ids(backups: list[BackupInfo], policy: Policy, now: datetime, running: str | None) -> set[str]:
    completed = [b for b in backups if b.status == "completed"]
    newest = max(completed, key=lambda b: (b.created_at, b.id)).id if completed else None
    return {
        b.id
        for b in backups
        if b.id == newest
        or b.pinned
        or b.id == running
        or b.status == "running"
        or (policy.keep_within_hours and now - b.created_at < timedelta(hours=policy.keep_within_hours))
        or (b.type == "manual" and policy.keep_manual)
    }


@PROPERTY
@given(backups_strategy, policy_strategy, now_strategy, st.sampled_from(ZONES), st.data())
def test_the_floor_always_holds(backups, policy, now, tz, data):
    running = data.draw(st.sampled_from([None, *[b.id for b in backups]]))
    decisions = {d.id: d for d in decide(backups, policy, now=now, tz=tz, running_backup_id=running)}
    for backup_id in floor_ids(backups, policy, now, running):
        assert decisions[backup_id].keep, (backup_id, decisions[backup_id].reasons)


@PROPERTY
@given(backups_strategy, policy_strategy, now_strategy, st.sampled_from(ZONES), st.randoms())
def test_the_decision_does_not_depend_on_the_order_of_the_backups(backups, policy, now, tz, rnd):
    first = decide(backups, policy, now=now, tz=tz)
    shuffled = list(backups)
    rnd.shuffle(shuffled)
    assert decide(shuffled, policy, now=now, tz=tz) == first
    assert decide(backups, policy, now=now, tz=tz) == first


@PROPERTY
@given(backups_strategy, policy_strategy, now_strategy, st.sampled_from(ZONES))
def test_completed_backups_kept_are_exactly_those_of_the_rules_and_the_floor(backups, policy, now, tz):
    decisions = {d.id: d for d in decide(backups, policy, now=now, tz=tz)}
    by_rules = restic_oracle(backups, policy, tz)
    floor = floor_ids(backups, policy, now, None)
    for b in backups:
        if b.status != "completed":
            continue
        if policy.keeps_everything:
            assert decisions[b.id].keep
        else:
            assert decisions[b.id].keep == (b.id in by_rules or b.id in floor), (b, decisions[b.id])


@PROPERTY
@given(backups_strategy, policy_strategy, now_strategy, st.sampled_from(ZONES))
def test_failed_and_incomplete_folders_never_change_what_happens_to_completed_ones(backups, policy, now, tz):
    with_all = {d.id: d for d in decide(backups, policy, now=now, tz=tz)}
    only_completed = decide([b for b in backups if b.status == "completed"], policy, now=now, tz=tz)
    for decision in only_completed:
        assert with_all[decision.id] == decision


@PROPERTY
@given(backups_strategy, policy_strategy, now_strategy, st.sampled_from(ZONES))
def test_an_unprotected_old_incomplete_folder_goes_only_when_pruning_is_on(backups, policy, now, tz):
    decisions = {d.id: d for d in decide(backups, policy, now=now, tz=tz)}
    floor = floor_ids(backups, policy, now, None)
    for b in backups:
        if b.status in ("failed", "incomplete") and b.id not in floor:
            old = now - b.created_at >= timedelta(days=7)
            expected_delete = old and policy.prune_incomplete and not policy.keeps_everything
            assert decisions[b.id].keep is not expected_delete, (b, decisions[b.id])


@PROPERTY
@given(backups_strategy, policy_strategy, now_strategy, st.sampled_from(ZONES))
def test_every_decision_has_its_reasons(backups, policy, now, tz):
    for decision in decide(backups, policy, now=now, tz=tz):
        assert decision.reasons and all(decision.reasons)
        if not decision.keep:
            assert len(decision.reasons) == 1
