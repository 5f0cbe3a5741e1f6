"""Worker step: check each new backup against its manifest once its run has succeeded."""

from __future__ import annotations

from backups.runs import duties
from backups.verification.services import backup_verify

DUTY = "verify"


def verify_new_backups() -> bool:
    duty = duties.next_owed(DUTY)
    if duty is None:
        return False
    with duties.attempt(duty):
        if duty.run.backup_id:
            backup_verify(backup_id=duty.run.backup_id)
    return True
