"""Which duties a run's end leaves for the worker. Each name here has one worker step that does it
(its `step` module, listed in `backups.worker.loop.DUTIES`); a new post-run capability adds its name
here and its step there."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from backups.runs.models import Duty

logger = logging.getLogger(__name__)

NOTIFY = "notify"  # tell the channels how the run ended (`notifications.step`)
NOTIFY_START = "notify_start"  # the monitor's `/start` ping, left where the run is claimed
RETENTION = "retention"  # after a failure, it applies only with `retention.afterFailure`

# After a successful backup run. Notifying comes first: a long verification must not hold it back.
AFTER_SUCCESS: tuple[str, ...] = (NOTIFY, "verify", RETENTION)
# After any other end (failed, cancelled, interrupted, ...).
AFTER_FAILURE: tuple[str, ...] = (NOTIFY, RETENTION)


def owed_after(succeeded: bool) -> tuple[str, ...]:
    return AFTER_SUCCESS if succeeded else AFTER_FAILURE


def owed_at_start(document: dict[str, Any]) -> tuple[str, ...]:
    """Only the monitor ping hears a start. Without one nothing is owed, and the database stays quiet in
    the moment the script is spawned and its process group recorded."""
    return (NOTIFY_START,) if document["notifications"]["healthcheckUrl"] else ()


MAX_ATTEMPTS = 3


def next_owed(name: str) -> Duty | None:
    """The oldest owed duty of this name (only the worker holding the lease does duties)."""
    return Duty.objects.filter(name=name).select_related("run").order_by("created_at", "id").first()


@contextlib.contextmanager
def attempt(duty: Duty) -> Iterator[None]:
    """Do a duty: done (its row deleted) when the block ends normally; a failure is logged and
    counted, and after MAX_ATTEMPTS the duty is dropped rather than block the worker forever."""
    try:
        yield
    except Exception:
        attempts = duty.attempts + 1
        logger.exception("duty %s failed (attempt %d of %d)", duty.name, attempts, MAX_ATTEMPTS)
        if attempts >= MAX_ATTEMPTS:
            Duty.objects.filter(id=duty.id).delete()
        else:
            Duty.objects.filter(id=duty.id).update(attempts=attempts)
        return
    Duty.objects.filter(id=duty.id).delete()
