"""Worker step of off-site copies: when the lane is free, start the owed upload (or the removal of
deleted backups' copies and the garbage collection) as an automatic job; a backup request cancels it and
the next attempt resumes from the parts already in the store."""

from __future__ import annotations

from backups.offsite import services
from backups.runs.selectors import current_run


def start_due_offsite() -> bool:
    if current_run() is not None:
        return False
    return services.offsite_start_due() is not None
