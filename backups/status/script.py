"""Is the backup script usable? The checks of `POST /api/backup/test-script` and `/health`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from backups.audit import Actor, audit
from backups.catalogue.paths import disk_usage


def script_available() -> bool:
    script = Path(settings.BACKUP_SCRIPT)
    return script.is_file() and os.access(script, os.X_OK)


def script_checks() -> list[dict[str, Any]]:
    """Exists, executable, `bash -n` syntax, backup root writable, free disk, log writable. Never runs
    the script itself."""
    script = Path(settings.BACKUP_SCRIPT)
    root = Path(settings.BACKUP_ROOT)
    log = Path(settings.BACKUP_SCRIPT_LOG)
    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool, detail: str) -> None:
        checks.append({"name": name, "ok": ok, "detail": detail})

    exists = script.is_file()
    add("exists", exists, "the script is a file" if exists else "the script is missing")
    executable = exists and os.access(script, os.X_OK)
    add(
        "executable", executable, "the script is executable" if executable else "the script is not executable"
    )
    if exists:
        syntax_ok, detail = _syntax(script)
        add("syntax", syntax_ok, detail)
    else:
        add("syntax", False, "nothing to check")
    writable = _writable_dir(root)
    add(
        "backup_root_writable",
        writable,
        "the backup root is writable" if writable else "the backup root is missing or not writable",
    )
    if writable:
        total, free = disk_usage(root)
        enough = free >= settings.MIN_FREE_BYTES
        add(
            "free_disk",
            enough,
            f"{free} of {total} bytes free"
            + ("" if enough else f"; at least {settings.MIN_FREE_BYTES} bytes wanted"),
        )
    else:
        add("free_disk", False, "unknown: the backup root is not usable")
    log_ok = _writable_file(log)
    add("log_writable", log_ok, "the script log is writable" if log_ok else "the script log is not writable")
    return checks


def _syntax(script: Path) -> tuple[bool, str]:
    try:
        result = subprocess.run(
            ["bash", "-n", str(script)],
            capture_output=True,  # a syntax check prints a few lines at most
            text=True,
            timeout=15,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, f"bash -n could not run: {type(error).__name__}"
    if result.returncode == 0:
        return True, "bash -n: no syntax errors"
    return False, "bash -n: " + result.stderr.strip().replace(str(script), script.name)[:300]


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _writable_file(path: Path) -> bool:
    if path.exists():
        return path.is_file() and os.access(path, os.W_OK)
    return _writable_dir(path.parent)


def script_test(*, actor: Actor) -> dict[str, Any]:
    """The checks, audited (who looked, and what failed)."""
    checks = script_checks()
    ok = all(check["ok"] for check in checks)
    with transaction.atomic():
        audit(
            "script.test",
            actor=actor,
            outcome="ok" if ok else "failed",
            details={"failed": [check["name"] for check in checks if not check["ok"]]},
        )
    return {"ok": ok, "checks": checks}
