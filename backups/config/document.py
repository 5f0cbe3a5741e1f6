"""The config document of the original service, grown by the keys of notifications, retention rules,
verification, off-site copies and encryption: its default, its validation and its schedule.

Pure: no ORM. `validate` answers errors shaped like DRF's (`{"retention": {"daily": ["..."]}}`) so
that the API, the admin form and the CLI refuse a bad document with the same words. A full document
(PUT) must carry every key of the original service; the keys added since may be absent and then take
their defaults, so the original admin front end keeps saving its document unchanged.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cron_descriptor import ExpressionDescriptor, FormatException, Options
from cronsim import CronSim, CronSimError

from backups.offsite.crypto import recipient_problems
from backups.retention.policy import DEFAULT_RETENTION, REQUIRED_KEYS, RETENTION_CHECKS

DEFAULT_CONFIG: dict[str, Any] = {
    "enabled": True,
    "schedule": "0 3 * * *",
    "retention": dict(DEFAULT_RETENTION),
    "scheduleRetries": {"count": 0, "delayMinutes": 10},
    "compression": True,
    "compressionLevel": 6,
    "encryption": False,
    "encryptionRecipients": [],
    "encryptLocal": False,
    "notifications": {
        "email": False,
        "webhook": "",
        "emailRecipients": [],
        "urls": [],
        "healthcheckUrl": "",
        "staleAfterHours": 26,
        "onSuccess": False,
    },
    "verification": {"deep": True},
    "offsite": {
        "enabled": False,
        "endpoint": "",
        "bucket": "",
        "prefix": "",
        "region": "",
        "storageClass": "",
    },
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

# The original service's keys: a PUT must carry them. Every other key may be absent (its default).
ORIGINAL_KEYS: dict[str, Any] = {
    "enabled": True,
    "schedule": True,
    "retention": set(REQUIRED_KEYS),
    "compression": True,
    "encryption": True,
    "notifications": {"email", "webhook"},
    "components": set(DEFAULT_CONFIG["components"]),
}

COMPONENT_KEYS = tuple(DEFAULT_CONFIG["components"])
RETENTION_KEYS = tuple(DEFAULT_RETENTION)
RETENTION_MAX = 1000
URL_MAX = 2000
LIST_MAX = 20
STORAGE_CLASSES = (
    "",
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "GLACIER_IR",
    "DEEP_ARCHIVE",
    "REDUCED_REDUNDANCY",
)
# An age X25519 recipient: "age1" + 58 bech32 characters.
AGE_RECIPIENT = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")
EMAIL = re.compile(
    r"^[^@\s<>,;\"]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})+$"
)
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

Errors = dict[str, Any]
Check = Callable[[Any], str | None]


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
    # cronsim reads the wall time and ignores `fold`: from 02:10 of the second (CET) pass of the night
    # DST ends it answers the 02:30 of the first (CEST) pass, which is already over. Skip such answers.
    for candidate in CronSim(expression, after):
        if candidate.timestamp() > after.timestamp():
            return candidate
    raise ValueError(f"{expression!r} never fires")  # CronSim raises first; kept for the type checker


def describe_schedule(expression: str) -> str:
    """ "At 03:00, every day" for `0 3 * * *`: the words the dashboard and the admin show beside the
    expression (24-hour clock, as the server's cron reads it)."""
    options = Options()
    options.use_24hour_time_format = True
    options.verbose = False
    try:
        words = ExpressionDescriptor(expression, options).get_description()
    except (FormatException, ValueError, KeyError, IndexError):
        return expression
    fields = expression.split()
    # cron-descriptor leaves "every day" out; people reading "At 03:00" wonder whether it is daily.
    if len(fields) == 5 and fields[2:] == ["*", "*", "*"] and words.startswith("At ") and "," not in words:
        words += ", every day"
    return words


# --- checks of single values ------------------------------------------------------------------------


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


def _integer(low: int, high: int, unit: str = "") -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"Must be an integer{unit}."
        if not low <= value <= high:
            return f"Must be between {low} and {high}."
        return None

    return check


def _http_url_error(value: Any) -> str | None:
    if not isinstance(value, str):
        return "Must be a string: empty, or an http(s) URL."
    if value == "":
        return None
    if len(value) > URL_MAX or any(ch.isspace() or ord(ch) < 32 for ch in value):
        return "Must be an http(s) URL."
    try:
        parts = urlsplit(value)
    except ValueError:
        return "Must be an http(s) URL."
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return "Must be an http(s) URL."
    return None


def _list_of(item: Check, what: str) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, list):
            return f"Must be a list of {what}."
        if len(value) > LIST_MAX:
            return f"At most {LIST_MAX} entries."
        for index, entry in enumerate(value):
            problem = item(entry)
            if problem:
                return f"Entry {index + 1}: {problem}"
        if len({repr(entry) for entry in value}) != len(value):
            return "Entries must not repeat."
        return None

    return check


