"""No absolute path outside the backup root is left in a run's error (pure)."""

from __future__ import annotations

import pytest

from backups.runner import EndReason, OutputBuffer, RunResult
from backups.runs.outcome import Circumstances, outcome, scrub_paths

ROOT = "/srv/backups/production"


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "/opt/beauty/scripts/production-backup.sh: line 344: pg_dump: command not found",
            "…/production-backup.sh: line 344: pg_dump: command not found",
        ),
        ("tar: /var/www/beauty/uploads: Cannot open", "tar: …/uploads: Cannot open"),
        (f"create '{ROOT}/backup-1/db.sql': full", "create '$BACKUP_ROOT/backup-1/db.sql': full"),
        (f"writing {ROOT}", "writing $BACKUP_ROOT"),
        ("key=/root/.ssh/id_ed25519,mode=600", "key=…/id_ed25519,mode=600"),
        ("see (/etc/passwd) [/etc/shadow] </tmp/x>", "see (…/passwd) […/shadow] <…/x>"),
        ("postgres://backup@db.internal:5432/beauty down", "postgres://backup@db.internal:5432/beauty down"),
        ("3/4 done, 50/50 files", "3/4 done, 50/50 files"),
        ("/", "/"),
        ("cd /: ok", "cd /: ok"),
        (f"{ROOT}-other/x", "…/x"),
    ],
)
def test_paths_outside_the_root_are_cut_to_their_name(text, expected):
    assert scrub_paths(text, ROOT) == expected


def test_every_kind_of_run_end_is_scrubbed():
    facts = Circumstances(
        error_lines=("/opt/beauty/scripts/production-backup.sh: line 9: /usr/local/bin/tool: No such file",),
        timeout_seconds=10,
        script_dir="/opt/beauty/scripts",
        backup_root=ROOT,
    )
    for reason, code, error in (
        (EndReason.EXITED, 2, ""),
        (EndReason.TIMEOUT, None, ""),
        (EndReason.SPAWN_FAILED, None, "[Errno 13] Permission denied: '/opt/x/y.sh'"),
    ):
        result = RunResult(reason, code, error, pid=None, output=OutputBuffer(), duration_seconds=1.0)
        end = outcome(result, facts, output="", output_lines=0)
        assert "/opt/" not in end.error and "/usr/" not in end.error, end.error
