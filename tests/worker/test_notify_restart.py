"""A worker killed while a notification is on its way: the delivery is a row, so the next worker makes
it (real processes: `manage.py backup_worker`, SIGKILL, a loopback receiver that verifies the Standard
Webhooks signature)."""

from __future__ import annotations

import base64
import json
import os
import signal

import pytest
from standardwebhooks import Webhook

from tests.conftest import manage, server_env, start_worker
from tests.notifications.loopback import Receiver, Reply
from tests.worker.test_duties import query, wait_for

SECRET = "whsec_" + base64.b64encode(b"thirty-two bytes of webhook key!").decode()

FAILING = """#!/usr/bin/env bash
d="$BACKUP_ROOT/backup-$(date +%Y%m%d_%H%M%S)"
mkdir -p "$d"
echo "[1/2] dumping"
echo "pg_dump: error: connection to server refused" >&2
exit 3
"""


@pytest.mark.slow
def test_a_delivery_cut_off_by_a_killed_worker_is_made_by_the_next_one(tmp_path):
    receiver = Receiver()
    receiver.thread.start()
    # The first attempt hangs (the receiver is slow): the worker is killed while it waits.
    receiver.script(Reply(200, delay=30))
    script = tmp_path / "failing.sh"
    script.write_text(FAILING)
    script.chmod(0o755)
    env = server_env(tmp_path, BACKUP_SCRIPT=str(script), WEBHOOK_SECRET=SECRET)
    db = tmp_path / "db.sqlite3"
    (tmp_path / "backups").mkdir()
    assert manage(env, "migrate", "--noinput").returncode == 0
    configured = manage(
        env,
        "shell",
        "-c",
        "from backups.audit import Actor; from backups.config.services import config_update; "
        "from backups.runs.services import run_enqueue; "
        f"config_update(document={{'notifications': {{'webhook': '{receiver.base}/hook'}}}}, "
        "actor=Actor('test'), partial=True); run_enqueue(actor=Actor('test'))",
    )
    assert configured.returncode == 0, configured.stderr

    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        wait_for(lambda: len(receiver.requests) == 1, 60, "the first delivery attempt", log)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    assert query(db, "SELECT status FROM backups_run") == [("failed",)]
    assert query(db, "SELECT status, attempts, delivered_at FROM backups_delivery") == [("pending", 1, None)]

    restarted = start_worker(env, log)
    try:
        wait_for(
            lambda: query(db, "SELECT status FROM backups_delivery") == [("delivered",)],
            60,
            "the delivery",
            log,
        )
    finally:
        os.killpg(restarted.pid, signal.SIGTERM)
        restarted.wait(30)
        receiver.server.shutdown()
        receiver.server.server_close()
    assert query(db, "SELECT attempts FROM backups_delivery") == [(2,)]
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]  # the receiver can drop a duplicate
    payload = Webhook(SECRET).verify(second.body, second.headers)
    assert payload["type"] == "run.failed" and payload["data"]["run"]["exit_code"] == 3
    assert "connection to server refused" in payload["data"]["run"]["error"]
    assert json.loads(second.body)["data"]["output_tail"]
