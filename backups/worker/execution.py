"""Following one running script: its environment, its output, its progress, its folder, its end.

The script runs under the runner's supervisor, which keeps its output and exit status in the state
folder. So following it is only that: a worker that shuts down stops following (the script goes on), and
a worker that starts finds it again (`resume`), follows it to its end or reads how it ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from backups import events, runner
from backups.catalogue import scan
from backups.catalogue.paths import BackupNotFound, CatalogueError, check_backup, list_entry_names
from backups.config import document as config_document
from backups.config.selectors import config_current
from backups.runs import outcome, progress
from backups.runs.models import Run, RunStatus
from backups.runs.selectors import cancelled_by, expected_duration
from backups.runs.services import run_save_progress, run_set_backup, run_set_process
from backups.worker.following import Following

if TYPE_CHECKING:
    from backups.worker.loop import Worker

logger = logging.getLogger(__name__)

PROGRESS_SAVE_SECONDS = 1.0
MESSAGE_EVENT_SECONDS = 0.05
ERROR_LINES_KEPT = 40


class RunExecution(Following):
    """The state of one running script: progress, its folder, its error lines."""

    def __init__(self, worker: Worker, run: Run) -> None:
        super().__init__(worker, run)
        self.root = Path(settings.BACKUP_ROOT)
        self.tracker = progress.ProgressTracker(expected_duration=expected_duration())
        self.output = runner.OutputBuffer(head_lines=200, tail_lines=1000)
        self.error_lines: deque[str] = deque(maxlen=ERROR_LINES_KEPT)
        self.folders_before: set[str] = set()
        self.folder_named: str | None = None
        self.last_saved = 0.0
        self.last_event = 0.0
        self.published: tuple[int, str, str] | None = None
        self.disk_full = False
        self.floor_percent = 0

    def execute(self) -> Run:
        """Start the script for a claimed run and follow it to its end (or until this worker stops)."""
        document = config_current()
        with contextlib.suppress(OSError):  # the script reports an unusable root better than we can
            self.root.mkdir(parents=True, exist_ok=True)
        self.folders_before = set(scan.list_names(self.root))  # names only: no folder opened
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
                "BACKUP_COMPRESSION_LEVEL": str(document["compressionLevel"]),
            },
        )
        self.publish(force=True)
        script_dir = Path(settings.BACKUP_SCRIPT).parent
        try:
            handle = runner.spawn(
                [settings.BACKUP_SCRIPT],
                env=env,
                cwd=script_dir if script_dir.is_dir() else None,  # a missing dir: say the script is missing
                state_dir=settings.BACKUP_STATE_DIR,
                run_id=str(self.run.id),
                kill_grace_seconds=settings.BACKUP_KILL_GRACE_SECONDS,
            )
        except runner.SpawnFailed as failure:
            result = runner.RunResult(
                runner.EndReason.SPAWN_FAILED, None, failure.message, None, self.output, 0.0
            )
            return self.end(result)
        result = runner.follow(handle, on_start=self.on_start, **self.follow_options())
        return self.end(result)

    def resume(self) -> Run:
        """Follow again a run a previous worker started: to its end if the script still runs, or at once
        if it ended while nobody watched (its whole output and exit status are in the state folder)."""
        started = self.run.started_at.timestamp() if self.run.started_at else 0.0
        # Folders older than the run cannot be its own: what `discover_folder` compares against.
        self.folders_before = {
            folder.name for folder in scan.list_names(self.root).values() if folder.mtime_ns < started * 1e9
        }
        self.floor_percent = self.run.progress_percent
        result = self.attach()
        logger.info("following a run again after a restart", extra={"run_id": str(self.run.id)})
        return self.end(result)

    def end(self, result: runner.RunResult) -> Run:
        """Record how the run ended, unless this worker only stopped following it."""
        if result.reason == runner.EndReason.DETACHED:
            self.publish(force=True)
            logger.info("stopped following a running backup; it goes on", extra={"run_id": str(self.run.id)})
            events.broadcast(
                events.SYSTEM_NOTIFICATION,
                {
                    "level": "warning",
                    "message": "The backup service stopped; the running backup goes on and is followed "
                    "again when the service starts.",
                },
            )
            return self.run
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
                script_dir=str(Path(settings.BACKUP_SCRIPT).parent),
                backup_root=str(self.root),
                cancelled_by=cancelled_by(self.run.id) if result.reason == runner.EndReason.CANCELLED else "",
            ),
            output=self.output_text(),
            output_lines=self.output.total_lines,
        )
        final = self.tracker.finish(end.status == RunStatus.SUCCEEDED)
        stage = final.stage if end.status in (RunStatus.SUCCEEDED, RunStatus.FAILED) else end.status
        # A cancelled script's last line is its reaction to the signal; the message says who ended it.
        message = end.error if end.status == RunStatus.CANCELLED else self.public(final.message)
        run = self.worker.finish(self.run, end, max(final.percent, self.floor_percent), stage, message)
        if run.status != RunStatus.RUNNING:  # recorded: the supervisor's files are not needed any more
            runner.cleanup(settings.BACKUP_STATE_DIR, str(run.id))
        return run

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
        super().on_tick(elapsed)
        self.publish()

    # --- helpers ----------------------------------------------------------------------------------

    def discover_folder(self) -> None:
        """The run's folder: the one the script named, else the one that appeared in the root."""
        if self.run.backup_id:
            return
        candidates = []
        if self.folder_named:
            candidates.append(self.folder_named)
        appeared = sorted(name for name in scan.list_names(self.root) if name not in self.folders_before)
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
        # After a restart the output is read again from its start: never show less than was shown.
        state = replace(state, percent=max(state.percent, self.floor_percent))
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
