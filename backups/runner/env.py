"""The environment a script (or job process) runs with: the service's own, minus the service's secrets."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["SERVICE_SECRETS", "build_env", "is_service_secret"]

SERVICE_SECRETS: tuple[str, ...] = (
    "SECRET_KEY",
    "JWT_SECRET",
    "DATABASE_URL",
    "REDIS_URL",
    "METRICS_TOKEN",
    "WEBHOOK_SECRET",
    "EMAIL_*",
    "OFFSITE_*",
    "RESTORE_*",
)
"""Variables of the service's environment that a script never sees.

Exact names, and prefixes written with a trailing ``*`` (``EMAIL_*`` is every variable whose name starts with
``EMAIL_``; names are case-sensitive, as the kernel's are). These are the credentials of the service itself:
Django's signing key, the JWT verification secret, the database and Redis URLs (with their passwords), the
metrics token, the webhook signing secret, the e-mail transport, the off-site storage keys and age identity,
and the restore targets. A script that needs one of them gets it from its own configuration, not from us.
"""

_EXACT = frozenset(name for name in SERVICE_SECRETS if not name.endswith("*"))
_PREFIXES = tuple(name[:-1] for name in SERVICE_SECRETS if name.endswith("*"))


def is_service_secret(name: str) -> bool:
    """True if ``name`` is listed in SERVICE_SECRETS (exactly, or by one of its prefixes)."""
    return name in _EXACT or name.startswith(_PREFIXES)


def build_env(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """``base`` (usually os.environ) minus SERVICE_SECRETS, + ``extra`` + ``PYTHONUNBUFFERED=1``.

    Only ``base`` is filtered: what the caller puts in ``extra`` is passed as given (a job process that needs
    one credential names it there). Keys and values must be str. PYTHONUNBUFFERED makes Python helpers of the
    script write line by line instead of in 8 KiB blocks, otherwise "live" output would arrive in bursts or
    only at the end.
    """
    env: dict[str, str] = {}
    for source, filtered in ((base, True), (extra, False)):
        for key, value in source.items():
            # Fail here with the offending key rather than with a vague TypeError deep inside Popen; name the
            # value's type only, the value may be a credential.
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"environment entries must be str, got {key!r}={type(value).__name__}")
            if filtered and is_service_secret(key):
                continue
            env[key] = value
    env["PYTHONUNBUFFERED"] = "1"
    return env
