"""The request id that ties a request's log lines together (JSON logs on stdout and in SERVICE_LOG)."""

from __future__ import annotations

import contextvars
import logging

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):  # an explicit extra={"request_id": ...} wins
            record.request_id = request_id.get() or None
        return True


class DropColourMessage(logging.Filter):
    """uvicorn adds a `color_message` copy of each message with terminal colours: noise in a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True
