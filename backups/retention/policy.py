"""Which backups a retention policy keeps, and why. Pure: no ORM, no disk, no clock.

The keep rules are restic's (`restic forget --keep-last/-daily/-weekly/-monthly/-yearly`), exactly:
walking the completed backups from the newest back, a rule with count N keeps the newest backup of
each of the N most recent days (ISO weeks, months, years) *that have a backup*. It is never a time
window: a week without backups uses up no count. `last` N keeps the N newest backups. As restic
does since 0.17, a rule whose count is not used up when the walk reaches the oldest backup keeps that
one too, so a short history is kept whole rather than trimmed. Days, weeks, months and years are
those of the given time zone, so a backup at 00:30 local time counts for the local day it was
made, across DST changes too.

Over the rules lies a floor that no rule can break: the newest completed backup, pinned backups,
the folder of the running run, everything younger than `keepWithinHours`, and manual backups while
`keepManual` holds. Failed and incomplete folders never fill a rule's bucket (a broken backup must
not take the place of a good one of the same day); they are kept for 7 days for someone to look at,
and after that deleted only when `pruneIncomplete` is true.

Every decision carries its reasons: all the reasons a backup is kept (`daily 2026-11-30`,
`weekly 2026-W48`, `monthly 2026-11`, `yearly 2026`, `last 3`, `oldest daily 2026-11-01`, `newest`,
`pinned`, `running`, `within 24 h`, `manual`, ...), or the one reason it is deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

COMPLETED = "completed"
INCOMPLETE = "incomplete"
FAILED = "failed"
RUNNING = "running"
STATUSES = (COMPLETED, INCOMPLETE, FAILED, RUNNING)
MANUAL = "manual"
SCHEDULED = "scheduled"
EXTERNAL = "external"
TYPES = (MANUAL, SCHEDULED, EXTERNAL)

# How long a failed or incomplete folder stays whatever the policy says: long enough for someone to
# come back from a week off and still find what went wrong.
INCOMPLETE_GRACE = timedelta(days=7)

COUNT_MAX = 1000
KEEP_WITHIN_HOURS_MAX = 87600  # ten years

# restic's order of rules, which is also the order of the reasons.
RULES = ("last", "daily", "weekly", "monthly", "yearly")

DEFAULT_RETENTION: dict[str, Any] = {
    "daily": 7,
    "weekly": 4,
    "monthly": 12,
    "yearly": 0,
    "last": 0,
    "keepWithinHours": 24,
    "keepManual": True,
    "afterFailure": False,
    "pruneIncomplete": False,
}
# The keys of the original document: a full document (PUT) must carry them; the others default.
REQUIRED_KEYS = ("daily", "weekly", "monthly")


@dataclass(frozen=True)
class BackupInfo:
    id: str
    created_at: datetime  # aware
    status: str = COMPLETED
    type: str = SCHEDULED
    pinned: bool = False


@dataclass(frozen=True)
class Policy:
    daily: int = 7
    weekly: int = 4
    monthly: int = 12
    yearly: int = 0
    last: int = 0
    keep_within_hours: int = 24
    keep_manual: bool = True
    prune_incomplete: bool = False

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Policy:
        """The policy of a (validated) `retention` sub-document; absent keys take their defaults.
        `afterFailure` is not the policy's: it decides whether retention runs at all."""
        merged = {**DEFAULT_RETENTION, **document}
        return cls(
            daily=int(merged["daily"]),
            weekly=int(merged["weekly"]),
            monthly=int(merged["monthly"]),
            yearly=int(merged["yearly"]),
            last=int(merged["last"]),
            keep_within_hours=int(merged["keepWithinHours"]),
            keep_manual=bool(merged["keepManual"]),
            prune_incomplete=bool(merged["pruneIncomplete"]),
        )

    def counts(self) -> dict[str, int]:
        return {rule: getattr(self, rule) for rule in RULES}

    @property
    def keeps_everything(self) -> bool:
        return not any(count > 0 for count in self.counts().values())


