"""The `latest` symlink the script points at the newest backup: read it safely, re-point it atomically."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from backups.catalogue.paths import (
    LATEST_LINK,
    BackupNotFound,
    CatalogueError,
    check_backup,
)

LATEST_TMP_PREFIX = ".latest.tmp-"


def read_latest(root: Path) -> str | None:
    root = Path(root)
    try:
        target = os.readlink(root / LATEST_LINK)  # EINVAL when `latest` is not a symlink
    except (OSError, ValueError):
        return None
    target = target.rstrip("/")
    if not target or ".." in target.split("/"):
        return None
    if os.path.isabs(target):
        head, name = os.path.split(target)
        allowed = {os.path.normpath(str(root)), os.path.realpath(root)}
        if os.path.normpath(head) not in allowed:
            return None
    else:
        name = os.path.normpath(target)  # "./backup-X" -> "backup-X"; "a/b" stays multi-component
        if "/" in name:
            return None
    try:
        check_backup(root, name)
    except BackupNotFound:
        return None
    return name


def set_latest(root: Path, backup_id: str | None) -> None:
    root = Path(root)
    link = root / LATEST_LINK
    if backup_id is not None:
        check_backup(root, backup_id)
    try:
        current = os.lstat(link)
    except FileNotFoundError:
        current = None
    if current is not None and not stat.S_ISLNK(current.st_mode):
        raise CatalogueError("'latest' exists and is not a symlink; refusing to replace it")
    if backup_id is None:
        if current is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
        return
    tmp = root / f"{LATEST_TMP_PREFIX}{secrets.token_hex(8)}"
    os.symlink(backup_id, tmp)  # relative target, exactly like the script's `ln -s`
    try:
        # rename(2) replaces the old link atomically: readers see the old or the new target, never none.
        os.replace(tmp, link)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise CatalogueError("could not update 'latest'") from None
