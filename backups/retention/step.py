"""Worker step: apply retention once a successful run has added a backup."""

from __future__ import annotations

from backups.retention.services import retention_apply
from backups.runs import duties

DUTY = "retention"


def apply_after_run() -> bool:
    duty = duties.next_owed(DUTY)
    if duty is None:
        return False
    with duties.attempt(duty):
        retention_apply()
    return True