def _email_error(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > 254 or not EMAIL.match(value):
        return "Must be an e-mail address."
    return None


def _apprise_url_error(value: Any) -> str | None:
    """An Apprise URL (`tgram://…`, `slack://…`, `json://…`) or the masked form the API gave out."""
    if not isinstance(value, str) or not value or len(value) > URL_MAX:
        return "Must be an Apprise URL such as tgram://token/chat or ntfy://topic."
    has_scheme = re.match(r"^[A-Za-z][A-Za-z0-9+.-]{0,31}://.", value)
    if any(ch.isspace() or ord(ch) < 32 for ch in value) or not has_scheme:
        return "Must be an Apprise URL such as tgram://token/chat or ntfy://topic."
    return None


def _age_recipient_error(value: Any) -> str | None:
    """The shape first, then the key itself (its bech32 checksum): a typo in a pasted key would
    otherwise only show when the first upload fails. A private key pasted by mistake gets its own
    words, and no value is ever echoed into the answer."""
    problems = recipient_problems([value])
    if problems:
        text = problems[0].removeprefix("encryptionRecipients[0] ")
        return text[:1].upper() + text[1:] + "."
    if not AGE_RECIPIENT.match(value):
        return "Must be an age public key (age1…, 62 characters)."
    return None


def _endpoint_error(value: Any) -> str | None:
    problem = _http_url_error(value)
    if problem or not value:
        return problem
    parts = urlsplit(value)
    if parts.username or parts.password:
        return "Must not hold credentials: they come from the environment (OFFSITE_ACCESS_KEY_ID, …)."
    if parts.query or parts.fragment:
        return "Must be the store's base URL, without a query or fragment."
    return None


def _bucket_error(value: Any) -> str | None:
    if not isinstance(value, str):
        return "Must be a string."
    if value and (not BUCKET.match(value) or ".." in value):
        return "Must be an S3 bucket name: 3-63 characters, a-z 0-9 . -"
    return None


def _prefix_error(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > 200:
        return "Must be a string of at most 200 characters."
    if value.startswith("/") or any(part in ("..", ".") for part in value.split("/")):
        return "Must be a relative key prefix without '.' or '..' parts, e.g. 'beauty/production'."
    if any(ord(ch) < 32 or ch == "\\" for ch in value):
        return "Must not contain control characters or backslashes."
    return None


def _short_text(limit: int) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, str) or len(value) > limit or any(ch.isspace() for ch in value):
            return f"Must be a string of at most {limit} characters without spaces."
        return None

    return check


def _choice(choices: tuple[str, ...]) -> Check:
    def check(value: Any) -> str | None:
        if value not in choices:
            return "Must be one of: " + ", ".join(repr(choice) for choice in choices) + "."
        return None

    return check


# Every key of the document with the check of its value; nested documents are dicts of checks.
SCHEMA: dict[str, Any] = {
    "enabled": _check_bool,
    "schedule": _schedule_error,
    "retention": RETENTION_CHECKS,
    "scheduleRetries": {"count": _integer(0, 10), "delayMinutes": _integer(1, 1440, " (minutes)")},
    "compression": _check_bool,
    "compressionLevel": _integer(1, 19),
    "encryption": _check_bool,
    "encryptionRecipients": _list_of(_age_recipient_error, "age public keys"),
    "encryptLocal": _check_bool,
    "notifications": {
        "email": _check_bool,
        "webhook": _http_url_error,
        "emailRecipients": _list_of(_email_error, "e-mail addresses"),
        "urls": _list_of(_apprise_url_error, "Apprise URLs"),
        "healthcheckUrl": _http_url_error,
        "staleAfterHours": _integer(0, 8760, " (hours; 0 switches the alert off)"),
        "onSuccess": _check_bool,
    },
    "verification": {"deep": _check_bool},
    "offsite": {
        "enabled": _check_bool,
        "endpoint": _endpoint_error,
        "bucket": _bucket_error,
        "prefix": _prefix_error,
        "region": _short_text(64),
        "storageClass": _choice(STORAGE_CLASSES),
    },
    "components": {key: _check_bool for key in COMPONENT_KEYS},
}


def _validate(value: Any, schema: dict[str, Any], required: Any, partial: bool) -> Errors:
    if not isinstance(value, dict):
        return {"non_field_errors": ["Must be a JSON object."]}
    errors: Errors = {}
    for key in value:
        if key not in schema:
            errors[key] = ["Unknown field."]
    for key, check in schema.items():
        if key not in value:
            needed = required is True or (isinstance(required, dict | set) and key in required)
            if not partial and needed:
                errors[key] = ["This field is required."]
            continue
        if isinstance(check, dict):
            inner = required.get(key, False) if isinstance(required, dict) else required is True
            nested = _validate(value[key], check, inner, partial)
            if nested:
                errors[key] = nested
        else:
            message = check(value[key])
            if message:
                errors[key] = [message]
    return errors


def _cross_checks(document: dict[str, Any]) -> Errors:
    """Rules between keys, judged on the whole (merged) document."""
    errors: Errors = {}
    recipients = document["encryptionRecipients"]
    if document["encryption"] and not recipients:
        errors["encryption"] = ["Encryption needs at least one age public key in encryptionRecipients."]
    if document["encryptLocal"]:
        # The folder stays exactly as the script wrote it: verification, restore, downloads and the
        # script's own `latest` link read it. Encryption at rest is the off-site copy's.
        errors["encryptLocal"] = [
            "Encrypting the local copy in place is not supported: backup folders stay as the script "
            "wrote them. Set encryptionRecipients and enable offsite for encrypted copies."
        ]
    offsite = document["offsite"]
    if offsite["enabled"] and not offsite["bucket"]:
        errors["offsite"] = {"bucket": ["Required when off-site copies are enabled."]}
    notifications = document["notifications"]
    if notifications["email"] and not notifications["emailRecipients"]:
        errors["notifications"] = {"emailRecipients": ["E-mail notifications need at least one recipient."]}
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
    merged into it; without, it must hold every original key (PUT) and the new ones default."""
    partial = current is not None
    errors = _validate(document, SCHEMA, ORIGINAL_KEYS, partial)
    if errors:
        raise ConfigInvalid(errors)
    merged = _merge(current if partial else default_document(), document)
    errors = _cross_checks(merged)
    if errors:
        raise ConfigInvalid(errors)
    return merged


def validate_part(key: str, value: Any, *, current: dict[str, Any]) -> dict[str, Any]:
    """One sub-document (`retention`, say) checked as a PATCH of the current one; its merged value."""
    return validate({key: value}, current=current)[key]


def upgrade(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored document completed with the defaults of keys added since it was written."""
    return _merge(DEFAULT_CONFIG, stored if isinstance(stored, dict) else {})  # _merge copies


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
