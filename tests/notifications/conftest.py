"""A real HTTP receiver and a real SMTP server on loopback, for the notification transports."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from aiosmtpd.controller import Controller

from backups.notifications.messages import RunInfo, new_message_id, run_finished
from tests.notifications.loopback import MailHandler, Receiver, SmtpServer
from tests.servers import free_port


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    handler = MailHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield SmtpServer("127.0.0.1", controller.port, handler)
    controller.stop()


@pytest.fixture
def failed_run_message():
    output = "\n".join(f"line {n} of the script" for n in range(1, 61))
    run = RunInfo(
        id="0b6f5a8e-3c1e-4a8e-9d9f-1f2e3d4c5b6a",
        status="failed",
        type="scheduled",
        backup_id="backup-20261130_030000",
        started_at=datetime(2026, 11, 30, 3, 0, tzinfo=UTC),
        finished_at=datetime(2026, 11, 30, 3, 4, 12, tzinfo=UTC),
        exit_code=2,
        error="pg_dump: connection to postgres://app:hunter2@db:5432/app refused <b>",
        output=output,
    )
    return run_finished(run, message_id=new_message_id(), timestamp=run.finished_at, source="db1")
