"""Metadata the disk cannot hold in the folder itself (type, description, who started it), kept in
`BACKUP_ROOT/.backup-service/<id>.json` so that a lost database can be rebuilt from the folders.

Every operation is relative to a no-follow descriptor of the service folder."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backups.catalogue.paths import (
    DIR_FLAGS,
    FILE_FLAGS,
    NEW_FILE_FLAGS,
    SERVICE_DIR,
    CatalogueError,
    is_valid_id,
    not_found,
    open_root,
)

METADATA_TMP_MARKER = ".tmp-"
MANIFEST_SUFFIX = ".sha256"
MAX_MANIFEST_BYTES = 64 << 20


_MAX_METADATA_BYTES = 1 << 20


def service_dir_fd(root: Path, *, create: bool) -> int | None:
    """fd of root/SERVICE_DIR opened from the root's descriptor without following symlinks (None if
    missing and not created).

    All metadata file operations are relative to this fd, so a SERVICE_DIR replaced by a symlink can
    never make us read, write or unlink outside the root.
    """
    try:
        root_fd = open_root(Path(root))
    except (FileNotFoundError, NotADirectoryError):
        if create:
            raise CatalogueError("cannot open service directory") from None
        return None
    try:
        if create:
            try:
                os.mkdir(SERVICE_DIR, 0o750, dir_fd=root_fd)
            except FileExistsError:
                pass
            except OSError:
                raise CatalogueError("cannot create service directory") from None
        try:
            return os.open(SERVICE_DIR, DIR_FLAGS, dir_fd=root_fd)
        except FileNotFoundError:
            if create:
                raise CatalogueError("cannot open service directory") from None
            return None
        except OSError:
            raise CatalogueError("service directory is not a real directory") from None
    finally:
        os.close(root_fd)


def remove_metadata(root: Path, backup_id: str) -> None:
    try:
        fd = service_dir_fd(root, create=False)
    except CatalogueError:
        return
    if fd is None:
        return
    try:
        for name in (f"{backup_id}.json", f"{backup_id}{MANIFEST_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)


def write_metadata(root: Path, backup_id: str, data: Mapping[str, Any]) -> None:
    """Values that JSON cannot encode (datetime, UUID, Decimal, ...) are stored as str()."""
    if not is_valid_id(backup_id):
        raise not_found()
    _write(root, f"{backup_id}.json", json.dumps(dict(data), default=str, sort_keys=True).encode("utf-8"))


def write_manifest(root: Path, backup_id: str, text: str) -> None:
    """The `sha256sum` manifest the service built for a backup whose script wrote none: kept here,
    never inside the backup folder, which stays exactly as the script left it."""
    if not is_valid_id(backup_id):
        raise not_found()
    _write(root, f"{backup_id}{MANIFEST_SUFFIX}", text.encode("utf-8"))


def read_manifest(root: Path, backup_id: str) -> str | None:
    if not is_valid_id(backup_id):
        raise not_found()
    raw = _read(root, f"{backup_id}{MANIFEST_SUFFIX}", MAX_MANIFEST_BYTES)
    try:
        return raw.decode("utf-8") if raw is not None else None
    except UnicodeDecodeError:
        return None


def _write(root: Path, final: str, payload: bytes) -> None:
    fd = service_dir_fd(root, create=True)
    assert fd is not None
    tmp = f".{final}{METADATA_TMP_MARKER}{secrets.token_hex(6)}"  # a dot name: never a backup id
    try:
        try:
            out = os.open(tmp, NEW_FILE_FLAGS, 0o640, dir_fd=fd)
        except OSError:
            raise CatalogueError("cannot write metadata") from None
        try:
            with open(out, "wb", closefd=True) as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            # Atomic: readers see the previous file or the new one, never a partial one.
            os.replace(tmp, final, src_dir_fd=fd, dst_dir_fd=fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise CatalogueError("cannot write metadata") from None
    finally:
        os.close(fd)


def _read(root: Path, name: str, limit: int) -> bytes | None:
    try:
        fd = service_dir_fd(root, create=False)
    except CatalogueError:
        return None
    if fd is None:
        return None
    try:
        try:
            f = os.open(name, FILE_FLAGS, dir_fd=fd)
        except OSError:
            return None
        with open(f, "rb", closefd=True) as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
                return None
            return fh.read(limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_metadata(root: Path, backup_id: str) -> dict[str, Any]:
    if not is_valid_id(backup_id):
        raise not_found()
    raw = _read(root, f"{backup_id}.json", _MAX_METADATA_BYTES)
    if raw is None:
        return {}
    try:
        value = json.loads(raw.decode("utf-8"))
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return {}
    return value if isinstance(value, dict) else {}
