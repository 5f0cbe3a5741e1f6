"""The quick check: a backup read back against the `sha256sum` manifest its script wrote."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from backups.catalogue.paths import BackupNotFound, CatalogueError, open_member, open_verified

MANIFEST_NAME = "MANIFEST.sha256"
MANIFEST_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def verify_manifest(root: Path, backup_id: str) -> bool | None:
    """Check a backup against the `sha256sum` manifest its script wrote beside the files.

    None when the backup has no manifest (nothing to verify against); False when the manifest is
    unreadable or empty, names a file that is missing or unsafe, or a digest differs; True otherwise.
    Every listed path goes through open_member, so a manifest cannot make this read outside the root.
    """
    try:
        manifest_path, manifest_stat = open_member(root, backup_id, MANIFEST_NAME)
    except BackupNotFound:
        return None
    try:
        with open_verified(manifest_path, manifest_stat) as handle:
            lines = handle.read(16 << 20).decode("utf-8").splitlines()
    except (BackupNotFound, CatalogueError, OSError, UnicodeDecodeError):
        return False
    entries = [MANIFEST_LINE.match(line) for line in lines if line.strip()]
    if not entries or any(match is None for match in entries):
        return False
    for match in entries:
        expected, rel_path = match.group(1).lower(), match.group(2).removeprefix("./")
        digest = hashlib.sha256()
        try:
            path, file_stat = open_member(root, backup_id, rel_path)
            with open_verified(path, file_stat) as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        except (BackupNotFound, CatalogueError, OSError):
            return False
        if digest.hexdigest() != expected:
            return False
    return True
