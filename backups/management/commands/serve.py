"""`manage.py serve`: uvicorn (streams with back-pressure; limits in `backups.server`) plus, by
default, the worker in a thread.

SIGTERM/SIGINT: stop taking runs, give a running backup SHUTDOWN_GRACE_SECONDS to end by itself, then stop
following it (its supervisor keeps it running and recorded; the next start follows it again), then close
the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Generator

import uvicorn
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from backups import events
from backups.catalogue.services import ensure_backup_root
from backups.management.startup import ensure_migrated, ensure_port_free
from backups.server import uvicorn_config

logger = logging.getLogger(__name__)


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_signal) -> None:
        super().__init__(config)
        self.on_signal = on_signal
        self.signalled = False

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Our own handlers: uvicorn's would stop serving at once and re-raise the signal afterwards.
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig, frame) -> None:
        if self.signalled:
            self.force_exit = True  # a second signal: stop waiting
            self.should_exit = True
            return
        self.signalled = True
        threading.Thread(target=self.on_signal, name="shutdown", daemon=True).start()


class Command(BaseCommand):
    help = "Serve the API, the WebSocket and the pages (uvicorn), with the backup worker unless --no-worker."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=settings.HOST)
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument("--no-worker", action="store_true", help="run backups in `backup_worker` instead")
        parser.add_argument(
            "--welcome",
            action="store_true",
            help="print the URLs, the admin login and a token once it can start",
        )

    def handle(self, *args, host: str, port: int, no_worker: bool, welcome: bool, **options) -> None:
        from backups.realtime.socketio import close_sessions
        from backups.worker.loop import Worker

        ensure_migrated()
        ensure_port_free(host, port)
        ensure_backup_root()
        if welcome:
            call_command("print_welcome", port=port)

        worker = None if no_worker else Worker(label="serve")
        config = uvicorn_config("backup_platform.asgi:application", host=host, port=port)
        worker_thread: threading.Thread | None = None
        loop: asyncio.AbstractEventLoop | None = None

        def shut_down() -> None:
            logger.info(
                "shutdown requested: no new runs; waiting for a running backup",
                extra={"grace_seconds": settings.SHUTDOWN_GRACE_SECONDS},
            )
            if worker is not None and worker_thread is not None:
                if worker.current_run is not None:
                    events.broadcast(
                        events.SYSTEM_NOTIFICATION,
                        {
                            "level": "warning",
                            "message": "The backup service is shutting down; the running backup goes on "
                            "and is followed again when the service starts.",
                        },
                    )
                worker.request_shutdown(settings.SHUTDOWN_GRACE_SECONDS)
                worker_thread.join(settings.SHUTDOWN_GRACE_SECONDS + 15)
            events.drain(3)
            if loop is not None:
                with contextlib.suppress(Exception):  # a stuck close must not keep the process up
                    asyncio.run_coroutine_threadsafe(close_sessions(), loop).result(3)
            server.should_exit = True

        server = GracefulServer(config, shut_down)

        async def main() -> None:
            nonlocal worker_thread, loop
            loop = asyncio.get_running_loop()
            events.use_loop(loop)
            if worker is not None:
                worker_thread = threading.Thread(target=worker.run_forever, name="backup-worker", daemon=True)
                worker_thread.start()
            self.stdout.write(
                f"Backup service on http://{host}:{port}/ (worker: "
                f"{'separate process' if no_worker else 'in this process'})"
            )
            await server.serve()

        asyncio.run(main())
