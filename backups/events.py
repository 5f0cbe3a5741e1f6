"""The only code that touches the channel layer: group names, broadcast(), progress coalescing.

Events are produced on plain threads (the worker, DRF's sync views) but the channel layer lives on an
event loop. Handing the coroutine to the loop that serves the WebSockets
(`run_coroutine_threadsafe`) delivers at once, where `async_to_sync` from a thread delayed in-memory
deliveries by seconds. A process without such a loop (the `backup_worker` command, `run_backup`) gets
a private loop thread; with Redis behind the layer its events still reach every server.

One publisher task per loop sends the events in the order they were produced, so a run's last
`backup-progress` never overtakes its `backup-completed`. Progress is coalesced per run to at most one
event per PROGRESS_INTERVAL seconds, always ending with the newest state: `group_send` drops messages
silently when a channel is full, and a script printing thousands of lines a second would fill it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

logger = logging.getLogger(__name__)

GROUP = "backup-events"
PROGRESS_INTERVAL = 0.05

BACKUP_PROGRESS = "backup-progress"
BACKUP_COMPLETED = "backup-completed"
BACKUP_ERROR = "backup-error"
SYSTEM_NOTIFICATION = "system-notification"
# Runs of the other kinds (verify, restore, offsite): the same bodies plus `kind`.
JOB_PROGRESS = "job-progress"
JOB_COMPLETED = "job-completed"
JOB_ERROR = "job-error"
PROGRESS_EVENTS = (BACKUP_PROGRESS, JOB_PROGRESS)


def for_kind(kind: str, backup_event: str) -> str:
    """The event name of a run of this kind: `backup-*` for backups only, `job-*` for the others."""
    if kind == "backup":
        return backup_event
    return {BACKUP_PROGRESS: JOB_PROGRESS, BACKUP_COMPLETED: JOB_COMPLETED, BACKUP_ERROR: JOB_ERROR}[
        backup_event
    ]


class _Publisher:
    """Owns the queue of outgoing events on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        self.pending_progress: dict[str, tuple[str, dict[str, Any]]] = {}
        self.last_progress_at: dict[str, float] = {}
        self.flush_handles: dict[str, asyncio.TimerHandle] = {}
        self.idle = asyncio.Event()
        self.idle.set()
        self.task = loop.create_task(self._send_forever())

    # Everything below runs on self.loop.
    def put(self, event: str, data: dict[str, Any]) -> None:
        if event in PROGRESS_EVENTS:
            self._offer_progress(event, data)
            return
        run_id = str(data.get("run_id", ""))
        if run_id:
            self._flush_progress(run_id)
            self.last_progress_at.pop(run_id, None)
        self._enqueue(event, data)

    def _enqueue(self, event: str, data: dict[str, Any]) -> None:
        self.idle.clear()
        self.queue.put_nowait((event, data))

    def _offer_progress(self, event: str, data: dict[str, Any]) -> None:
        run_id = str(data.get("run_id", ""))
        self.pending_progress[run_id] = (event, data)
        if run_id in self.flush_handles:
            return  # a send is already scheduled; it will carry this newer state
        wait = self.last_progress_at.get(run_id, 0.0) + PROGRESS_INTERVAL - time.monotonic()
        if wait <= 0:
            self._flush_progress(run_id)
        else:
            self.flush_handles[run_id] = self.loop.call_later(wait, self._flush_progress, run_id)

    def _flush_progress(self, run_id: str) -> None:
        handle = self.flush_handles.pop(run_id, None)
        if handle is not None:
            handle.cancel()
        pending = self.pending_progress.pop(run_id, None)
        if pending is not None:
            self.last_progress_at[run_id] = time.monotonic()
            self._enqueue(*pending)

    async def _send_forever(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            event, data = item
            try:
                # Looked up per event (a dict lookup): a layer rebuilt after a settings change is used.
                layer = get_channel_layer()
                await layer.group_send(GROUP, {"type": "backup.event", "event": event, "data": data})
            except Exception:  # a Redis outage must not kill the publisher: the next event may pass
                logger.warning("could not publish %s event", event, exc_info=True)
            if self.queue.empty() and not self.flush_handles:
                self.idle.set()


_lock = threading.Lock()
_publisher: _Publisher | None = None
_private_loop: asyncio.AbstractEventLoop | None = None


def use_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Publish from this loop (the server's, where the consumers live). Called by `serve` at start-up
    and by the consumer on connect, so any ASGI server (uvicorn, daphne) and the tests work alike."""
    global _publisher
    with _lock:
        if _publisher is not None and _publisher.loop is loop and not loop.is_closed():
            return
        if loop.is_running() and _in_loop(loop):
            _publisher = _Publisher(loop)
        else:
            future = asyncio.run_coroutine_threadsafe(_make_publisher(), loop)
            _publisher = future.result(timeout=5)


async def _make_publisher() -> _Publisher:
    return _Publisher(asyncio.get_running_loop())


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _current_publisher() -> _Publisher:
    global _private_loop
    publisher = _publisher
    if publisher is not None and not publisher.loop.is_closed() and publisher.loop.is_running():
        return publisher
    with _lock:
        if _private_loop is None or _private_loop.is_closed():
            _private_loop = asyncio.new_event_loop()
            threading.Thread(target=_private_loop.run_forever, name="events-loop", daemon=True).start()
    use_loop(_private_loop)
    assert _publisher is not None
    return _publisher


def broadcast(event: str, data: dict[str, Any]) -> None:
    """Send an event to every subscribed client, from any thread, without blocking."""
    publisher = _current_publisher()
    if _in_loop(publisher.loop):
        publisher.put(event, data)
    else:
        publisher.loop.call_soon_threadsafe(publisher.put, event, data)


def broadcast_on_commit(event: str, data: dict[str, Any]) -> None:
    """What services call: the event leaves only once the change it announces is committed."""
    transaction.on_commit(lambda: broadcast(event, data))


def drain(timeout: float = 5.0) -> bool:
    """Wait until every produced event was handed to the layer (used before a process exits)."""
    publisher = _publisher
    if publisher is None or publisher.loop.is_closed():
        return True

    async def wait_idle() -> None:
        await asyncio.sleep(0)
        # Flush coalesced progress now rather than after its interval.
        for run_id in list(publisher.flush_handles):
            publisher._flush_progress(run_id)
        await publisher.idle.wait()

    if _in_loop(publisher.loop):
        raise RuntimeError("drain() would block the loop it waits for")
    try:
        asyncio.run_coroutine_threadsafe(wait_idle(), publisher.loop).result(timeout)
    except Exception:
        return False
    return True


# --- the payloads -------------------------------------------------------------------------------------


def progress_payload(
    run_id: str, backup_id: str, percent: int, stage: str, message: str, kind: str = "backup"
) -> dict[str, Any]:
    payload = {
        "run_id": run_id,
        "backup_id": backup_id or None,
        "percent": percent,
        "stage": stage,
        "message": message,
        "timestamp": timezone.now().isoformat(),
    }
    if kind != "backup":
        payload["kind"] = kind
    return payload


def notify(level: str, message: str) -> None:
    broadcast_on_commit(SYSTEM_NOTIFICATION, {"level": level, "message": message})
