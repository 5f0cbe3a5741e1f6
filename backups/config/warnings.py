"""What an accepted config document still deserves a word about. Pure: the API's PUT/PATCH answer
and the dashboard's banner say the same."""

from __future__ import annotations

from typing import Any

from backups.config.document import COMPONENT_KEYS


def config_warnings(document: dict[str, Any]) -> list[str]:
    warnings = []
    if not document["enabled"]:
        warnings.append("The schedule is off: no backup runs unless someone starts one.")
    if not any(document["components"].get(key) for key in COMPONENT_KEYS):
        warnings.append("Every component is off: a backup would hold nothing of the platform.")
    return warnings
