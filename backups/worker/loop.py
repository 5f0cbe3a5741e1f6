"""The worker: a loop over small steps that each say whether they found work.

It holds a lease row while it works (a second worker waits until the holder stops renewing), recovers
runs a dead process left `running`, does the duties finished runs left (write the outbox of their
notifications, check the new backup, apply retention), claims queued runs with a conditional update
and runs the script through `runner`, fires the schedule and daily retention, and keeps the catalogue
in sync. No transaction is held while the script runs. Notifications are delivered by a thread of
their own (`notifier`), only while the lease is held.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections

from backups import runner
from backups.catalogue import removal, sync
from backups.notifications.services import deliveries_release_claims
from backups.notifications.step import notify_after_runs
from backups.offsite.step import start_due_offsite
from backups.restore.step import remove_partial_restores
from backups.retention.step import apply_after_run, apply_daily
from backups.runs.models import Duty, Run, RunKind, RunStatus
from backups.runs.outcome import RunEnd
from backups.runs.selectors import next_queued_run
from backups.runs.services import run_claim, run_finish
from backups.verification.step import drop_scratch_leftovers, start_due_verification, verify_new_backups
from backups.worker import schedule
from backups.worker.execution import RunExecution
from backups.worker.following import RunLost
from backups.worker.jobs import JobExecution, finish_job
from backups.worker.lease import Lease, holder_name
from backups.worker.notifier import Notifier

logger = logging.getLogger(__name__)

SCHEDULE_CHECK_SECONDS = 5.0
RETENTION_CHECK_SECONDS = 60.0
NOTIFIER_STOP_SECONDS = 15.0


class Worker:
    def __init__(self, *, label: str = "worker") -> None:
        self.id = holder_name(label, uuid.uuid4().hex[:6])
        self.lease = Lease(self.id)
        self.stopping = threading.Event()
        self.shutdown_deadline: float | None = None
        self.last_sync = 0.0
        self.last_schedule_check = 0.0
        self.last_retention_check = 0.0
        self.current_run: Run | None = None
        self.started = time.monotonic()
        self.scratch_checked = False
        self.notifier = Notifier(self)

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
                self.notifier.ensure_running()
                if not found:
                    self.stopping.wait(settings.WORKER_POLL_SECONDS)
        finally:
            self.notifier.stop(NOTIFIER_STOP_SECONDS)
            self.release_lease()
            logger.info("worker stopped", extra={"worker": self.id})

    def step(self) -> bool:
        """One pass over STEPS, in order; True when any of them found work."""
        if not self.hold_lease():
            return False
        found = False
        for step in STEPS:
            if self.stopping.is_set():
                break
            found = step(self) or found
        return found

    # --- the lease --------------------------------------------------------------------------------

    @property
    def holding(self) -> bool:
        return self.lease.holding

    def hold_lease(self, force_renew: bool = False) -> bool:
        holding, acquired = self.lease.hold(force_renew)
        if acquired:
            self.on_acquired()
        return holding

    def release_lease(self) -> None:
        self.lease.release()

    def on_acquired(self) -> None:
        removal.purge_leftovers(Path(settings.BACKUP_ROOT))
        deliveries_release_claims()
        self.recover_orphans()
        self.scratch_checked = False
        sync.sync_all()
        self.last_sync = time.monotonic()

    # --- steps that need the worker's own state ---------------------------------------------------

    def orphans(self) -> list[Run]:
        """Runs left `running` by a worker that is gone (only the lease holder runs anything)."""
        return list(
            Run.objects.filter(status=RunStatus.RUNNING).exclude(worker=self.id).order_by("started_at")
        )

    def recover_orphans(self) -> int:
        """Orphaned runs whose script neither runs nor recorded how it ended are interrupted: whatever is
        left of their process group is ended (only if it is still ours: pids are reused). The others are
        followed again by `resume_orphans`."""
        count = 0
        for run in self.orphans():
            state = runner.inspect(settings.BACKUP_STATE_DIR, str(run.id))
            if not isinstance(state, runner.Gone):
                continue
            self.interrupt(run, state)
            count += 1
        return count

    def interrupt(self, run: Run, gone: runner.Gone) -> Run:
        leftovers = list(gone.leftover_pids)
        pgid = gone.pgid or run.pgid
        if not leftovers and run.pgid:  # a run started before its supervisor kept a state folder
            leftovers = [
                pid
                for pid in runner.find_group_members(run.pgid)
                if runner.process_has_run_id(pid, str(run.id))
            ]
        killed = bool(leftovers and pgid) and runner.kill_group(pgid, settings.BACKUP_KILL_GRACE_SECONDS)
        what = (
            "this backup was running and its script"
            if run.kind == RunKind.BACKUP
            else (f"this {run.kind} job was running and its process")
        )
        error = f"The service stopped while {what} did not survive" + (
            "; its leftover processes were ended." if killed else "."
        )
        end = RunEnd(RunStatus.INTERRUPTED, None, error, run.output, run.output_lines)
        run = self.finish(run, end, run.progress_percent, "interrupted", run.progress_message)
        runner.cleanup(settings.BACKUP_STATE_DIR, str(run.id))
        return run

    def resume_orphans(self) -> bool:
        """Follow again, one at a time, the runs a previous worker left behind: to their end when their
        script still runs, or at once when it ended while nobody watched (the normal end of a run)."""
        for run in self.orphans():
            if self.stopping.is_set():
                return False
            if not Run.objects.filter(id=run.id, status=RunStatus.RUNNING, worker=run.worker).update(
                worker=self.id
            ):
                continue
            run.refresh_from_db()
            self.current_run = run
            try:
                execution(self, run).resume()
            except RunLost as lost:
                self.interrupt(run, lost.gone)
            except Exception:
                logger.exception(
                    "following a run again failed inside the service", extra={"run_id": str(run.id)}
                )
                run.refresh_from_db()
                self.fail_after_service_error(run)
            finally:
                self.current_run = None
            return True
        return False

    def end_own_stuck_runs(self) -> bool:
        """Between runs, no run of this worker can be running: one that is was left so by a failure
        (the database refused even the failure record). End it, or it would block every new run."""
        stuck = list(Run.objects.filter(status=RunStatus.RUNNING, worker=self.id))
        for run in stuck:
            self.fail_after_service_error(run)
        return bool(stuck)

    def fail_after_service_error(self, run: Run) -> Run:
        """End a run the service itself lost track of: its script's group ended, the run failed."""
        if run.pgid and runner.group_alive(run.pgid):
            runner.kill_group(run.pgid, settings.BACKUP_KILL_GRACE_SECONDS)
        if run.status != RunStatus.RUNNING:
            return run
        end = RunEnd(
            RunStatus.FAILED,
            None,
            "The backup service failed while following this run; see the service log.",
            run.output,
            run.output_lines,
        )
        return self.finish(run, end, run.progress_percent, "failed", run.progress_message)

    def run_next_queued(self) -> bool:
        if self.stopping.is_set():
            return False
        run = next_queued_run()
        if run is None:
            return False
        if run_claim(run=run, worker=self.id):
            self.execute(run)
        return True

    def schedule_tick(self, force: bool = False) -> bool:
        """At most every SCHEDULE_CHECK_SECONDS (it is also called from a running backup's ticks)."""
        now_mono = time.monotonic()
        if not force and now_mono - self.last_schedule_check < SCHEDULE_CHECK_SECONDS:
            return False
        self.last_schedule_check = now_mono
        return schedule.tick()

    def retention_daily(self) -> bool:
        """Not while a run's duties are owed: its own retention duty comes first (and notifications and
        the new backup's verification are not held up by a long daily pruning)."""
        if time.monotonic() - self.last_retention_check < RETENTION_CHECK_SECONDS:
            return False
        if Duty.objects.exists():
            return False
        self.last_retention_check = time.monotonic()
        return apply_daily()

    def periodic_sync(self) -> bool:
        if time.monotonic() - self.last_sync < settings.CATALOGUE_SYNC_SECONDS:
            return False
        sync.sync_all()
        self.last_sync = time.monotonic()
        return False  # a sync is upkeep, not work that should make the loop skip its pause

    def owed_duties(self) -> bool:
        """Each capability's duty step once."""
        found = False
        for duty in DUTIES:
            found = duty() or found
        return found

    def leftovers(self) -> bool:
        """Once per lease, after the orphans were followed to their end: what killed jobs left behind."""
        if self.scratch_checked or self.orphans():
            return False
        self.scratch_checked = True
        for clean in LEFTOVERS:
            clean()
        return False

    def automatic_jobs(self) -> bool:
        """Start the verification or off-site copy the backups are owed, as automatic jobs. Not in
        the first AUTOMATIC_JOBS_DELAY_SECONDS after start-up: a restart is a time to look, not to load."""
        if self.stopping.is_set() or time.monotonic() - self.started < settings.AUTOMATIC_JOBS_DELAY_SECONDS:
            return False
        if Duty.objects.exists():  # a run's duties first: they say what its backup is owed
            return False
        return any(start() for start in AUTOMATIC_JOBS)

    def do_duties(self) -> bool:
        """Every duty finished runs left, until none is owed (what the loop's next passes would do)."""
        found = False
        while any(duty() for duty in DUTIES):
            found = True
        return found

    # --- one run ----------------------------------------------------------------------------------

    def execute(self, run: Run) -> Run:
        """Run the script for a claimed run and record how it ended. Never raises: a bug of the service
        itself ends the run as failed (its script's group ended) rather than leave it `running`."""
        self.current_run = run
        try:
            return execution(self, run).execute()
        except Exception:
            logger.exception("run failed inside the service", extra={"run_id": str(run.id)})
            run.refresh_from_db()
            return self.fail_after_service_error(run)
        finally:
            self.current_run = None

    def finish(self, run: Run, end: RunEnd, percent: int, stage: str, message: str) -> Run:
        if run.kind != RunKind.BACKUP:
            return finish_job(run, end, percent, stage, message)
        return run_finish(run=run, end=end, percent=percent, stage=stage, message=message)


