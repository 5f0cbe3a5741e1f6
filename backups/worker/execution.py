"""Following one running script: its environment, its output, its progress, its folder, its end."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from django.conf import settings
from django.db import DatabaseError

from backups import events, runner
from backups.catalogue import scan
from backups.catalogue.paths import BackupNotFound, CatalogueError, check_backup, list_entry_names
from backups.config import document as config_document
from backups.config.selectors import config_current
from backups.runs import outcome, progress
from backups.runs.models import Run, RunStatus
from backups.runs.selectors import expected_duration
from backups.runs.services import run_save_progress, run_set_backup, run_set_process

if TYPE_CHECKING:
    from backups.worker.loop import Worker

logger = logging.getLogger(__name__)

T = TypeVar("T")

PROGRESS_SAVE_SECONDS = 1.0
CANCEL_CHECK_SECONDS = 0.5
MESSAGE_EVENT_SECONDS = 0.05
ERROR_LINES_KEPT = 40


class RunExecution:
    """The state of one running script: progress, its folder, its error lines."""

    def __init__(self, worker: Worker, run: Run) -> None:
        self.worker = worker
        self.run = run
        self.root = Path(settings.BACKUP_ROOT)
        self.tracker = progress.ProgressTracker(expected_duration=expected_duration())
        self.output = runner.OutputBuffer(head_lines=200, tail_lines=1000)
        self.error_lines: deque[str] = deque(maxlen=ERROR_LINES_KEPT)
        self.folders_before: set[str] = set()
        self.folder_named: str | None = None
        self.last_saved = 0.0
        self.last_event = 0.0
        self.last_cancel_check = 0.0
        self.published: tuple[int, str, str] | None = None
        self.cancelled = False
        self.disk_full = False
        self.lease_lost = False
        self.failing_writes: set[str] = set()

    def execute(self) -> Run:
        document = config_current()
        with contextlib.suppress(OSError):  # the script reports an unusable root better than we can
            self.root.mkdir(parents=True, exist_ok=True)
        self.folders_before = {folder.name for folder in scan.list_folders(self.root)}
        env = runner.build_env(
            os.environ,
            {
                "BACKUP_RUN_ID": str(self.run.id),
                "BACKUP_TYPE": self.run.type,
                "BACKUP_DESCRIPTION": self.run.description,
                "BACKUP_ROOT": str(self.root),
                "BACKUP_SCRIPT_LOG": str(settings.BACKUP_SCRIPT_LOG),
                "BACKUP_COMPONENTS": ",".join(config_document.enabled_components(document)),
                "BACKUP_COMPRESSION": "1" if document["compression"] else "0",
                "BACKUP_COMPRESSION_LEVEL": str(settings.BACKUP_COMPRESSION_LEVEL),
            },
        )
        self.publish(force=True)
        script_dir = Path(settings.BACKUP_SCRIPT).parent
        result = runner.run_script(
            settings.BACKUP_SCRIPT,
            env=env,
            cwd=script_dir if script_dir.is_dir() else None,  # a missing dir: say the script is missing
            timeout=settings.BACKUP_RUN_TIMEOUT,
            on_start=self.on_start,
            on_lines=self.on_lines,
            on_tick=self.on_tick,
            should_stop=self.should_stop,
            tick_seconds=0.25,
            kill_grace_seconds=settings.BACKUP_KILL_GRACE_SECONDS,
            output=self.output,
        )
        self.discover_folder()
        if result.reason == runner.EndReason.SPAWN_FAILED:
            logger.error("backup script could not be started: %s", result.error)
        end = outcome.outcome(
            result,
            outcome.Circumstances(
                error_lines=tuple(self.error_lines),
                disk_full=self.disk_full,
                lease_lost=self.lease_lost,
                timeout_seconds=settings.BACKUP_RUN_TIMEOUT,
                shutdown_grace_seconds=settings.SHUTDOWN_GRACE_SECONDS,
                script_dir=str(script_dir),
                backup_root=str(self.root),
            ),
            output=self.output_text(),
            output_lines=self.output.total_lines,
        )
        final = self.tracker.finish(end.status == RunStatus.SUCCEEDED)
        stage = final.stage if end.status in (RunStatus.SUCCEEDED, RunStatus.FAILED) else end.status
        return self.worker.finish(self.run, end, final.percent, stage, self.public(final.message))

    def output_text(self) -> str:
        pairs = self.output.lines()
        head = len(pairs) if not self.output.dropped_lines else min(len(pairs), self.output.head_lines)
        rendered = [f"{stream}: {line}" for stream, line in pairs]
        if self.output.dropped_lines:
            rendered.insert(head, f"out: … {self.output.dropped_lines} lines omitted …")
        return "\n".join(rendered)

    # --- runner callbacks (all on the worker's thread) --------------------------------------------

    def on_start(self, pid: int) -> None:
        self.tolerate("the script's process group", lambda: run_set_process(run=self.run, pgid=pid))

    def on_lines(self, batch: list[tuple[str, str]]) -> None:
        # Called for every chunk the script prints (a million lines a run is possible): look at the
        # batch as one text first, and only walk its lines for what the text may hold.
        lowered = "\n".join(line for _, line in batch).lower()
        if progress.may_hold(progress.MARKER_HINTS, lowered):
            for _, line in batch:
                if progress.may_hold(progress.MARKER_HINTS, line.lower()):
                    self.tracker.feed_line(line)
        self.tracker.feed_line(batch[-1][1])  # the newest line is the message
        if progress.may_hold(progress.ERROR_HINTS, lowered) or any(stream == "err" for stream, _ in batch):
            for stream, line in batch:
                if (stream == "err" and line.strip()) or progress.is_error_line(line):
                    self.note_error(line)
        if self.folder_named is None and "backup-" in lowered:
            for _, line in batch:
                name = progress.find_backup_folder(line) if "backup-" in line else None
                if name and name not in self.folders_before:
                    self.folder_named = name
                    break
        if not self.run.backup_id and self.folder_named:
            self.discover_folder()
        self.publish()

    def note_error(self, line: str) -> None:
        cleaned = progress.clean_line(line)
        if cleaned:
            self.error_lines.append(cleaned[:500])
            if "no space left on device" in cleaned.lower():
                self.disk_full = True

    def on_tick(self, elapsed: float) -> None:
        if not self.run.backup_id:
            self.discover_folder()
        if self.run.backup_id and not self.tracker.saw_markers:
            try:
                present = list_entry_names(self.root, self.run.backup_id)
            except CatalogueError:
                present = []
            self.tracker.feed_artifacts(present)
            self.tracker.feed_elapsed(elapsed)
        holding = self.tolerate_value("the worker lease", self.worker.hold_lease, default=True)
        if not holding:
            # Another worker holds the lease now and will treat this run as orphaned: stop the script
            # rather than let two backups run at once.
            self.lease_lost = True
        self.tolerate("the schedule", self.worker.schedule_tick)
        self.publish()

    def should_stop(self) -> runner.EndReason | None:
        if self.lease_lost:
            return runner.EndReason.SHUTDOWN
        deadline = self.worker.shutdown_deadline
        if deadline is not None and time.monotonic() >= deadline:
            return runner.EndReason.SHUTDOWN
        now = time.monotonic()
        if now - self.last_cancel_check >= CANCEL_CHECK_SECONDS:
            self.last_cancel_check = now
            self.cancelled = self.tolerate_value(
                "the cancel flag",
                lambda: Run.objects.filter(id=self.run.id, cancel_requested=True).exists(),
                default=self.cancelled,
            )
        return runner.EndReason.CANCELLED if self.cancelled else None

    # --- helpers ----------------------------------------------------------------------------------

    def discover_folder(self) -> None:
        """The run's folder: the one the script named, else the one that appeared in the root."""
        if self.run.backup_id:
            return
        candidates = []
        if self.folder_named:
            candidates.append(self.folder_named)
        appeared = sorted(f.name for f in scan.list_folders(self.root) if f.name not in self.folders_before)
        candidates.extend(reversed(appeared))
        for name in candidates:
            try:
                check_backup(self.root, name)
            except BackupNotFound:
                continue
            if not self.tolerate("the run's folder", partial(run_set_backup, run=self.run, backup_id=name)):
                self.run.backup_id = ""  # not recorded: found again on the next tick
            return

    def publish(self, force: bool = False) -> None:
        """Progress to the clients (coalesced in `events`) and, less often, to the database."""
        state = self.tracker.current
        key = (state.percent, state.stage, state.message)
        message = self.public(state.message)
        now = time.monotonic()
        changed = key != self.published
        if changed and (
            force
            or self.published is None
            or key[:2] != self.published[:2]
            or now - self.last_event >= MESSAGE_EVENT_SECONDS
        ):
            events.broadcast(
                events.BACKUP_PROGRESS,
                events.progress_payload(
                    str(self.run.id), self.run.backup_id, state.percent, state.stage, message
                ),
            )
            self.published = key
            self.last_event = now
        if force or now - self.last_saved >= PROGRESS_SAVE_SECONDS:
            # A failed write is dropped, and the next one is tried after the usual interval; the final
            # state is written by run_finish whatever happened here.
            self.tolerate("progress", self.save_progress)
            self.last_saved = now

    def save_progress(self) -> None:
        state = self.tracker.current
        message = self.public(state.message)
        run_save_progress(run=self.run, percent=state.percent, stage=state.stage, message=message)
        Run.objects.filter(id=self.run.id).update(
            output=self.output_text(), output_lines=self.output.total_lines
        )

    def public(self, text: str) -> str:
        """A line of the script as every client may read it: no path outside the backup root."""
        return outcome.scrub_paths(text, str(self.root)) if "/" in text else text

    def tolerate(self, what: str, write: Callable[[], object]) -> bool:
        """Run a database call the backup can do without: if the database refuses it (an outage, a full
        disk, a lock held too long), log it once per streak of failures and let the script go on, rather
        than let the exception end the run. True when it succeeded."""
        try:
            write()
        except DatabaseError:
            if what not in self.failing_writes:
                logger.warning(
                    "could not save %s; the backup goes on and it is tried again", what, exc_info=True
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
