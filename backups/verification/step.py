"""Worker steps of verification: owe each new backup its check once its run has succeeded, and start
the owed (or the daily rolling) verification as an automatic job when the lane is free."""

from __future__ import annotations

from backups.runs import duties
from backups.runs.selectors import current_run
from backups.verification import services

DUTY = "verify"


def verify_new_backups() -> bool:
    duty = duties.next_owed(DUTY)
    if duty is None:
        return False
    with duties.attempt(duty):
        if duty.run.backup_id:
            services.verification_mark_due(backup_id=duty.run.backup_id, level=services.owed_level())
    return True


def start_due_verification() -> bool:
    """One automatic verify run, when nothing else is queued or running (a backup request cancels it)."""
    if current_run() is not None:
        return False
    services.mark_unseen_backups_due()
    return services.verification_start_due() is not None


def drop_scratch_leftovers() -> bool:
    """Upkeep between runs: what a killed restore-test left on the scratch server."""
    services.drop_scratch_leftovers()
    return False
