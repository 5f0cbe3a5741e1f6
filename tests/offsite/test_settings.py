"""The age identity is taken only from a file the service alone can read; start-up stops otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.offsite.conftest import Identity
from tests.servers import PROJECT

CODE = "import django; django.setup(); from django.conf import settings as s; print(s.OFFSITE_IDENTITY_PATH)"


def start(identity_file: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "BACKUP_ROOT": str(tmp_path),
        "OFFSITE_IDENTITY_FILE": identity_file,
        "DJANGO_SETTINGS_MODULE": "backup_platform.settings",
    }
    env.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-c", CODE], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60
    )


def test_an_identity_file_its_group_may_read_stops_start_up(identity: Identity, tmp_path: Path) -> None:
    identity.key_file.chmod(0o640)
    done = start(str(identity.key_file), tmp_path)
    assert done.returncode != 0
    last = done.stderr.splitlines()[-1]
    assert "ImproperlyConfigured" in last and "OFFSITE_IDENTITY_FILE" in last and "chmod 600" in last
    assert str(identity.identity) not in done.stderr


def test_a_missing_identity_file_stops_start_up_and_a_private_one_is_used(
    identity: Identity, tmp_path: Path
) -> None:
    done = start(str(tmp_path / "nowhere.txt"), tmp_path)
    assert done.returncode != 0 and "OFFSITE_IDENTITY_FILE cannot be read" in done.stderr.splitlines()[-1]
    done = start(str(identity.key_file), tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(identity.key_file)
