"""ASGI middleware in front of Django for what Django cannot do before it is too late.

* **Bodies are bounded before they are read.** Django's ASGI handler reads the whole body (into memory,
  then a temporary file) before any middleware or view runs, so a 499 MB upload was on disk before its
  401. A `Content-Length` above `MAX_REQUEST_BYTES` is answered 413 at once, without reading a byte of
  the body; a chunked body is counted as it arrives and cut off at the limit.
* **A download that can no longer keep its Content-Length** (`StreamAborted`) ends without completing
  the response, so the server closes the connection and the client sees a failed transfer.

Every answer given here is JSON, like the rest of the API."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings

logger = logging.getLogger("backups.request")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class StreamAborted(Exception):
    """Raised by a streaming body that can no longer match its headers: the connection must drop."""


async def send_json(send: Send, status: int, detail: str, *, close: bool = True) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        # The unread body must not be taken for the next request on a kept-alive connection.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None | str:
    """The declared length; None when absent; "invalid" when malformed or ambiguous."""
    values = {value.strip() for name, value in scope.get("headers", ()) if name.lower() == b"content-length"}
    if not values:
        return None
    if len(values) > 1:
        return "invalid"
    raw = values.pop()
    if not raw.isdigit() or len(raw) > 18:
        return "invalid"
    return int(raw)


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = settings.MAX_REQUEST_BYTES
        declared = _content_length(scope)
        if declared == "invalid":
            await send_json(send, 400, "Malformed Content-Length header.")
            return
        if isinstance(declared, int) and declared > limit:
            await send_json(send, 413, f"Request body too large: at most {limit} bytes are accepted.")
            return

        received = 0
        too_large = False
        started = False

        async def guarded_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Django sees a client that went away, and answers nothing; the 413 is sent below.
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except StreamAborted:
            if not started:
                raise
            # Returning with the response incomplete makes the server close the connection.
            return
        if too_large and not started:
            await send_json(send, 413, f"Request body too large: at most {limit} bytes are accepted.")
