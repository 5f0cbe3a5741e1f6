"""How `serve` runs uvicorn: the HTTP protocol and the limits that protect the process.

* **h11, not httptools**: only h11 bounds what it buffers while waiting for the end of the headers
  (`MAX_HEADER_BYTES`); httptools accepted a 64 MB header line (ten such connections took the process
  from 112 MB to 821 MB).
* **A header deadline**: uvicorn arms its keep-alive timer only after a response, so a connection that
  trickles its request line a byte at a time was held for ever (5,000 of them at once). Here every
  connection must complete its headers within `HEADER_TIMEOUT_SECONDS` of opening, or of its previous
  response, or it is closed.
* **Errors the parser answers are JSON** like every other error of the API.
* **Forwarded headers** are applied only with `BEHIND_PROXY=1`, and only from `FORWARDED_ALLOW_IPS`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
import uvicorn
from django.conf import settings
from uvicorn.protocols.http.h11_impl import H11Protocol


class GuardedH11Protocol(H11Protocol):
    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is None and self.conn.their_state is h11.IDLE:
            # The first bytes of a next request on a kept-alive connection: uvicorn just dropped its
            # keep-alive timer, so this deadline is all that bounds the headers now.
            self._arm_header_deadline()
        if self.conn.their_state is h11.IDLE:
            self._header_bytes += len(data)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_deadline()  # headers complete (or the connection failed / upgraded)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_bytes = 0
        self._header_deadline = self.loop.call_later(self.header_timeout, self._header_deadline_passed)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this for every parse error; headers beyond the bound are the 431 among them.
        status, detail = 400, "Invalid HTTP request."
        if self._header_bytes > (self.config.h11_max_incomplete_event_size or 16 * 1024):
            status, detail = 431, "Request headers too large."
        body = json.dumps({"detail": detail}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            reason = b"Request Header Fields Too Large" if status == 431 else b"Bad Request"
            response = h11.Response(status_code=status, headers=headers, reason=reason)
            self.transport.write(self.conn.send(response))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            pass  # a response was already under way: just close
        self.transport.close()


def _protocol_class() -> type[GuardedH11Protocol]:
    # A subclass per configuration: uvicorn instantiates the class itself, once per connection.
    timeout = float(settings.HEADER_TIMEOUT_SECONDS)
    return type("ServeH11Protocol", (GuardedH11Protocol,), {"header_timeout": timeout})


def uvicorn_config(app: Any, *, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "http": _protocol_class(),
        "h11_max_incomplete_event_size": settings.MAX_HEADER_BYTES,
        "limit_concurrency": settings.MAX_CONNECTIONS,
        "lifespan": "off",
        "log_config": None,
        "ws_ping_interval": settings.WS_PING_INTERVAL_SECONDS,
        "ws_ping_timeout": settings.WS_PING_INTERVAL_SECONDS,
        "ws_max_size": 1 << 20,
        "timeout_graceful_shutdown": 10,
        # uvicorn's own default trusts X-Forwarded-For from 127.0.0.1 always: a local client could then
        # choose its rate-limit bucket and its address in the audit trail.
        "proxy_headers": settings.BEHIND_PROXY,
        "forwarded_allow_ips": settings.FORWARDED_ALLOW_IPS or ["127.0.0.1", "::1"],
        "server_header": False,
        "access_log": False,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
