"""Deleting a backup folder (atomic rename away, then removal) and purging what an interrupted
operation left behind.

Removal works from descriptors like everything else beneath the root: entries are unlinked relative to
the directory that holds them, and a directory is only entered through a no-follow open, so a symlink
swapped in anywhere is removed itself and its target never touched. There is no recursion and no
PATH_MAX limit; a tree nested deeper than `MAX_OPEN_DIRS` is cut into pieces (the deep part renamed to a
new `.deleting-*` name in the root) so the descriptors held stay bounded."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from backups.catalogue.latest import LATEST_TMP_PREFIX
from backups.catalogue.paths import (
    SERVICE_DIR,
    CatalogueError,
    Gone,
    is_valid_id,
    not_found,
    open_dir_at,
    open_root,
)
from backups.catalogue.sidecar import METADATA_TMP_MARKER, remove_metadata, service_dir_fd

logger = logging.getLogger(__name__)


# Prefixes of the service's own temporary names. All start with "." so they can never be a backup id.
_DELETING_PREFIX = ".deleting-"

MAX_OPEN_DIRS = 64


@dataclass
class _Frame:
    fd: int
    parent_fd: int
    name: str
    entries: list[tuple[str, bool]]


def _entries(fd: int) -> list[tuple[str, bool]]:
    with os.scandir(fd) as it:
        return [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in it]


def _doomed_name(label: str) -> str:
    return f"{_DELETING_PREFIX}{label}-{secrets.token_hex(6)}"


def remove_tree_at(root_fd: int, name: str) -> None:
    """Remove the entry `name` of the root (a directory tree, or a file or symlink: unlinked itself).

    OSError when something could not be removed; what is left keeps a `.deleting-*` name for
    purge_leftovers() to retry."""
    pending = [name]
    while pending:
        _remove_one(root_fd, pending.pop(), pending)


def _remove_one(root_fd: int, name: str, pending: list[str]) -> None:
    try:
        top = open_dir_at(root_fd, name)
    except Gone:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=root_fd)  # a file or a symlink (never followed)
        return
    frames = [_Frame(top, root_fd, name, _entries(top))]
    try:
        while frames:
            frame = frames[-1]
            descended = False
            while frame.entries:
                entry, is_dir = frame.entries.pop()
                if not is_dir:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry, dir_fd=frame.fd)
                    continue
                if len(frames) >= MAX_OPEN_DIRS:
                    # Too deep to hold every ancestor open: move the rest of the tree up into the root,
                    # where it is removed as a tree of its own.
                    piece = _doomed_name("piece")
                    os.rename(entry, piece, src_dir_fd=frame.fd, dst_dir_fd=root_fd)
                    pending.append(piece)
                    continue
                try:
                    child = open_dir_at(frame.fd, entry)
                except Gone:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry, dir_fd=frame.fd)
                    continue
                frames.append(_Frame(child, frame.fd, entry, _entries(child)))
                descended = True
                break
            if descended:
                continue
            try:
                os.rmdir(frame.name, dir_fd=frame.parent_fd)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    frame.entries = _entries(frame.fd)  # something was added meanwhile: go again
                    if frame.entries:
                        continue
                    os.rmdir(frame.name, dir_fd=frame.parent_fd)
                elif exc.errno != errno.ENOENT:
                    raise
            os.close(frame.fd)
            frames.pop()
    finally:
        for frame in frames:
            os.close(frame.fd)


def delete_backup(root: Path, backup_id: str) -> None:
    if not is_valid_id(backup_id):
        raise not_found()
    try:
        root_fd = open_root(Path(root))
    except (FileNotFoundError, NotADirectoryError):
        raise not_found() from None
    try:
        try:
            st = os.stat(backup_id, dir_fd=root_fd, follow_symlinks=False)
        except OSError:
            raise not_found() from None
        if not stat.S_ISDIR(st.st_mode):
            raise not_found()
        doomed = _doomed_name(backup_id)
        try:
            # rename(2) never follows symlinks: even if the folder were swapped for a link after the check,
            # only the link moves. From here on the backup is gone from every listing.
            os.rename(backup_id, doomed, src_dir_fd=root_fd, dst_dir_fd=root_fd)
        except FileNotFoundError:
            raise not_found() from None
        except OSError:
            raise CatalogueError("could not delete backup") from None
        remove_metadata(root, backup_id)
        try:
            remove_tree_at(root_fd, doomed)
        except (OSError, CatalogueError):
            # Logically deleted already; purge_leftovers() retries the physical removal.
            logger.warning("incomplete delete of backup %s; leftover will be purged later", backup_id)
    finally:
        os.close(root_fd)


def purge_leftovers(root: Path) -> list[str]:
    """Remove what an interrupted operation may leave directly in root (and in SERVICE_DIR).

    `.deleting-*` (trees are removed, symlinks only unlinked), `.latest.tmp-*` symlinks, and metadata
    temp files. Returns the names removed (SERVICE_DIR ones as "SERVICE_DIR/name").
    """
    root = Path(root)
    removed: list[str] = []
    try:
        root_fd = open_root(root)
    except (FileNotFoundError, NotADirectoryError):
        return []
    try:
        try:
            names = os.listdir(root_fd)
        except OSError:
            raise CatalogueError("backup root not readable") from None
        for name in sorted(names):
            try:
                if name.startswith(_DELETING_PREFIX):
                    remove_tree_at(root_fd, name)
                elif name.startswith(LATEST_TMP_PREFIX):
                    if not stat.S_ISLNK(os.stat(name, dir_fd=root_fd, follow_symlinks=False).st_mode):
                        continue  # not something we created
                    os.unlink(name, dir_fd=root_fd)
                else:
                    continue
            except FileNotFoundError:
                continue
            except (OSError, CatalogueError):
                logger.warning("could not purge leftover %s", name)
                continue
            removed.append(name)
    finally:
        os.close(root_fd)
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
