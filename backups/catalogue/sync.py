"""The one owner of the catalogue's freshness: make the `Backup` rows match the folders on disk.

Disk is the truth. A full sync lists the root once, re-walks only folders whose change signature moved,
and writes the rows in batches; the worker runs one at start-up and every `CATALOGUE_SYNC_SECONDS`.
`ensure_fresh()` is what views and consumers call before they read: it costs one `stat` of the root when
nothing was added or removed since this process last looked, and otherwise one listing of the root (no
folder opened) plus a walk of the folders added: a request never waits for a full re-walk.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connections, models, transaction
from django.db.models import Q
from django.utils import timezone

from backups.catalogue import latest, scan, sidecar
from backups.catalogue.models import Backup, BackupStatus, BackupType, OffsiteStatus
from backups.catalogue.paths import BackupNotFound, CatalogueError, check_backup, is_valid_id
from backups.catalogue.services import repoint_latest
from backups.offsite.models import RemoteDeletion
from backups.runs.models import ACTIVE_RUN_STATUSES, Run, RunKind, RunStatus

logger = logging.getLogger(__name__)

_lock = threading.Lock()  # full syncs
_request_lock = threading.Lock()  # the freshness checks of requests (they never wait for a full sync)
_seen_root_signature: str | None = None
# Until this process has run a full sync (at start, after reset()), a request runs one: the quick check
# only sees folders added and removed, and the catalogue may be older than this process.
_full_due = True


def backup_root() -> Path:
    return Path(settings.BACKUP_ROOT)


def reset() -> None:
    """Forget what this process has seen, so the next `ensure_fresh()` syncs (tests, settings changes)."""
    global _seen_root_signature, _full_due
    _seen_root_signature = None
    _full_due = True
    scan.forget_seen()


def _root_signature(root: Path) -> str:
    try:
        stat = root.stat()
    except OSError:
        return "missing"
    return f"{stat.st_mtime_ns}:{stat.st_ino}"


def ensure_fresh(backup_id: str | None = None) -> None:
    """Re-sync before answering when folders were added or removed since this process last looked
    (the root's mtime changes then); otherwise cost one stat. With `backup_id`, also sync that folder
    when it exists on disk but has no row yet."""
    global _seen_root_signature
    if _full_due:
        with _lock:
            if _full_due:  # else the worker's start-up sync finished while this request waited for it
                _sync_all_locked()
        return ensure_fresh(backup_id)
    signature = _root_signature(backup_root())
    if signature != _seen_root_signature:
        with _request_lock:
            if signature != _seen_root_signature:
                sync(full=False)
                _seen_root_signature = signature
    if backup_id and is_valid_id(backup_id) and not Backup.objects.filter(id=backup_id).exists():
        try:
            check_backup(backup_root(), backup_id)
        except BackupNotFound:
            return
        sync(force_ids=[backup_id], full=False)


def sync_all() -> dict[str, int]:
    """A full sync that also counts as this process having looked (the worker's start-up and periodic
    syncs, so the first list request after them does not walk the root again)."""
    with _lock:
        return _sync_all_locked()


def _sync_all_locked() -> dict[str, int]:
    global _seen_root_signature, _full_due
    signature = _root_signature(backup_root())
    result = sync()
    _seen_root_signature = signature
    _full_due = False
    return result


def sync(*, force_ids: Iterable[str] = (), full: bool = True) -> dict[str, int]:
    """Make the Backup rows match the folders on disk. Folders whose change signature is unchanged are
    not re-walked (unless named in `force_ids`), so a re-sync with nothing changed costs one listing.
    With `full=False` (a request's freshness check) no folder is opened to compute its signature: only
    folders added since the last sync, running ones and `force_ids` are walked, and rows of folders
    removed are forgotten; changes inside known folders are the next full sync's."""
    root = backup_root()
    force = {backup_id for backup_id in force_ids if backup_id}
    # A row still `running` is decided again whatever its signature: a crash between a run's end and
    # the sync that follows it must not leave its folder `running` (out of retention, never latest).
    redo = Q(status=BackupStatus.RUNNING)
    if full:
        # A folder that could not be read completely is read again each time: a permission fixed or a
        # transient error (too many open files) must not stay recorded until the folder changes.
        redo |= ~Q(problems=[])
    force.update(Backup.objects.filter(redo).values_list("id", flat=True))
    if full:
        known = dict(Backup.objects.values_list("id", "signature"))
        listed, found = scan.list_and_scan(
            root, lambda name, signature: name in force or known.get(name) != signature
        )
        folders = {folder.name: folder for folder in listed}
    else:
        folders = scan.list_names(root)
        known = {backup_id: None for backup_id in Backup.objects.values_list("id", flat=True)}
        found = {}
        for name in folders:
            if name in known and name not in force:
                continue
            try:
                found[name] = scan.scan_backup(root, name)
            except BackupNotFound:
                continue  # vanished between the listing and the walk
            except (CatalogueError, OSError) as error:
                # One folder that cannot be read never fails the sync of the others.
                logger.warning("backup folder %s could not be read: %s", name, error)
                found[name] = _unread(folders[name], str(error) or type(error).__name__)

    walked: list[tuple[str, scan.ScannedBackup, dict[str, Any]]] = []
    with_metadata = _metadata_names(root) if found else set()
    for name, scanned_folder in found.items():
        has_metadata = with_metadata is None or f"{name}.json" in with_metadata
        walked.append((name, scanned_folder, sidecar.read_metadata(root, name) if has_metadata else {}))

    # A folder another sync (a request's, the worker's) saw appear after this one listed the root is
    # not gone: only rows whose folder is absent now are forgotten.
    gone = {name for name in set(known) - set(folders) if not _on_disk(root, name)}
    with transaction.atomic():
        # Statuses are decided here, from the runs as they are when the rows are written: a walk that
        # began before a run ended must not write the run's folder back as running (or move `latest`).
        scanned = _catalogue_rows(walked)
        removed = _forget_vanished(gone) if gone else 0
        # A folder whose content changed since it was verified is not verified any more.
        changed = [
            row["id"]
            for row in scanned
            if row["id"] in known and known[row["id"]] not in (None, row["signature"])
        ]
        if changed:
            # Its last verdict lapses and it is seen anew (the verification step owes it a check).
            Backup.objects.filter(id__in=changed).exclude(verification_status="never").update(
                verified=False, verification_status="never", verification_due=""
            )
        _write_rows(scanned)
        _sync_latest_flag(root)
    return {"scanned": len(scanned), "removed": removed, "total": len(folders)}


# The columns a walk decides: a row already there keeps the others (pinned, verification, off-site).
_WALKED_COLUMNS = (
    "created_at",
    "status",
    "type",
    "description",
    "triggered_by",
    "size_bytes",
    "file_count",
    "files",
    "run_id",
    "signature",
    "problems",
    "synced_at",
    "local",
)
# Fields whose Python value is what the database driver takes (no per-row preparation needed).
_PLAIN_FIELDS = (models.CharField, models.IntegerField, models.BigIntegerField, models.BooleanField)
_WRITE_BATCH = 2000
_STATUSES = frozenset(BackupStatus.values)
_TYPES = frozenset(BackupType.values)


def _write_rows(rows: list[dict[str, Any]]) -> None:
    """Insert the walked rows, or update the walked columns of those already there, with one
    `INSERT … ON CONFLICT (id) DO UPDATE` per batch sent by `executemany` (SQLite and PostgreSQL alike).
    What `bulk_create(update_conflicts=True)` would write, without building a model instance per row or
    preparing every value of every column: the columns a walk does not decide get their defaults,
    prepared once, and only the values that need it (dates, JSON, the run's id) are prepared per row."""
    if not rows:
        return
    db = connections[Backup.objects.db]  # the connection itself, not the per-thread proxy, per value
    fields = [field for field in Backup._meta.concrete_fields]
    given = {"synced_at": timezone.now(), "local": True}
    constants = {
        field.attname: field.get_db_prep_save(given.get(field.attname, field.get_default()), db)
        for field in fields
        if field.attname not in rows[0]
    }
    quote = db.ops.quote_name
    table = quote(Backup._meta.db_table)
    columns = ", ".join(quote(field.column) for field in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    updates = ", ".join(
        f"{quote(field.column)} = EXCLUDED.{quote(field.column)}"
        for field in fields
        if field.attname in _WALKED_COLUMNS
    )
    sql = (
        f"INSERT INTO {table} ({columns}) VALUES ({placeholders}) "
        f"ON CONFLICT ({quote(Backup._meta.pk.column)}) DO UPDATE SET {updates}"
    )
    # Per column: its prepared constant, or the row's value with the field that prepares it (None when
    # the driver takes it as it is). Most folders have no problems: their "[]" is prepared once.
    plan = [
        (field.attname in constants, constants.get(field.attname), field.attname, _preparer(field))
        for field in fields
    ]
    no_problems = Backup._meta.get_field("problems").get_db_prep_save([], db)
    with db.cursor() as cursor:
        for start in range(0, len(rows), _WRITE_BATCH):
            params = []
            for row in rows[start : start + _WRITE_BATCH]:
                values = []
                for is_constant, constant, attname, field in plan:
                    if is_constant:
                        values.append(constant)
                    elif field is None:
                        values.append(row[attname])
                    elif attname == "problems" and not row[attname]:
                        values.append(no_problems)
                    else:
                        values.append(field.get_db_prep_save(row[attname], db))
                params.append(values)
            cursor.executemany(sql, params)


def _preparer(field: models.Field) -> models.Field | None:
    return None if type(field) in _PLAIN_FIELDS else field


def _metadata_names(root: Path) -> set[str] | None:
    """The names in the metadata folder, from one listing of it (a folder without a file there is not
    looked up); None when it cannot be listed (every folder's file is then tried)."""
    try:
        fd = sidecar.service_dir_fd(root, create=False)
    except CatalogueError:
        return None
    if fd is None:
        return set()
    try:
        return set(os.listdir(fd))
    except OSError:
        return None
    finally:
        os.close(fd)


def _on_disk(root: Path, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(root / name).st_mode)
    except OSError:
        return False


def _forget_vanished(gone: set[str]) -> int:
    """Rows of folders no longer on disk. One with a complete off-site copy (`offsite_at`: whatever
    attempt came after it) stays, marked not local (it is downloaded and restored from the store); the
    others go, and an unfinished copy of theirs is owed its removal from the store (its index would keep
    its objects from the garbage collection)."""
    Backup.objects.filter(id__in=gone, offsite_at__isnull=False, local=True).update(
        local=False, is_latest=False, offsite_status=OffsiteStatus.OK, offsite_retry_at=None
    )
    doomed = Backup.objects.filter(id__in=gone, offsite_at__isnull=True)
    RemoteDeletion.owe(doomed.exclude(offsite_status=OffsiteStatus.NONE).values_list("id", flat=True))
    count, _ = doomed.delete()
    return count


def _catalogue_rows(
    walked: list[tuple[str, scan.ScannedBackup, dict[str, Any]]],
) -> list[dict[str, Any]]:
    """Backup rows for walked folders. A folder a run of this database made takes its facts from that
    run: the metadata file beside it may be missing (a full disk refuses it too), and a failed run's
    folder must never read completed. The metadata only speaks for folders no known run made."""
    if not walked:
        return []
    names = [name for name, _, _ in walked]
    # Only backup runs make folders: a verify or off-site run names the backup it worked on.
    runs = Run.objects.filter(kind=RunKind.BACKUP).exclude(backup_id="")
    if len(names) <= 500:  # a short IN list; a first sync of thousands of folders reads every run instead
        runs = runs.filter(backup_id__in=names)
    fields = ("backup_id", "id", "status", "type", "description", "triggered_by")
    runs_by_folder = {row["backup_id"]: row for row in runs.order_by("created_at").values(*fields)}
    running = Run.objects.filter(status=RunStatus.RUNNING, kind=RunKind.BACKUP).exclude(backup_id="").first()
    running_folder = running.backup_id if running else ""
    named = [meta["run_id"] for _, _, meta in walked if isinstance(meta.get("run_id"), str)]
    known_runs = {
        str(run_id) for run_id in Run.objects.filter(id__in=_valid_uuids(named)).values_list("id", flat=True)
    }
    rows = []
    for name, found, meta in walked:
        run = runs_by_folder.get(name)
        facts = (
            {**meta, **{key: str(run[key]) for key in ("type", "description", "triggered_by")}}
            if run
            else meta
        )
        meta_run = meta.get("run_id") if meta.get("run_id") in known_runs else None
        rows.append(
            {
                "id": name,
                "created_at": found.created_at,
                "status": _folder_status(name, meta, run["status"] if run else None, running_folder),
                "type": facts.get("type") if facts.get("type") in _TYPES else BackupType.EXTERNAL,
                "description": str(facts.get("description", ""))[:500],
                "triggered_by": str(facts.get("triggered_by", ""))[:200],
                "size_bytes": found.size_bytes,
                "file_count": len(found.files),
                "files": [{"path": _printable(f.path), "size_bytes": f.size_bytes} for f in found.files],
                "run_id": str(run["id"]) if run else meta_run,
                "signature": found.signature,
                "problems": list(found.problems),
            }
        )
    return rows


def _folder_status(name: str, meta: dict[str, Any], run_status: str | None, running_folder: str) -> str:
    if name == running_folder or run_status in ACTIVE_RUN_STATUSES:
        return BackupStatus.RUNNING
    if run_status is not None:
        return BackupStatus.COMPLETED if run_status == RunStatus.SUCCEEDED else BackupStatus.INCOMPLETE
    status = meta.get("status")
    if status == BackupStatus.RUNNING:
        return BackupStatus.INCOMPLETE  # its run is over and never said it succeeded
    return status if status in _STATUSES else BackupStatus.COMPLETED  # made outside the service


def _unread(folder: scan.FolderStat, why: str) -> scan.ScannedBackup:
    created = scan.folder_created_at(folder.name, folder.mtime_ns / 1e9)
    return scan.ScannedBackup(
        name=folder.name,
        created_at=created,
        files=(),
        size_bytes=0,
        signature=f"{folder.signature}:unread",
        newest_mtime=folder.mtime_ns / 1e9,
        problems=(f"the folder could not be read ({why[:200]})",),
    )


def _printable(path: str) -> str:
    """A file name that is not UTF-8 (kept by the walk as surrogate escapes) shown with \\x escapes: a
    JSON column, PostgreSQL's above all, cannot store lone surrogates."""
    if path.isascii():
        return path
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _valid_uuids(values: Iterable[str]) -> list[uuid.UUID]:
    valid = []
    for value in values:
        try:
            valid.append(uuid.UUID(value))
        except (ValueError, TypeError, AttributeError):
            continue
    return valid


def _sync_latest_flag(root: Path) -> None:
    target = latest.read_latest(root)
    if (
        target
        and Backup.objects.filter(
            id=target, status__in=[BackupStatus.INCOMPLETE, BackupStatus.FAILED]
        ).exists()
    ):
        # A failed run's script may have pointed `latest` at its half-written folder. A running one is
        # left alone: its run may still succeed (followed again after a restart).
        target = repoint_latest()
    Backup.objects.filter(is_latest=True).exclude(id=target or "").update(is_latest=False)
    if target:
        Backup.objects.filter(id=target, is_latest=False).update(is_latest=True)
