"""`manage.py run_backup`: one backup in the foreground, for a shell or cron. Exit 0 only on success.

It queues a run like the API does. If no worker holds the lease it runs the script here, with this
command's environment. If a worker is running (`serve`'s, or `backup_worker`), the run is handed to it
— the script then gets that worker's environment, not this shell's — and this command follows the run
with the same progress bar until it ends (`--no-wait`: return once it is queued). Either way the
database keeps its one-run-at-a-time rule.
"""

from __future__ import annotations

import sys
import time

from django.core.management.base import BaseCommand, CommandError

from backups.audit import CLI
from backups.errors import Conflict
from backups.management.startup import ensure_migrated
from backups.runs.models import Run, RunStatus
from backups.runs.services import run_claim, run_enqueue
from backups.worker.lease import WorkerLease


class Command(BaseCommand):
    help = "Run one backup now and wait for it; exit code 0 only if it succeeded."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--description", default="", help="recorded with the run (max 500 chars)")
        wait = parser.add_mutually_exclusive_group()
        wait.add_argument(
            "--wait",
            dest="wait",
            action="store_true",
            default=True,
            help="follow the run to its end, also when a running worker takes it (the default)",
        )
        wait.add_argument(
            "--no-wait", dest="wait", action="store_false", help="when a worker takes the run, return at once"
        )

    def handle(self, *args, description: str, wait: bool, **options) -> None:
        from backups.worker.loop import Worker

        ensure_migrated()
        if len(description) > 500:
            raise CommandError("--description is longer than 500 characters")
        try:
            run = run_enqueue(actor=CLI, description=description)
        except Conflict as error:
            current = error.extra.get("run")
            raise CommandError(
                f"a backup is already queued or running ({current.id if current else '?'})"
            ) from None
        self.stdout.write(f"run {run.id} queued")
        worker = Worker(label="cli")
        if worker.hold_lease() and run_claim(run=run, worker=worker.id):
            import threading

            from backups.notifications.step import deliver_due

            watcher = threading.Thread(target=self.follow, args=(run.id,), daemon=True)
            watcher.start()
            worker.notifier.ensure_running()  # the monitor's /start ping goes out beside the run
            try:
                worker.execute(run)
                worker.do_duties()  # what the loop would do next: notify, check the backup, apply retention
                worker.stopping.set()
                worker.notifier.stop(15)
                # One attempt at each notification before exiting (cron may have no worker running); what
                # needs a retry is left for the next worker.
                while deliver_due():
                    pass
            finally:
                worker.stopping.set()
                worker.release_lease()
            watcher.join(2)
        else:
            holder = (
                WorkerLease.objects.filter(id=1).values_list("holder", flat=True).first() or "another worker"
            )
            self.stdout.write(
                f"a worker is running ({holder}): the run is handed to it, and the script gets that worker's "
                "environment, not this shell's"
            )
            if not wait:
                return
            self.follow(run.id)
        run.refresh_from_db()
        self.stdout.write(
            f"\nrun {run.id} {run.status}" + (f": backup {run.backup_id}" if run.backup_id else "")
        )
        if run.status != RunStatus.SUCCEEDED:
            self.stderr.write(run.error or run.status)
            sys.exit(1)

    def follow(self, run_id) -> None:
        tty = sys.stdout.isatty()
        shown = None
        while True:
            run = Run.objects.only("status", "progress_percent", "progress_stage").get(id=run_id)
            state = (run.progress_percent, run.progress_stage)
            if state != shown:
                shown = state
                if tty:
                    filled = run.progress_percent * 30 // 100
                    bar = "#" * filled + "-" * (30 - filled)
                    sys.stdout.write(f"\r[{bar}] {run.progress_percent:3d}% {run.progress_stage[:40]:<40}")
                    sys.stdout.flush()
                else:
                    self.stdout.write(f"{run.progress_percent:3d}% {run.progress_stage}")
            if run.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
                return
            time.sleep(0.3)
