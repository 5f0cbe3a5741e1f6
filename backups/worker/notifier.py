"""The worker's notification thread: writes the outbox rows runs leave owed, raises the stale alert and
delivers what is due, beside the loop that runs backups, so a receiver that takes 10 s to time out
never holds a backup back (nor a backup a `/start` ping). It runs only while its worker holds the
lease: one deployment, one sender."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import close_old_connections, connection

from backups.notifications.step import check_stale, deliver_due, notify_after_runs

if TYPE_CHECKING:
    from backups.worker.loop import Worker

logger = logging.getLogger(__name__)

STALE_CHECK_SECONDS = 60.0


class Notifier:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.thread: threading.Thread | None = None
        self.last_stale_check = 0.0

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def ensure_running(self) -> None:
        if self.worker.holding and not self.worker.stopping.is_set() and not self.running:
            self.thread = threading.Thread(target=self.run, name="notifications", daemon=True)
            self.thread.start()

    def stop(self, timeout: float) -> None:
        """The worker is stopping (its `stopping` is set): let an attempt under way finish."""
        if self.thread is not None:
            self.thread.join(timeout)

    def should_stop(self) -> bool:
        return self.worker.stopping.is_set() or not self.worker.holding

    def stale_check(self) -> bool:
        if time.monotonic() - self.last_stale_check < STALE_CHECK_SECONDS:
            return False
        self.last_stale_check = time.monotonic()
        check_stale()
        return False  # upkeep: no reason to skip the pause

    def steps(self) -> tuple[Callable[[], bool], ...]:
        return (notify_after_runs, self.stale_check, lambda: deliver_due(should_stop=self.should_stop))

    def run(self) -> None:
        logger.info("notification thread started", extra={"worker": self.worker.id})
        try:
            while not self.should_stop():
                found = False
                try:
                    for step in self.steps():
                        if self.should_stop():
                            break
                        found = step() or found
                except Exception:
                    logger.exception("notification step failed")
                finally:
                    close_old_connections()
                if not found:
                    self.worker.stopping.wait(settings.WORKER_POLL_SECONDS)
        finally:
            connection.close()
            logger.info("notification thread stopped", extra={"worker": self.worker.id})
