"""Refusals raised by services and selectors. They know nothing of HTTP: the API maps each kind to its
status code, the admin to a message, the CLI to an exit status."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A refused operation. `extra` carries what the caller may show beside the message (e.g. the run
    that is in the way)."""

    status_code = 400

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409