def execution(worker: Worker, run: Run) -> RunExecution | JobExecution:
    return RunExecution(worker, run) if run.kind == RunKind.BACKUP else JobExecution(worker, run)


# The duties a run's end leaves (`backups.runs.duties`), each done by its capability's step.
DUTIES: tuple[Callable[[], bool], ...] = (notify_after_runs, verify_new_backups, apply_after_run)

# Capabilities that start automatic jobs when the lane is free (a backup request cancels them).
# Verification first: a backup is copied off site once its verification passed.
AUTOMATIC_JOBS: tuple[Callable[[], bool], ...] = (start_due_verification, start_due_offsite)


# What killed jobs may leave behind, cleaned once per lease when nothing of theirs still runs.
LEFTOVERS: tuple[Callable[[], bool], ...] = (drop_scratch_leftovers, remove_partial_restores)

# One pass of the loop. Duties come before the next queued run, as they did when they ran inline
# after each run: a new backup never starts before the previous one was checked.
STEPS: tuple[Callable[[Worker], bool], ...] = (
    Worker.resume_orphans,
    Worker.end_own_stuck_runs,
    Worker.leftovers,
    Worker.owed_duties,
    Worker.run_next_queued,
    Worker.automatic_jobs,
    Worker.schedule_tick,
    Worker.retention_daily,
    Worker.periodic_sync,
)
