"""A database that refuses progress writes while a backup runs costs the progress, not the backup."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pytest
from django.db import connection

from backups.models import Run, RunStatus
from tests.worker.test_worker import run_once, script, worker  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


@contextlib.contextmanager
def progress_writes_refused() -> Iterator[None]:
    """A trigger in the real database that fails every write of progress or output to a running run
    (the final write, which ends the run, is let through)."""
    table = Run._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                f"CREATE TRIGGER refuse_progress BEFORE UPDATE OF progress_percent, progress_message, output "
                f"ON {table} WHEN NEW.status = 'running' "
                "BEGIN SELECT RAISE(ABORT, 'disk I/O error (injected)'); END"
            )
        else:
            cursor.execute(
                "CREATE FUNCTION refuse_progress() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'disk I/O error (injected)'; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                f"CREATE TRIGGER refuse_progress BEFORE UPDATE OF progress_percent, progress_message, output "
                f"ON {table} FOR EACH ROW WHEN (NEW.status = 'running') EXECUTE FUNCTION refuse_progress()"
            )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute("DROP TRIGGER refuse_progress")
            else:
                cursor.execute(f"DROP TRIGGER refuse_progress ON {table}")
                cursor.execute("DROP FUNCTION refuse_progress()")


def test_a_progress_write_that_fails_never_ends_the_backup(worker, tmp_path, settings, caplog):  # noqa: F811
    settings.BACKUP_SCRIPT = script(
        tmp_path,
        """
d="$BACKUP_ROOT/backup-20260101_030000"; mkdir -p "$d"
for step in 1 2 3 4 5 6 7; do echo "[$step/7] step $step"; echo x > "$d/part$step"; sleep 0.4; done
""",
    )
    with caplog.at_level(logging.WARNING, logger="backups.worker.execution"), progress_writes_refused():
        run = run_once(worker)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.progress_percent == 100 and "[7/7]" in run.output
    warnings = [r for r in caplog.records if "could not save progress" in r.getMessage()]
    assert len(warnings) == 1  # once per streak of failures, not once per line


def test_a_failed_run_names_no_path_outside_the_root(worker, tmp_path, settings, backup_root, api):  # noqa: F811
    settings.BACKUP_SCRIPT = script(
        tmp_path,
        """
d="$BACKUP_ROOT/backup-20260101_030000"; mkdir -p "$d"
echo "[1/7] archiving $BACKUP_APP_DIR"
echo "tar: $BACKUP_APP_DIR/node_modules: Cannot open: Permission denied" >&2
echo "cannot write $d/db.sql" >&2
pg_dump_that_does_not_exist --file "$d/db.sql"
""",
    )
    run = run_once(worker)
    assert run.status == RunStatus.FAILED
    assert "command not found" in run.error and "Cannot open" in run.error
    document = api.get(f"/api/backup/runs/{run.id}").json()
    for text in (run.error, document["error"], document["progress"]["message"], run.progress_message):
        for outside in (str(tmp_path), "/tmp/", "/usr/", "/bin/"):
            assert outside not in text.replace(str(backup_root), ""), text
    assert "…/backup.sh: line" in run.error and "$BACKUP_ROOT/backup-20260101_030000/db.sql" in run.error
