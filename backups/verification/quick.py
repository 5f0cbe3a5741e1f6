"""The quick check: a backup read back against the `sha256sum` manifest its script wrote."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from backups.catalogue.paths import BackupNotFound, CatalogueError, DirChain, backup_dir, open_member_at

MANIFEST_NAME = "MANIFEST.sha256"
MANIFEST_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def verify_manifest(root: Path, backup_id: str) -> bool | None:
    """Check a backup against the `sha256sum` manifest its script wrote beside the files.

    None when the backup has no manifest (nothing to verify against); False when the manifest is
    unreadable or empty, names a file that is missing or unsafe, or a digest differs; True otherwise.
    The folder is opened once and every listed path is opened beneath it, one component at a time with
    no symlink followed, so a manifest (or a tree changed meanwhile) cannot make this read outside it.
    """
    try:
        with backup_dir(root, backup_id) as folder:
            return _verify(folder)
    except BackupNotFound:
        return None
    except CatalogueError:
        return False


def _verify(folder: int) -> bool | None:
    try:
        manifest = open_member_at(folder, MANIFEST_NAME)
    except BackupNotFound:
        return None
    try:
        with manifest:
            text = manifest.file.read(16 << 20).decode("utf-8")
    except (CatalogueError, OSError, UnicodeDecodeError):
        return False
    # sha256sum ends lines with \n only (a name holding a newline is escaped); U+2028 and friends are
    # valid in names, so str.splitlines() would cut a line in two.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    entries = [MANIFEST_LINE.match(line) for line in lines if line.strip()]
    if not entries or any(match is None for match in entries):
        return False
    chain = DirChain(folder)
    try:
        for match in entries:
            assert match is not None
            expected, rel_path = match.group(1).lower(), match.group(2).removeprefix("./")
            digest = hashlib.sha256()
            try:
                with open_member_at(folder, rel_path, chain) as member:
                    while chunk := member.file.read(1 << 20):
                        digest.update(chunk)
            except (BackupNotFound, CatalogueError, OSError):
                return False
            if digest.hexdigest() != expected:
                return False
    finally:
        chain.close()
    return True
