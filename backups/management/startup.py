"""What `serve`, `backup_worker` and `run_backup` check before they start: a clear one-line refusal
beats a service that answers /health while every request fails."""

from __future__ import annotations

import errno
import socket

from django.core.management.base import CommandError
from django.db import DEFAULT_DB_ALIAS, connections

from backups.status.migrations import pending_migrations


def ensure_migrated() -> None:
    connection = connections[DEFAULT_DB_ALIAS]
    connection.ensure_connection()  # unreachable: manage.py says so, naming DATABASE_URL
    pending = pending_migrations(connection)
    if pending:
        raise CommandError(
            f"{pending} database migration(s) not applied: run `python manage.py migrate` first"
        )


def ensure_port_free(host: str, port: int) -> None:
    """Before the banner and a token are printed for a server that would never start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise CommandError(
                    f"port {port} is already in use (another `serve` running?): stop it, or choose another "
                    f"port with PORT={port + 1} or --port {port + 1}"
                ) from None
            raise CommandError(f"cannot listen on {host}:{port}: {error.strerror}") from None
