"""Worker step of restores: what a killed files restore left behind."""

from __future__ import annotations

from backups.restore import services


def remove_partial_restores() -> bool:
    """Upkeep between runs: half-written folders of a killed extraction, in the restore directories."""
    services.remove_partial_folders()
    return False
