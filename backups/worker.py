"""The worker: a loop of small steps that each say whether they found work.

It holds a lease row while it works (a second worker waits until the holder stops renewing), recovers
runs a dead process left `running`, claims queued runs with a conditional update, runs the script
through `runner` with `progress` reading its output, fires the schedule, applies retention and keeps
the catalogue in sync. No transaction is held while the script runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections
from django.db.models import Q
from django.utils import timezone

from backups import catalogue, config_document, events, progress, runner, selectors, services
from backups.models import Run, RunStatus, RunType, WorkerLease

logger = logging.getLogger(__name__)

LEASE_RENEW_SECONDS = 3.0
SCHEDULE_CHECK_SECONDS = 5.0
PROGRESS_SAVE_SECONDS = 1.0
CANCEL_CHECK_SECONDS = 0.5
MESSAGE_EVENT_SECONDS = 0.05
ERROR_LINES_KEPT = 40


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Worker:
    def __init__(self, *, label: str = "worker") -> None:
        self.id = f"{label}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self.shutdown_deadline: float | None = None
        self.holding = False
        self.last_renew = 0.0
        self.last_sync = 0.0
        self.last_schedule_check = 0.0
        self.current_run: Run | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    def request_shutdown(self, grace_seconds: float) -> None:
        """Stop taking runs; a running one gets `grace_seconds` before its group is ended."""
        self.shutdown_deadline = time.monotonic() + grace_seconds
        self.stopping.set()

    def run_forever(self) -> None:
        logger.info("worker started", extra={"worker": self.id})
        try:
            while not self.stopping.is_set():
                try:
                    found = self.step()
                except Exception:
                    logger.exception("worker step failed")
                    found = False
                finally:
                    close_old_connections()
                if not found:
                    self.stopping.wait(settings.WORKER_POLL_SECONDS)
        finally:
            self.release_lease()
            logger.info("worker stopped", extra={"worker": self.id})

    def step(self) -> bool:
        if not self.hold_lease():
            return False
        self.end_own_stuck_runs()
        found = self.run_next_queued()
        self.schedule_tick()
        self.periodic_sync()
        return found

    # --- the lease --------------------------------------------------------------------------------

    def hold_lease(self, force_renew: bool = False) -> bool:
        now_mono = time.monotonic()
        if self.holding and not force_renew and now_mono - self.last_renew < LEASE_RENEW_SECONDS:
            return True
        now = timezone.now()
        WorkerLease.objects.get_or_create(id=1)
        stale = now - timedelta(seconds=WorkerLease.LEASE_SECONDS)
        won = WorkerLease.objects.filter(
            Q(holder=self.id) | Q(holder="") | Q(renewed_at__lt=stale), id=1
        ).update(holder=self.id, renewed_at=now)
        if not won:
            won = self._take_over_dead_local_holder(now)
        was_holding, self.holding = self.holding, bool(won)
        self.last_renew = now_mono
        if self.holding and not was_holding:
            WorkerLease.objects.filter(id=1).update(acquired_at=now)
            logger.info("worker holds the lease", extra={"worker": self.id})
            self.on_acquired()
        elif was_holding and not self.holding:
            logger.error("worker lost the lease", extra={"worker": self.id})
        return self.holding

    def _take_over_dead_local_holder(self, now) -> int:
        """A holder on this host whose process is gone (SIGKILL, OOM) need not be waited for."""
        holder = WorkerLease.objects.filter(id=1).values_list("holder", flat=True).first() or ""
        try:
            _, host_pid, _ = holder.rsplit(":", 2)
            host = holder.split("@", 1)[1].rsplit(":", 2)[0]
            pid = int(host_pid)
        except (ValueError, IndexError):
            return 0
        if host != socket.gethostname() or pid == os.getpid() or _pid_alive(pid):
            return 0
        return WorkerLease.objects.filter(id=1, holder=holder).update(holder=self.id, renewed_at=now)

    def release_lease(self) -> None:
        if self.holding:
            WorkerLease.objects.filter(id=1, holder=self.id).update(holder="")
            self.holding = False

    def on_acquired(self) -> None:
        catalogue.purge_leftovers(Path(settings.BACKUP_ROOT))
        self.recover_orphans()
        selectors.sync_catalogue()
        self.last_sync = time.monotonic()

    # --- steps ------------------------------------------------------------------------------------

    def recover_orphans(self) -> int:
        """Runs left `running` by a process that is gone: end whatever is left of their script's process
        group (only if it is still ours: pids are reused) and mark them interrupted."""
        count = 0
        for run in Run.objects.filter(status=RunStatus.RUNNING).exclude(worker=self.id):
            killed = False
            if run.pgid and any(
                runner.process_has_run_id(pid, str(run.id)) for pid in runner.find_group_members(run.pgid)
            ):
                killed = runner.kill_group(run.pgid, settings.BACKUP_KILL_GRACE_SECONDS)
            self._finish(
                run,
                services.RunEnd(
                    status=RunStatus.INTERRUPTED,
                    exit_code=None,
                    error="The service stopped while this backup was running"
                    + ("; its leftover processes were ended." if killed else "."),
                    output=run.output,
                    output_lines=run.output_lines,
                ),
                run.progress_percent,
                "interrupted",
                run.progress_message,
            )
            count += 1
        return count

    def end_own_stuck_runs(self) -> None:
        """Between runs, no run of this worker can be running: one that is was left so by a failure
        (the database refused even the failure record). End it, or it would block every new run."""
        for run in Run.objects.filter(status=RunStatus.RUNNING, worker=self.id):
            self.fail_after_service_error(run)

    def fail_after_service_error(self, run: Run) -> Run:
        """End a run the service itself lost track of: its script's group ended, the run failed."""
        if run.pgid and runner.group_alive(run.pgid):
            runner.kill_group(run.pgid, settings.BACKUP_KILL_GRACE_SECONDS)
        if run.status != RunStatus.RUNNING:
            return run
        end = services.RunEnd(
            status=RunStatus.FAILED,
            exit_code=None,
            output=run.output,
            output_lines=run.output_lines,
            error="The backup service failed while following this run; see the service log.",
        )
        return self._finish(run, end, run.progress_percent, "failed", run.progress_message)

    def run_next_queued(self) -> bool:
        if self.stopping.is_set():
            return False
        run = Run.objects.filter(status=RunStatus.QUEUED).order_by("created_at").first()
        if run is None:
            return False
        if services.run_claim(run=run, worker=self.id):
            self.execute(run)
        return True

    def schedule_tick(self, force: bool = False) -> None:
        now_mono = time.monotonic()
        if not force and now_mono - self.last_schedule_check < SCHEDULE_CHECK_SECONDS:
            return
        self.last_schedule_check = now_mono
        now = timezone.now()
        lease = WorkerLease.objects.get(id=1)
        document = services.config_current()
        last = lease.last_schedule_check
        if last is None or not document["enabled"]:
            WorkerLease.objects.filter(id=1).update(last_schedule_check=now)
            return
        due = config_document.next_fire_time(document["schedule"], timezone.localtime(last))
        if due > now:
            return
        # Fires once however many times were missed while the service was down.
        WorkerLease.objects.filter(id=1).update(last_schedule_check=now)
        try:
            services.run_enqueue(
                actor="schedule",
                run_type=RunType.SCHEDULED,
                description=f"scheduled ({document['schedule']})",
            )
        except services.Conflict:
            services.run_record_skipped(reason="another backup was queued or running at the scheduled time")

    def periodic_sync(self) -> None:
        if time.monotonic() - self.last_sync >= settings.CATALOGUE_SYNC_SECONDS:
            selectors.sync_catalogue()
            self.last_sync = time.monotonic()

    # --- one run ----------------------------------------------------------------------------------

    def execute(self, run: Run) -> Run:
        """Run the script for a claimed run and record how it ended. Never raises: a bug of the service
        itself ends the run as failed (its script's group ended) rather than leave it `running`."""
        self.current_run = run
        try:
            return RunExecution(self, run).execute()
        except Exception:
            logger.exception("run failed inside the service", extra={"run_id": str(run.id)})
            run.refresh_from_db()
            return self.fail_after_service_error(run)
        finally:
            self.current_run = None

    def _finish(self, run: Run, end: services.RunEnd, percent: int, stage: str, message: str) -> Run:
        return services.run_finish(run=run, end=end, percent=percent, stage=stage, message=message)


