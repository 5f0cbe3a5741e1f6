"""`manage.py run_backup`: one backup in the foreground, for a shell or cron. Exit 0 only on success.

It queues a run like the API does. If no worker is alive it runs it here; otherwise the worker runs it
and this command follows it. Either way the database keeps its one-run-at-a-time rule.
"""

from __future__ import annotations

import sys
import time

from django.core.management.base import BaseCommand, CommandError

from backups.audit import CLI
from backups.errors import Conflict
from backups.runs.models import Run, RunStatus
from backups.runs.services import run_claim, run_enqueue


class Command(BaseCommand):
    help = "Run one backup now and wait for it; exit code 0 only if it succeeded."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--description", default="", help="recorded with the run (max 500 chars)")

    def handle(self, *args, description: str, **options) -> None:
        from backups.worker.loop import Worker

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
