"""A minimal Engine.IO v4 long-polling peer over the ASGI application, in-process: enough to check the
server's rules (Origin, auth, deadlines, acks) in milliseconds. The real client, `socket.io-client`,
is driven against real servers in test_socketio_client.py."""

from __future__ import annotations

import json
from typing import Any

from asgiref.testing import ApplicationCommunicator

RECORD_SEPARATOR = "\x1e"


class EngineIOPeer:
    def __init__(
        self,
        application: Any,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        scheme: str = "http",
        host: str = "127.0.0.1:6027",
    ) -> None:
        self.application = application
        self.headers = [(b"host", host.encode()), *(headers or [])]
        self.scheme = scheme
        self.sid: str | None = None
        self.pending: list[str] = []
        self.open_packet: dict[str, Any] = {}

    async def request(
        self, method: str, body: bytes = b"", timeout: float = 3
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        query = "EIO=4&transport=polling" + (f"&sid={self.sid}" if self.sid else "")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": self.scheme,
            "path": "/backup-ws/",
            "raw_path": b"/backup-ws/",
            "query_string": query.encode(),
            "headers": self.headers
            + (
                [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
                if body
                else []
            ),
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 6027),
        }
        communicator = ApplicationCommunicator(self.application, scope)
        await communicator.send_input({"type": "http.request", "body": body, "more_body": False})
        start = await communicator.receive_output(timeout)
        chunks = []
        while True:
            message = await communicator.receive_output(timeout)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await communicator.wait(timeout)
        return start["status"], dict(start.get("headers", [])), b"".join(chunks)

    async def open(self) -> int:
        """The handshake; the HTTP status (200 when the server accepted the peer)."""
        status, _, body = await self.request("GET")
        if status == 200:
            text = body.decode()
            assert text.startswith("0"), text
            self.open_packet = json.loads(text[1:])
            self.sid = self.open_packet["sid"]
        return status

    async def send(self, *packets: str) -> int:
        status, _, _ = await self.request("POST", RECORD_SEPARATOR.join(packets).encode())
        return status

    async def connect(self, auth: dict[str, Any] | None = None) -> None:
        """Opens the engine and the default namespace (`40`), waits for the server's `40{sid}`."""
        assert await self.open() == 200
        await self.send("40" + (json.dumps(auth) if auth is not None else ""))
        packet = await self.next_packet()
        assert packet.startswith("40"), packet

    async def emit(self, event: str, *args: Any, ack_id: int | None = None) -> None:
        await self.send(f"42{'' if ack_id is None else ack_id}" + json.dumps([event, *args]))

    async def next_packet(self, timeout: float = 3) -> str:
        while not self.pending:
            status, _, body = await self.request("GET", timeout=timeout)
            if status != 200:
                return f"http {status}"
            self.pending = [p for p in body.decode().split(RECORD_SEPARATOR) if p and p != "6"]
        return self.pending.pop(0)

    async def next_event(self, timeout: float = 3) -> tuple[str, Any]:
        """The next Socket.IO event as (name, first argument); ('ack', args) for an ack, ('disconnect', None)
        for a DISCONNECT packet, ('close', None) when the engine was closed."""
        while True:
            packet = await self.next_packet(timeout)
            if packet.startswith("42"):
                name, *args = json.loads(packet[2:])
                return name, args[0] if args else None
            if packet.startswith("43"):
                body = packet[2:]
                return "ack", json.loads(body[body.index("[") :])
            if packet.startswith("41"):
                return "disconnect", None
            if packet == "1" or packet.startswith("http "):
                return "close", packet
            # pings ("2") and anything else are not what the tests wait for
            if packet == "2":
                await self.send("3")
