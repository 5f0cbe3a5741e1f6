"""What following a run under the runner's supervisor takes, whatever runs: the script of a backup or the
process of a job. The worker's lease, its shutdown, a cancel, and finding the run again after a restart."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from django.conf import settings
from django.db import DatabaseError

from backups import runner
from backups.runs.models import Run

if TYPE_CHECKING:
    from backups.worker.loop import Worker

logger = logging.getLogger(__name__)
T = TypeVar("T")

CANCEL_CHECK_SECONDS = 0.5
TICK_SECONDS = 0.25


class RunLost(Exception):
    """Neither a live process nor an exit status: the run cannot be followed again."""

    def __init__(self, gone: runner.Gone) -> None:
        super().__init__("the run's supervisor is gone and recorded no exit status")
        self.gone = gone


class Following:
    """The base of RunExecution (backups) and JobExecution (the other kinds)."""

    output: runner.OutputBuffer

    def __init__(self, worker: Worker, run: Run) -> None:
        self.worker = worker
        self.run = run
        self.lease_lost = False
        self.cancelled = False
        self.last_cancel_check = 0.0
        self.failing_writes: set[str] = set()

    def timeout_seconds(self) -> int:
        return settings.BACKUP_RUN_TIMEOUT

    def follow_options(self) -> dict[str, Any]:
        return {
            "timeout": self.timeout_seconds(),
            "on_lines": self.on_lines,
            "on_tick": self.on_tick,
            "should_stop": self.should_stop,
            "tick_seconds": TICK_SECONDS,
            "kill_grace_seconds": settings.BACKUP_KILL_GRACE_SECONDS,
            "output": self.output,
        }

    def attach(self) -> runner.RunResult:
        """Follow again a run a previous worker started (its output read again from the start)."""
        result = runner.attach(settings.BACKUP_STATE_DIR, str(self.run.id), **self.follow_options())
        if isinstance(result, runner.Gone):
            raise RunLost(result)
        return result

    def on_lines(self, batch: list[tuple[str, str]]) -> None:
        raise NotImplementedError

    def on_tick(self, elapsed: float) -> None:
        if not self.tolerate_value("the worker lease", self.worker.hold_lease, default=True):
            # Another worker holds the lease now and will treat this run as orphaned: end it rather than
            # let two runs go on at once.
            self.lease_lost = True
        self.tolerate("the schedule", self.worker.schedule_tick)

    def should_stop(self) -> runner.EndReason | None:
        if self.lease_lost:
            return runner.EndReason.SHUTDOWN
        deadline = self.worker.shutdown_deadline
        if deadline is not None and time.monotonic() >= deadline:
            # The service stops, the run does not: its supervisor keeps writing, the next worker follows.
            return runner.EndReason.DETACHED
        now = time.monotonic()
        if now - self.last_cancel_check >= CANCEL_CHECK_SECONDS:
            self.last_cancel_check = now
            self.cancelled = self.tolerate_value(
                "the cancel flag",
                lambda: Run.objects.filter(id=self.run.id, cancel_requested=True).exists(),
                default=self.cancelled,
            )
        return runner.EndReason.CANCELLED if self.cancelled else None

    def tolerate(self, what: str, write: Callable[[], object]) -> bool:
        """Run a database call the run can do without: if the database refuses it (an outage, a full
        disk, a lock held too long), log it once per streak of failures and let the run go on, rather
        than let the exception end it. True when it succeeded."""
        try:
            write()
        except DatabaseError:
            if what not in self.failing_writes:
                logger.warning(
                    "could not save %s; the run goes on and it is tried again", what, exc_info=True
                )
            self.failing_writes.add(what)
            return False
        if what in self.failing_writes:
            self.failing_writes.discard(what)
            logger.info("saving %s works again", what)
        return True

    def tolerate_value(self, what: str, read: Callable[[], T], *, default: T) -> T:
        result: list[T] = []
        return result[0] if self.tolerate(what, lambda: result.append(read())) else default
