"""Deleting a backup folder (atomic rename away, then removal) and purging what an interrupted
operation left behind."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import stat
from pathlib import Path

from backups.catalogue.latest import LATEST_TMP_PREFIX
from backups.catalogue.paths import (
    SERVICE_DIR,
    CatalogueError,
    not_found,
    resolve,
)
from backups.catalogue.sidecar import METADATA_TMP_MARKER, remove_metadata, service_dir_fd

logger = logging.getLogger(__name__)


# Prefixes of the service's own temporary names. All start with "." so they can never be a backup id.
_DELETING_PREFIX = ".deleting-"


def _remove_tree_or_link(path: Path) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)  # fd-based on Linux (avoids_symlink_attacks): never follows links inside
    else:
        os.unlink(path)  # a symlink is removed itself, its target untouched


def delete_backup(root: Path, backup_id: str) -> None:
    root = Path(root)
    folder = resolve(root, backup_id)
    doomed = root / f"{_DELETING_PREFIX}{backup_id}-{secrets.token_hex(6)}"
    try:
        # rename(2) never follows symlinks: even if the folder were swapped for a link after resolve(),
        # only the link moves. From here on the backup is gone from every listing.
        os.rename(folder, doomed)
    except FileNotFoundError:
        raise not_found() from None
    except OSError:
        raise CatalogueError("could not delete backup") from None
    remove_metadata(root, backup_id)
    try:
        _remove_tree_or_link(doomed)
    except OSError:
        # Logically deleted already; purge_leftovers() retries the physical removal.
        logger.warning("incomplete delete of backup %s; leftover will be purged later", backup_id)


def purge_leftovers(root: Path) -> list[str]:
    """Remove what an interrupted operation may leave directly in root (and in SERVICE_DIR).

    `.deleting-*` (trees are removed with rmtree, symlinks only unlinked), `.latest.tmp-*` symlinks, and
    metadata temp files. Returns the names removed (SERVICE_DIR ones as "SERVICE_DIR/name").
    """
    root = Path(root)
    removed: list[str] = []
    try:
        with os.scandir(root) as it:
            names = [e.name for e in it]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError:
        raise CatalogueError("backup root not readable") from None
    for name in sorted(names):
        path = root / name
        try:
            if name.startswith(_DELETING_PREFIX):
                _remove_tree_or_link(path)
            elif name.startswith(LATEST_TMP_PREFIX):
                if not stat.S_ISLNK(os.lstat(path).st_mode):
                    continue  # not something we created
                os.unlink(path)
            else:
                continue
        except FileNotFoundError:
            continue
        except OSError:
            logger.warning("could not purge leftover %s", name)
            continue
        removed.append(name)
    try:
        fd = service_dir_fd(root, create=False)
    except CatalogueError:
        return removed
    if fd is None:
        return removed
    try:
        with os.scandir(fd) as it:
            tmp_names = [e.name for e in it if e.name.startswith(".") and METADATA_TMP_MARKER in e.name]
        for name in sorted(tmp_names):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd)
                removed.append(f"{SERVICE_DIR}/{name}")
    finally:
        os.close(fd)
    return removed
