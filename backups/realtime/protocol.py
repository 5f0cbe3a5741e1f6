"""The frames of the WebSocket protocol (the README's "WebSocket" section), pure: what a client may
send, what the server answers. Every transport builds its frames here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_LAYER_DOWN = 1011

MAX_FRAME_CHARS = 65536

AUTHENTICATE = "authenticate"
SUBSCRIBE = "subscribe-backup-events"
GET_STATUS = "get-realtime-status"
CLIENT_EVENTS = (AUTHENTICATE, SUBSCRIBE, GET_STATUS)

LAYER_DOWN = "live events are unavailable right now; reconnect in a few seconds"
MALFORMED = 'malformed frame: expected {"event": "<name>", "data": {...}}'
AUTH_TIMED_OUT = "authentication timed out"
AUTH_FIRST = "authenticate first"
AUTH_NEEDS_TOKEN = "authenticate needs a token"
AUTH_REQUIRED = "authentication required"
SUPER_ADMIN_REQUIRED = "the SUPER_ADMIN role is required"

# Socket.IO keeps its connection through a channel-layer outage (its fan-out re-attaches by itself), so
# it says so instead of asking for a reconnect.
MALFORMED_EVENT = "malformed event: expected one object argument (and an optional ack)"
LAYER_DOWN_RESUMING = "live events are unavailable right now; they resume by themselves, no reconnect needed"
LAYER_BACK = "live events are back; those of the outage were missed (get-realtime-status has the state)"


@dataclass(frozen=True)
class Frame:
    event: str
    data: dict[str, Any]


def frame(event: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"event": event, "data": data or {}}


def error_frame(message: str) -> dict[str, Any]:
    """The one shape of an error the server sends."""
    return frame("error", {"message": message})


def parse(text: str | None) -> Frame | None:
    """A client frame, or None when it is not `{"event": str, "data": object|null}` (too long, not
    JSON, deeply nested, wrong types)."""
    if text is None or len(text) > MAX_FRAME_CHARS:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # deeply nested JSON is as malformed as broken JSON
        return None
    if not isinstance(value, dict):
        return None
    event, data = value.get("event"), value.get("data", {})
    if not isinstance(event, str) or not isinstance(data, dict | type(None)):
        return None
    return Frame(event=event, data=data or {})


def event_name_of(text: str | None) -> str | None:
    """The event a frame names even when the rest of it is malformed (to tell `authenticate` apart)."""
    try:
        value = json.loads(text) if text is not None and len(text) <= MAX_FRAME_CHARS else None
    except (ValueError, RecursionError):
        return None
    return value.get("event") if isinstance(value, dict) and isinstance(value.get("event"), str) else None


def invalid_token(reason: str) -> str:
    return f"invalid token: {reason}"


def unknown_event(event: str) -> dict[str, Any]:
    return error_frame(f"unknown event: {event[:100]}")
