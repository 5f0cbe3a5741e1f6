"""Which backups a daily/weekly/monthly retention policy no longer keeps. Pure: no ORM, no disk.

The rule is the one restic and Borg use: walking from the newest backup back, the newest backup of
each of the last `daily` days is kept, likewise one per ISO week for `weekly` weeks and one per month
for `monthly` months. A backup kept by any rule stays. All three zero keeps everything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo


@dataclass(frozen=True)
class Candidate:
    id: str
    created_at: datetime
    keep: bool = False  # pinned or latest: never pruned (it still fills its buckets)


def _bucket_keys(tz: tzinfo) -> dict[str, Callable[[datetime], tuple[int, ...]]]:
    def local(moment: datetime) -> datetime:
        return moment.astimezone(tz)

    return {
        "daily": lambda m: (local(m).year, local(m).month, local(m).day),
        "weekly": lambda m: tuple(local(m).isocalendar()[:2]),
        "monthly": lambda m: (local(m).year, local(m).month),
    }


def select_prunable(candidates: Iterable[Candidate], policy: Mapping[str, int], *, tz: tzinfo) -> list[str]:
    items = sorted(candidates, key=lambda c: (c.created_at, c.id), reverse=True)
    if not any(int(policy.get(rule, 0)) > 0 for rule in ("daily", "weekly", "monthly")):
        return []
    kept = {c.id for c in items if c.keep}
    for rule, key in _bucket_keys(tz).items():
        limit = int(policy.get(rule, 0))
        seen: set[tuple[int, ...]] = set()
        for candidate in items:
            if len(seen) >= limit:
                break
            bucket = key(candidate.created_at)
            if bucket not in seen:
                seen.add(bucket)
                kept.add(candidate.id)
    return [c.id for c in items if c.id not in kept]
