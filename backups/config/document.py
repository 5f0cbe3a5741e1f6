"""The config document of the original service: its default, its validation and its schedule.

Pure: no ORM. `validate` answers errors shaped like DRF's (`{"retention": {"daily": ["..."]}}`) so
that the API, the admin form and the CLI refuse a bad document with the same words.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cronsim import CronSim, CronSimError

DEFAULT_CONFIG: dict[str, Any] = {
    "enabled": True,
    "schedule": "0 3 * * *",
    "retention": {"daily": 7, "weekly": 4, "monthly": 12},
    "compression": True,
    "encryption": False,
    "notifications": {"email": False, "webhook": ""},
    "components": {
        "databases": True,
        "applicationFiles": True,
        "uploads": True,
        "configs": True,
        "nginx": True,
        "ssl": True,
        "systemInfo": True,
    },
}

COMPONENT_KEYS = tuple(DEFAULT_CONFIG["components"])
RETENTION_KEYS = tuple(DEFAULT_CONFIG["retention"])
RETENTION_MAX = 1000
WEBHOOK_MAX = 2000

Errors = dict[str, Any]


class ConfigInvalid(Exception):
    def __init__(self, errors: Errors) -> None:
        super().__init__("invalid config document")
        self.errors = errors


def default_document() -> dict[str, Any]:
    return copy.deepcopy(DEFAULT_CONFIG)


def next_fire_time(expression: str, after: datetime) -> datetime:
    """The first time strictly after `after` that the 5-field cron expression matches.

    `after` must be aware; the expression is read in that datetime's time zone (the server's), so
    "0 3 * * *" means 03:00 local time, as cron itself does.
    """
    return next(iter(CronSim(expression, after)))


def _schedule_error(value: Any) -> str | None:
    if not isinstance(value, str):
        return "Must be a string with a 5-field cron expression."
    if len(value) > 200 or len(value.split()) != 5:
        return "Must be a 5-field cron expression (minute hour day month weekday), e.g. '0 3 * * *'."
    try:
        # healthchecks' way: an expression is valid when its next run can be computed.
        next(iter(CronSim(value, datetime(2026, 1, 1))))
    except (CronSimError, StopIteration, ValueError, OverflowError):
        return f"'{value}' is not a valid cron expression."
    return None


def _check_bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "Must be true or false."


def _check_retention_count(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return "Must be an integer."
    if not 0 <= value <= RETENTION_MAX:
        return f"Must be between 0 and {RETENTION_MAX}."
    return None


def _check_webhook(value: Any) -> str | None:
    if not isinstance(value, str):
        return "Must be a string: empty, or an http(s) URL."
    if value == "":
        return None
    if len(value) > WEBHOOK_MAX or any(ch.isspace() or ord(ch) < 32 for ch in value):
        return "Must be an http(s) URL."
    try:
        parts = urlsplit(value)
    except ValueError:
        return "Must be an http(s) URL."
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return "Must be an http(s) URL."
    return None


# Every key of the document with the check of its value; nested documents are dicts of checks.
SCHEMA: dict[str, Any] = {
    "enabled": _check_bool,
    "schedule": _schedule_error,
    "retention": {key: _check_retention_count for key in RETENTION_KEYS},
    "compression": _check_bool,
    "encryption": _check_bool,
    "notifications": {"email": _check_bool, "webhook": _check_webhook},
    "components": {key: _check_bool for key in COMPONENT_KEYS},
}


def _validate(value: Any, schema: dict[str, Any], partial: bool) -> Errors:
    if not isinstance(value, dict):
        return {"non_field_errors": ["Must be a JSON object."]}
    errors: Errors = {}
    for key in value:
        if key not in schema:
            errors[key] = ["Unknown field."]
    for key, check in schema.items():
        if key not in value:
            if not partial:
                errors[key] = ["This field is required."]
            continue
        if isinstance(check, dict):
            nested = _validate(value[key], check, partial)
            if nested:
                errors[key] = nested
        else:
            message = check(value[key])
            if message:
                errors[key] = [message]
    return errors


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def validate(document: Any, *, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """The new full document, or ConfigInvalid. With `current`, `document` is a partial one (PATCH)
    merged into it; without, it must hold every key (PUT)."""
    partial = current is not None
    errors = _validate(document, SCHEMA, partial)
    if errors:
        raise ConfigInvalid(errors)
    return _merge(current, document) if partial else copy.deepcopy(document)


def upgrade(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored document completed with the defaults of keys added since it was written."""
    return _merge(default_document(), stored if isinstance(stored, dict) else {})


def diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    """{"retention.daily": [7, 3]} for every leaf that changed: the audit row's details."""
    changes: dict[str, list[Any]] = {}
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(before, dict) and isinstance(after, dict):
            changes.update(diff(before, after, path + "."))
        elif before != after:
            changes[path] = [before, after]
    return changes


def enabled_components(document: dict[str, Any]) -> list[str]:
    return [key for key in COMPONENT_KEYS if document.get("components", {}).get(key, True)]