@dataclass(frozen=True)
class Decision:
    id: str
    created_at: datetime
    keep: bool
    reasons: tuple[str, ...]  # never empty

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        """The shape of one entry of the retention preview."""
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "keep": self.keep,
            "reasons": list(self.reasons),
        }


def _bucket_labels(tz: tzinfo) -> dict[str, Callable[[datetime], str]]:
    def daily(moment: datetime) -> str:
        return moment.astimezone(tz).strftime("%Y-%m-%d")

    def weekly(moment: datetime) -> str:
        # The ISO year, not the calendar year: 2027-01-01 belongs to 2026-W53.
        year, week, _ = moment.astimezone(tz).isocalendar()
        return f"{year}-W{week:02d}"

    def monthly(moment: datetime) -> str:
        return moment.astimezone(tz).strftime("%Y-%m")

    def yearly(moment: datetime) -> str:
        return f"{moment.astimezone(tz).year:04d}"

    return {"daily": daily, "weekly": weekly, "monthly": monthly, "yearly": yearly}


def _utc(moment: datetime) -> datetime:
    # Aware datetimes sharing one tzinfo compare and subtract by wall time, fold ignored: the two
    # 02:30 of a DST change would be equal. In UTC they are an hour apart, as they really are.
    return moment.astimezone(UTC)


def _newest_first(backups: Iterable[BackupInfo]) -> list[BackupInfo]:
    return sorted(backups, key=lambda b: (_utc(b.created_at), b.id), reverse=True)


def _rule_keeps(
    completed: Sequence[BackupInfo], policy: Policy, tz: tzinfo
) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """restic's walk: {backup id: [reasons]} and, per rule, the buckets that some backup fills."""
    labels = _bucket_labels(tz)
    reasons: dict[str, list[str]] = {b.id: [] for b in completed}
    filled: dict[str, set[str]] = {rule: set() for rule in RULES}
    for rule, count in policy.counts().items():
        remaining = count
        previous: str | None = None
        for position, backup in enumerate(completed):
            if remaining <= 0:
                break
            bucket = str(position) if rule == "last" else labels[rule](backup.created_at)
            oldest = position == len(completed) - 1
            if bucket == previous and not oldest:
                continue
            if rule == "last":
                reasons[backup.id].append(f"last {position + 1}")
            elif bucket == previous:
                reasons[backup.id].append(f"oldest {rule} {bucket}")
            else:
                reasons[backup.id].append(f"{rule} {bucket}")
            filled[rule].add(bucket)
            previous = bucket
            remaining -= 1
    return reasons, filled


def _why_deleted(backup: BackupInfo, policy: Policy, tz: tzinfo, filled: dict[str, set[str]]) -> str:
    labels = _bucket_labels(tz)
    for rule in ("daily", "weekly", "monthly", "yearly"):
        if getattr(policy, rule) > 0:
            bucket = labels[rule](backup.created_at)
            if bucket in filled[rule]:
                return f"{rule} {bucket} keeps a newer backup"
    beyond = ", ".join(f"{rule} {count}" for rule, count in policy.counts().items() if count > 0)
    return f"beyond {beyond}"


