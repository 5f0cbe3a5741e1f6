"""`manage.py run_backup` beside a running worker (a real `backup_worker` process): the run is handed to
that worker, so the script gets the worker's environment, not the shell's; `--wait` (the default) follows
the run's progress to its end, `--no-wait` returns once it is queued."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import pytest

from tests.conftest import manage, server_env, start_worker

pytestmark = pytest.mark.slow

SCRIPT = """#!/usr/bin/env bash
d="$BACKUP_ROOT/backup-$(date +%Y%m%d_%H%M%S)"; mkdir -p "$d"; echo "Backup directory: $d"
echo "from the shell: ${SHELL_ONLY:-}" > "$d/environment.txt"
for step in 1 2 3; do echo "[$step/3] step $step"; sleep 0.3; done
"""


def lease_holder(database: Path) -> str | None:
    with sqlite3.connect(database) as db:
        row = db.execute("SELECT holder FROM backups_workerlease WHERE id = 1").fetchone()
    return row[0] if row and row[0] else None


def test_run_backup_hands_the_run_to_a_running_worker_and_follows_it(tmp_path: Path) -> None:
    script = tmp_path / "backup.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    env = server_env(tmp_path, BACKUP_SCRIPT=str(script))
    (tmp_path / "backups").mkdir()
    assert manage(env, "migrate", "--noinput").returncode == 0
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 30
        while lease_holder(tmp_path / "db.sqlite3") is None:
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.2)

        done = manage({**env, "SHELL_ONLY": "yes"}, "run_backup", "--description", "from a terminal")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "a worker is running" in done.stdout and "not this shell's" in done.stdout
        percents = [int(m) for m in re.findall(r"^\s*(\d+)% ", done.stdout, flags=re.M)]
        assert percents and percents == sorted(percents) and percents[-1] == 100, done.stdout
        assert "succeeded: backup backup-" in done.stdout
        backup_id = done.stdout.rsplit("backup ", 1)[1].strip()
        # The worker ran the script: the shell's own variable never reached it.
        assert (tmp_path / "backups" / backup_id / "environment.txt").read_text() == "from the shell: \n"

        started = time.monotonic()
        queued = manage(env, "run_backup", "--no-wait")
        assert queued.returncode == 0, queued.stderr
        assert "a worker is running" in queued.stdout and "%" not in queued.stdout
        assert time.monotonic() - started < 15
    finally:
        worker.terminate()
        worker.wait(30)
