"""`manage.py backup_worker`: the worker as its own process (one per deployment; a second one waits)."""

from __future__ import annotations

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from backups import events
from backups.catalogue.services import ensure_backup_root
from backups.management.startup import ensure_migrated


class Command(BaseCommand):
    help = "Run queued backups, the schedule, retention and catalogue sync."

    def handle(self, *args, **options) -> None:
        from backups.worker.loop import Worker

        ensure_migrated()
        ensure_backup_root()

        worker = Worker(label="worker")
        signalled = threading.Event()

        def on_signal(sig, frame) -> None:
            if signalled.is_set():
                raise SystemExit(1)
            signalled.set()
            worker.request_shutdown(settings.SHUTDOWN_GRACE_SECONDS)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.stdout.write(f"backup worker {worker.id} started")
        worker.run_forever()
        events.drain(3)