def decide(
    backups: Iterable[BackupInfo],
    policy: Policy,
    *,
    now: datetime,
    tz: tzinfo,
    running_backup_id: str | None = None,
) -> list[Decision]:
    """A decision for every backup given, newest first. The same input in any order gives the same
    decisions. `running_backup_id` is the folder the running run writes into, if any."""
    items = _newest_first(backups)
    ids = [b.id for b in items]
    if len(set(ids)) != len(ids):
        raise ValueError("backup ids must be unique")
    if now.tzinfo is None or any(b.created_at.tzinfo is None for b in items):
        raise ValueError("now and every created_at must be aware datetimes")
    now = _utc(now)
    completed = [b for b in items if b.status == COMPLETED]
    rule_reasons, filled = _rule_keeps(completed, policy, tz)
    newest_id = completed[0].id if completed else None
    within = timedelta(hours=policy.keep_within_hours)

    decisions = []
    for backup in items:
        reasons: list[str] = []
        if backup.id == newest_id:
            reasons.append("newest")
        if backup.pinned:
            reasons.append("pinned")
        if backup.status == RUNNING or backup.id == running_backup_id:
            reasons.append("running")
        # A backup from the future (a clock set wrong) counts as young: it is not ours to judge yet.
        age = now - _utc(backup.created_at)
        if policy.keep_within_hours > 0 and age < within:
            reasons.append(f"within {policy.keep_within_hours} h")
        if backup.type == MANUAL and policy.keep_manual:
            reasons.append("manual")
        if policy.keeps_everything:
            reasons.append("no keep rule set")
        doomed: str | None = None
        if backup.status == COMPLETED:
            reasons.extend(rule_reasons[backup.id])
            if not reasons:
                doomed = _why_deleted(backup, policy, tz, filled)
        elif backup.status in (FAILED, INCOMPLETE):
            if age < INCOMPLETE_GRACE:
                reasons.append(f"{backup.status}, younger than 7 days")
            elif not policy.prune_incomplete:
                reasons.append(f"{backup.status}, pruneIncomplete is off")
            elif not reasons:
                doomed = f"{backup.status}, older than 7 days"
        elif backup.status != RUNNING:
            # A status this module does not know is no licence to delete.
            reasons.append(f"unknown status {backup.status!r}")
        decisions.append(
            Decision(
                id=backup.id,
                created_at=backup.created_at,
                keep=doomed is None,
                reasons=tuple(reasons) if doomed is None else (doomed,),
            )
        )
    return decisions


def to_delete(decisions: Iterable[Decision]) -> list[str]:
    return [d.id for d in decisions if not d.keep]


# --- validation of the `retention` sub-document --------------------------------------------------


def _check_count(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return "Must be an integer."
    if not 0 <= value <= COUNT_MAX:
        return f"Must be between 0 and {COUNT_MAX}."
    return None


def _check_hours(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return "Must be an integer (hours)."
    if not 0 <= value <= KEEP_WITHIN_HOURS_MAX:
        return f"Must be between 0 and {KEEP_WITHIN_HOURS_MAX}."
    return None


def _check_bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "Must be true or false."


RETENTION_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "daily": _check_count,
    "weekly": _check_count,
    "monthly": _check_count,
    "yearly": _check_count,
    "last": _check_count,
    "keepWithinHours": _check_hours,
    "keepManual": _check_bool,
    "afterFailure": _check_bool,
    "pruneIncomplete": _check_bool,
}


def validate_retention(value: Any, *, partial: bool = False) -> dict[str, Any]:
    """DRF-shaped errors of a `retention` sub-document (`{"daily": ["Must be an integer."]}`), empty
    when it is valid. A full document (`partial=False`) needs the original keys; the new ones may be
    absent and take their defaults."""
    if not isinstance(value, dict):
        return {"non_field_errors": ["Must be a JSON object."]}
    errors: dict[str, Any] = {}
    for key in value:
        if key not in RETENTION_CHECKS:
            errors[key] = ["Unknown field."]
    for key, check in RETENTION_CHECKS.items():
        if key not in value:
            if not partial and key in REQUIRED_KEYS:
                errors[key] = ["This field is required."]
            continue
        message = check(value[key])
        if message:
            errors[key] = [message]
    return errors


# --- the call of the original service ------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    id: str
    created_at: datetime
    keep: bool = False  # pinned or latest: never pruned (it still fills its buckets)


def select_prunable(candidates: Iterable[Candidate], policy: Mapping[str, int], *, tz: tzinfo) -> list[str]:
    """The completed backups that only the daily/weekly/monthly rules would keep no longer, newest
    first: the original service's retention, now through `decide` with the floor reduced to
    `keep`."""
    items = [BackupInfo(id=c.id, created_at=c.created_at, pinned=c.keep) for c in candidates]
    if not items:
        return []
    rules = Policy(
        daily=int(policy.get("daily", 0)),
        weekly=int(policy.get("weekly", 0)),
        monthly=int(policy.get("monthly", 0)),
        yearly=0,
        last=0,
        keep_within_hours=0,
        keep_manual=False,
    )
    now = max(_utc(item.created_at) for item in items)
    return to_delete(decide(items, rules, now=now, tz=tz))