class RunExecution:
    """The state of one running script: progress, its folder, its error lines."""

    def __init__(self, worker: Worker, run: Run) -> None:
        self.worker = worker
        self.run = run
        self.root = Path(settings.BACKUP_ROOT)
        self.tracker = progress.ProgressTracker(expected_duration=selectors.expected_duration())
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

    def execute(self) -> Run:
        document = services.config_current()
        with contextlib.suppress(OSError):  # the script reports an unusable root better than we can
            self.root.mkdir(parents=True, exist_ok=True)
        self.folders_before = {folder.name for folder in catalogue.list_folders(self.root)}
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
        end = self.outcome(result)
        final = self.tracker.finish(end.status == RunStatus.SUCCEEDED)
        stage = final.stage if end.status in (RunStatus.SUCCEEDED, RunStatus.FAILED) else end.status
        run = self.worker._finish(self.run, end, final.percent, stage, final.message)
        if end.status == RunStatus.SUCCEEDED and run.backup_id:
            self.verify(run.backup_id)
        if end.status == RunStatus.SUCCEEDED and not self.worker.stopping.is_set():
            try:
                services.retention_apply()
            except Exception:
                logger.exception("retention failed")
        return run

    def verify(self, backup_id: str) -> None:
        """Read the new backup back against the manifest its script wrote, if it wrote one."""
        try:
            verified = catalogue.verify_manifest(self.root, backup_id)
        except Exception:
            logger.exception("verification failed", extra={"backup_id": backup_id})
            return
        if verified is not None:
            services.backup_record_verification(backup_id=backup_id, verified=verified)

    def outcome(self, result: runner.RunResult) -> services.RunEnd:
        reason = runner.EndReason
        errors = "\n".join(self.error_lines)
        text, lines = self.output_text(), self.output.total_lines
        if result.reason == reason.EXITED and result.exit_code == 0:
            return services.RunEnd(RunStatus.SUCCEEDED, 0, "", text, lines)
        if result.reason == reason.CANCELLED:
            return services.RunEnd(
                RunStatus.CANCELLED,
                result.exit_code,
                "Cancelled: the script's processes were ended.",
                text,
                lines,
            )
        if result.reason == reason.SHUTDOWN and self.lease_lost:
            why = "Interrupted: this worker stalled and lost its lease to another; its script was ended."
            return services.RunEnd(RunStatus.INTERRUPTED, result.exit_code, why, text, lines)
        if result.reason == reason.SHUTDOWN:
            return services.RunEnd(
                RunStatus.INTERRUPTED,
                result.exit_code,
                "Interrupted: the service shut down "
                f"and the backup did not finish within {settings.SHUTDOWN_GRACE_SECONDS} s.",
                text,
                lines,
            )
        if result.reason == reason.TIMEOUT:
            return services.RunEnd(
                RunStatus.FAILED,
                result.exit_code,
                f"Timed out after "
                f"{settings.BACKUP_RUN_TIMEOUT} s (BACKUP_RUN_TIMEOUT); the script's processes "
                "were ended." + (f"\n{errors}" if errors else ""),
                text,
                lines,
            )
        if result.reason == reason.SPAWN_FAILED:
            logger.error("backup script could not be started: %s", result.error)
            script = Path(settings.BACKUP_SCRIPT)
            # The run's error is shown to clients: name the script, not where it lives.
            result.error = result.error.replace(str(script.parent) + "/", "").replace(
                str(script.parent), "<script dir>"
            )
            return services.RunEnd(
                RunStatus.FAILED, None, f"The backup script could not be started: {result.error}", text, lines
            )
        headline = f"The script exited with code {result.exit_code}"
        if self.disk_full:
            headline = f"Disk full: the script exited with code {result.exit_code} (No space left on device)"
        return services.RunEnd(
            RunStatus.FAILED, result.exit_code, headline + (f".\n{errors}" if errors else "."), text, lines
        )

    def output_text(self) -> str:
        pairs = self.output.lines()
        head = len(pairs) if not self.output.dropped_lines else min(len(pairs), self.output.head_lines)
        rendered = [f"{stream}: {line}" for stream, line in pairs]
        if self.output.dropped_lines:
            rendered.insert(head, f"out: … {self.output.dropped_lines} lines omitted …")
        return "\n".join(rendered)

    # --- runner callbacks (all on the worker's thread) --------------------------------------------

    def on_start(self, pid: int) -> None:
        services.run_set_process(run=self.run, pgid=pid)

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
                present = os.listdir(catalogue.resolve(self.root, self.run.backup_id))
            except (OSError, catalogue.BackupNotFound):
                present = []
            self.tracker.feed_artifacts(present)
            self.tracker.feed_elapsed(elapsed)
        if not self.worker.hold_lease():
            # Another worker holds the lease now and will treat this run as orphaned: stop the script
            # rather than let two backups run at once.
            self.lease_lost = True
        self.worker.schedule_tick()
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
            self.cancelled = Run.objects.filter(id=self.run.id, cancel_requested=True).exists()
        return runner.EndReason.CANCELLED if self.cancelled else None

    # --- helpers ----------------------------------------------------------------------------------

    def discover_folder(self) -> None:
        """The run's folder: the one the script named, else the one that appeared in the root."""
        if self.run.backup_id:
            return
        candidates = []
        if self.folder_named:
            candidates.append(self.folder_named)
        appeared = sorted(
            f.name for f in catalogue.list_folders(self.root) if f.name not in self.folders_before
        )
        candidates.extend(reversed(appeared))
        for name in candidates:
            try:
                catalogue.resolve(self.root, name)
            except catalogue.BackupNotFound:
                continue
            services.run_set_backup(run=self.run, backup_id=name)
            return

    def publish(self, force: bool = False) -> None:
        """Progress to the clients (coalesced in `events`) and, less often, to the database."""
        state = self.tracker.current
        key = (state.percent, state.stage, state.message)
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
                    str(self.run.id), self.run.backup_id, state.percent, state.stage, state.message
                ),
            )
            self.published = key
            self.last_event = now
        if force or now - self.last_saved >= PROGRESS_SAVE_SECONDS:
            services.run_save_progress(
                run=self.run, percent=state.percent, stage=state.stage, message=state.message
            )
            Run.objects.filter(id=self.run.id).update(
                output=self.output_text(), output_lines=self.output.total_lines
            )
            self.last_saved = now
