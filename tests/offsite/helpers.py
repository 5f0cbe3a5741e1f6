"""Helpers shared by the off-site test modules (not fixtures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from backups.offsite import Store

PROJECT = Path(__file__).resolve().parents[2]


def keys_under(s3: Store, rel_prefix: str = "") -> dict[str, dict[str, Any]]:
    """Objects under the test's prefix, by key relative to it."""
    return {s3.settings.rel(item["Key"]): item for item in s3.list(rel_prefix)}


def spawn_upload(job: dict[str, Any], log: Path) -> subprocess.Popen[bytes]:
    """tests/offsite/child_upload.py in its own process group (so a SIGKILL hits it as a worker would
    be hit); its last stdout line is the UploadResult as JSON."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "OFFSITE_CHILD_JOB": json.dumps(job)}
    with open(log, "ab") as err:
        return subprocess.Popen(
            [sys.executable, str(PROJECT / "tests" / "offsite" / "child_upload.py")],
            cwd=PROJECT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
