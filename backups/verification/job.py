"""The verify job, in a process of its own (`python -m backups.jobs verify ...`). Pure: no Django.

Params: `root`, `backup_id`, `level` ("quick" | "deep"), `demo_dumps_ok`. The restore-test server comes
in the environment (`RESTORE_TEST_DATABASE_URL`), never in the arguments. A backup whose script wrote no
`MANIFEST.sha256` gets one built at first sight, kept in the service's metadata folder; later checks
compare against it. The result line holds the backup's `verification` document.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from backups.catalogue import scan, sidecar
from backups.catalogue.paths import BackupNotFound, member_opener
from backups.jobs.protocol import Reporter
from backups.verification.checks import verify_backup
from backups.verification.manifest import MANIFEST_NAME, build_manifest
from backups.verification.streams import Cancelled


def run(params: dict[str, Any], reporter: Reporter) -> int:
    root, backup_id, level = Path(params["root"]), str(params["backup_id"]), params.get("level", "quick")
    try:
        scanned = scan.scan_backup(root, backup_id)
        with member_opener(root, backup_id) as open_file:
            return _verify(root, backup_id, level, scanned, open_file, params, reporter)
    except BackupNotFound:
        reporter.result({"error": "the backup folder is gone"})
        return 1


def _verify(
    root: Path,
    backup_id: str,
    level: str,
    scanned: scan.ScannedBackup,
    open_file: Callable[[str], BinaryIO],
    params: dict[str, Any],
    reporter: Reporter,
) -> int:
    listing = [(entry.path, entry.size_bytes) for entry in scanned.files]
    manifest_text = None
    manifest_written = False
    if MANIFEST_NAME not in dict(listing):
        manifest_text = sidecar.read_manifest(root, backup_id)
        if manifest_text is None:
            reporter.progress(0, "first sight: writing the manifest of a backup whose script wrote none")
            manifest_text = build_manifest(
                listing, open_file, on_progress=lambda p, m: reporter.progress(p // 2, m)
            )
            sidecar.write_manifest(root, backup_id, manifest_text)
            manifest_written = True
    offset = 50 if manifest_written else 0
    restore_url = os.environ.get("RESTORE_TEST_DATABASE_URL") if level == "deep" else None
    try:
        verdict = verify_backup(
            listing,
            open_file,
            level=level,
            manifest_text=manifest_text,
            restore_test_url=restore_url or None,
            demo_dumps_ok=bool(params.get("demo_dumps_ok")),
            on_progress=lambda p, m: reporter.progress(offset + p * (100 - offset) // 100, m),
        )
    except Cancelled:
        return 130
    document = verdict.to_document(datetime.now(UTC))
    document["restore_tested"] = bool(restore_url)
    # What the walk itself could not read is a problem of the backup too.
    document["problems"] = [*(f"{p} (not readable)" for p in scanned.problems), *document["problems"]]
    if scanned.problems:
        document["status"] = "failed"
    reporter.result(
        {
            "verification": document,
            "manifest": verdict.manifest,
            "manifest_written": manifest_written,
            "bytes_read": verdict.bytes_read,
            "seconds": round(verdict.seconds, 3),
        }
    )
    return 0
