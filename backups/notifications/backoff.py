"""When to try a failed delivery again. Pure: the caller gives the clock.

Exponential back-off from 30 s, doubling up to one hour between attempts, for at most 24 hours after
the first attempt: a receiver down for a night still gets the message in the morning, one down for
good stops costing anything after a day. A `Retry-After` from the receiver is honoured (never
sooner than it asks), up to 6 hours, so a bogus value cannot park a message for a week.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

BASE_DELAY_SECONDS = 30.0
MAX_DELAY_SECONDS = 3600.0
MAX_RETRY_AFTER_SECONDS = 6 * 3600.0
GIVE_UP_AFTER = timedelta(hours=24)


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment is None:
        return None
    if moment.tzinfo is None:  # RFC 850 and asctime dates carry no zone; HTTP dates are GMT
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - now).total_seconds())


def retry_delay(failed_attempts: int, *, retry_after: float | None = None) -> float:
    """Seconds between the `failed_attempts`-th failed attempt (1 = the first) and the next one."""
    if failed_attempts < 1:
        raise ValueError("failed_attempts starts at 1")
    delay = min(BASE_DELAY_SECONDS * 2 ** min(failed_attempts - 1, 32), MAX_DELAY_SECONDS)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
    return delay


def next_attempt_at(
    *,
    first_attempt_at: datetime,
    failed_attempts: int,
    now: datetime,
    retry_after: float | None = None,
    give_up_after: timedelta = GIVE_UP_AFTER,
) -> datetime | None:
    """When to try again after a retryable failure at `now`, or None: give up (the next attempt
    would fall more than `give_up_after` after the first one)."""
    at = now + timedelta(seconds=retry_delay(failed_attempts, retry_after=retry_after))
    if at - first_attempt_at > give_up_after:
        return None
    return at


def schedule(*, give_up_after: timedelta = GIVE_UP_AFTER) -> list[float]:
    """Seconds after the first attempt of every retry when each attempt fails at once and no
    Retry-After comes: the whole plan, for documentation and for the admin."""
    offsets: list[float] = []
    elapsed = 0.0
    failed = 1
    while True:
        elapsed += retry_delay(failed)
        if elapsed > give_up_after.total_seconds():
            return offsets
        offsets.append(elapsed)
        failed += 1
