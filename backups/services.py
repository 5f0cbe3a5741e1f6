"""Every write: runs, backups, config, the catalogue sync. Each change writes its audit row in the same
transaction and announces itself to the WebSocket clients only once committed."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from backups import catalogue, config_document, events
from backups.models import (
    ACTIVE_RUN_STATUSES,
    AuditEvent,
    Backup,
    BackupConfig,
    BackupStatus,
    BackupType,
    Run,
    RunStatus,
    RunType,
)
from backups.retention import policy as retention

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """A refused operation; `code` is what the API answers with."""

    status_code = 400

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


def backup_root() -> Path:
    return Path(settings.BACKUP_ROOT)


def ensure_backup_root() -> None:
    """A fresh install starts with an empty root rather than a `degraded` health check; a root that
    cannot be made (permissions, missing mount) is left for /health and test-script to report."""
    try:
        backup_root().mkdir(parents=True, exist_ok=True)
    except OSError as error:
        logger.warning("backup root cannot be created: %s", error.strerror)


# --- audit ----------------------------------------------------------------------------------------


def audit(
    action: str,
    *,
    actor: str = "",
    target: str = "",
    outcome: str = "ok",
    ip: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        action=action, actor=actor, target=target[:300], outcome=outcome, client_ip=ip, details=details or {}
    )


def refuse(
    action: str,
    message: str,
    *,
    actor: str,
    target: str = "",
    ip: str | None = None,
    reason: str,
    **extra: Any,
) -> Conflict:
    """Audit a refused operation (committed, whatever the caller does next) and build its 409."""
    with transaction.atomic():
        audit(action, actor=actor, target=target, ip=ip, outcome="refused", details={"reason": reason})
    return Conflict(message, **extra)


# --- runs -----------------------------------------------------------------------------------------


def active_run() -> Run | None:
    return Run.objects.filter(status__in=ACTIVE_RUN_STATUSES).first()


def run_enqueue(
    *,
    actor: str,
    description: str = "",
    run_type: str = RunType.MANUAL,
    ip: str | None = None,
) -> Run:
    """Queue a run for the worker. The partial unique constraint on active runs makes the database,
    not this function, the judge of "only one at a time": a concurrent insert fails with IntegrityError."""
    try:
        with transaction.atomic():
            run = Run.objects.create(type=run_type, description=description, triggered_by=actor)
            audit(
                "run.create",
                actor=actor,
                target=str(run.id),
                ip=ip,
                details={"type": run_type, "description": description},
            )
    except IntegrityError:
        current = active_run()
        raise refuse(
            "run.create",
            "A backup is already queued or running.",
            actor=actor,
            target=str(current.id) if current else "",
            ip=ip,
            reason="a run is already queued or running",
            run=current,
        ) from None
    logger.info("run queued", extra={"run_id": str(run.id), "actor": actor, "type": run_type})
    events.notify("info", f"Backup queued by {actor}.")
    return run


def run_record_skipped(*, reason: str, run_type: str = RunType.SCHEDULED, actor: str = "schedule") -> Run:
    now = timezone.now()
    with transaction.atomic():
        run = Run.objects.create(
            type=run_type,
            triggered_by=actor,
            status=RunStatus.SKIPPED,
            finished_at=now,
            started_at=now,
            error=reason,
            progress_stage="skipped",
        )
        audit("run.skipped", actor=actor, target=str(run.id), details={"reason": reason})
    events.notify("warning", f"Scheduled backup skipped: {reason}")
    return run


def run_claim(*, run: Run, worker: str) -> bool:
    """Take a queued run: a conditional update, so two workers can never both win it."""
    now = timezone.now()
    won = Run.objects.filter(id=run.id, status=RunStatus.QUEUED).update(
        status=RunStatus.RUNNING, started_at=now, worker=worker, progress_stage="starting"
    )
    if won:
        run.refresh_from_db()
    return won == 1


def run_set_process(*, run: Run, pgid: int) -> None:
    run.pgid = pgid
    Run.objects.filter(id=run.id).update(pgid=pgid)


def run_set_backup(*, run: Run, backup_id: str) -> None:
    """The run's folder is known: note it on the run and beside the backup (so a lost database can be
    rebuilt from the folders), and list it as running."""
    run.backup_id = backup_id
    Run.objects.filter(id=run.id).update(backup_id=backup_id)
    write_backup_metadata(run, status=BackupStatus.RUNNING)
    catalogue_sync(force_ids=[backup_id])


def write_backup_metadata(run: Run, *, status: str) -> None:
    try:
        catalogue.write_metadata(
            backup_root(),
            run.backup_id,
            {
                "run_id": str(run.id),
                "type": run.type,
                "description": run.description,
                "triggered_by": run.triggered_by,
                "status": status,
            },
        )
    except (OSError, catalogue.CatalogueError):
        logger.warning("could not write metadata of %s", run.backup_id, exc_info=True)


def run_save_progress(*, run: Run, percent: int, stage: str, message: str) -> None:
    Run.objects.filter(id=run.id, status=RunStatus.RUNNING).update(
        progress_percent=percent, progress_stage=stage[:100], progress_message=message[:500]
    )


@dataclass
class RunEnd:
    status: str
    exit_code: int | None
    error: str
    output: str = ""
    output_lines: int = 0


def run_finish(*, run: Run, end: RunEnd, percent: int, stage: str, message: str) -> Run:
    """Record how a run ended, fix its backup's status, and tell the clients (after commit)."""
    backup_status = BackupStatus.COMPLETED if end.status == RunStatus.SUCCEEDED else BackupStatus.INCOMPLETE
    if run.backup_id:
        write_backup_metadata(run, status=backup_status)
    now = timezone.now()
    with transaction.atomic():
        # Only a run still `running` ends here: a run that start-up recovery (or a worker that took over)
        # already marked interrupted keeps that verdict and its events are not sent twice.
        ended = Run.objects.filter(id=run.id, status=RunStatus.RUNNING).update(
            status=end.status,
            finished_at=now,
            exit_code=end.exit_code,
            error=end.error[:20000],
            output=end.output,
            output_lines=end.output_lines,
            progress_percent=percent,
            progress_stage=stage[:100],
            progress_message=message[:500],
            pgid=None,
        )
        run.refresh_from_db()
        if not ended:
            logger.warning(
                "run already ended; outcome not recorded",
                extra={"run_id": str(run.id), "status": run.status, "outcome": end.status},
            )
            return run
        audit(
            f"run.{end.status}",
            actor=run.triggered_by,
            target=str(run.id),
            outcome="ok" if end.status == RunStatus.SUCCEEDED else "failed",
            details={"backup_id": run.backup_id, "exit_code": end.exit_code, "error": end.error[:2000]},
        )
        if end.status == RunStatus.SUCCEEDED:
            events.broadcast_on_commit(
                events.BACKUP_PROGRESS,
                events.progress_payload(str(run.id), run.backup_id, 100, "completed", message),
            )
    # A failed run's folder is kept (incomplete) but must never be `latest`; the sync below re-points
    # `latest` when a script left it on a folder the service knows to be incomplete.
    catalogue_sync(force_ids=[run.backup_id] if run.backup_id else ())
    if end.status == RunStatus.SUCCEEDED:
        backup = Backup.objects.filter(id=run.backup_id).first()
        events.broadcast(
            events.BACKUP_COMPLETED,
            {
                "run_id": str(run.id),
                "backup_id": run.backup_id or None,
                "size_bytes": backup.size_bytes if backup else 0,
                "duration_seconds": run.duration_seconds,
            },
        )
    else:
        events.broadcast(
            events.BACKUP_ERROR,
            {
                "run_id": str(run.id),
                "error": run.error or f"run {end.status}",
                "exit_code": run.exit_code,
            },
        )
        level = "warning" if end.status == RunStatus.CANCELLED else "error"
        events.broadcast(
            events.SYSTEM_NOTIFICATION,
            {
                "level": level,
                "message": f"Backup {end.status}: "
                f"{(run.error or '').splitlines()[0][:200] if run.error else end.status}",
            },
        )
    logger.info(
        "run finished", extra={"run_id": str(run.id), "status": end.status, "exit_code": end.exit_code}
    )
    return run


def run_request_cancel(*, run: Run, actor: str, ip: str | None = None) -> Run:
    """A queued run is cancelled at once; a running one is flagged and its worker ends the script's
    process group within a poll interval."""
    with transaction.atomic():
        now = timezone.now()
        if Run.objects.filter(id=run.id, status=RunStatus.QUEUED).update(
            status=RunStatus.CANCELLED,
            finished_at=now,
            error=f"cancelled by {actor} before it started",
            progress_stage="cancelled",
        ):
            run.refresh_from_db()
            audit("run.cancel", actor=actor, target=str(run.id), ip=ip, details={"was": "queued"})
            events.broadcast_on_commit(
                events.BACKUP_ERROR, {"run_id": str(run.id), "error": run.error, "exit_code": None}
            )
            return run
        if Run.objects.filter(id=run.id, status=RunStatus.RUNNING).update(cancel_requested=True):
            run.refresh_from_db()
            audit("run.cancel", actor=actor, target=str(run.id), ip=ip, details={"was": "running"})
            return run
        run.refresh_from_db()
    raise refuse(
        "run.cancel",
        f"The run has already ended ({run.status}).",
        actor=actor,
        target=str(run.id),
        ip=ip,
        reason=f"run already {run.status}",
        run=run,
    )


# --- backups --------------------------------------------------------------------------------------


def backup_delete(*, backup_id: str, actor: str, ip: str | None = None) -> None:
    root = backup_root()
    try:
        catalogue.resolve(root, backup_id)
    except catalogue.BackupNotFound:
        raise NotFound("Backup not found.") from None
    backup = Backup.objects.filter(id=backup_id).first()
    running = active_run()
    if running and running.backup_id == backup_id:
        raise refuse(
            "backup.delete",
            "This backup belongs to the running backup run.",
            actor=actor,
            target=backup_id,
            ip=ip,
            reason="belongs to the running run",
        )
    if backup and backup.pinned:
        raise refuse(
            "backup.delete",
            "This backup is pinned; unpin it before deleting it.",
            actor=actor,
            target=backup_id,
            ip=ip,
            reason="pinned",
        )
    was_latest = catalogue.read_latest(root) == backup_id
    size = backup.size_bytes if backup else None
    try:
        catalogue.delete_backup(root, backup_id)
    except catalogue.BackupNotFound:
        raise NotFound("Backup not found.") from None
    except OSError as error:
        with transaction.atomic():
            audit(
                "backup.delete",
                actor=actor,
                target=backup_id,
                ip=ip,
                outcome="failed",
                details={"error": error.strerror or type(error).__name__},
            )
        raise ServiceError("The backup could not be deleted completely; see the service log.") from None
    with transaction.atomic():
        Backup.objects.filter(id=backup_id).delete()
        new_latest = repoint_latest() if was_latest else None
        audit(
            "backup.delete",
            actor=actor,
            target=backup_id,
            ip=ip,
            details={"size_bytes": size, "was_latest": was_latest, "latest_now": new_latest},
        )
    events.notify("info", f"Backup {backup_id} deleted by {actor}.")


def repoint_latest() -> str | None:
    """Point `latest` at the newest completed backup left (or remove it); returns its id."""
    newest = (
        Backup.objects.filter(status=BackupStatus.COMPLETED)
        .order_by("-created_at", "-id")
        .values_list("id", flat=True)
        .first()
    )
    try:
        catalogue.set_latest(backup_root(), newest)
    except catalogue.CatalogueError:
        logger.error("`latest` in the backup root is not a symlink; left untouched")
        return None
    Backup.objects.exclude(id=newest).filter(is_latest=True).update(is_latest=False)
    if newest:
        Backup.objects.filter(id=newest).update(is_latest=True)
    return newest


def backup_set_pinned(*, backup_id: str, pinned: bool, actor: str, ip: str | None = None) -> Backup:
    with transaction.atomic():
        updated = Backup.objects.filter(id=backup_id).update(pinned=pinned)
        if not updated:
            raise NotFound("Backup not found.")
        audit("backup.pin" if pinned else "backup.unpin", actor=actor, target=backup_id, ip=ip)
    return Backup.objects.get(id=backup_id)


def backup_record_verification(*, backup_id: str, verified: bool, actor: str = "worker") -> None:
    """The result of checking a backup against its manifest, with its audit row."""
    with transaction.atomic():
        Backup.objects.filter(id=backup_id).update(verified=verified)
        audit(
            "backup.verify",
            actor=actor,
            target=backup_id,
            outcome="ok" if verified else "failed",
            details={"verified": verified},
        )
    if not verified:
        events.notify("error", f"Backup {backup_id} does not match its manifest (MANIFEST.sha256).")


# --- config ---------------------------------------------------------------------------------------


def config_current() -> dict[str, Any]:
    return config_document.upgrade(BackupConfig.load().document)


def config_update(*, document: Any, actor: str, partial: bool, ip: str | None = None) -> dict[str, Any]:
    """Validate the whole new document first; store it and its audit row in one transaction, or
    change nothing (ConfigInvalid carries DRF-shaped errors)."""
    with transaction.atomic():
        config = BackupConfig.objects.select_for_update().filter(id=1).first() or BackupConfig.load()
        old = config_document.upgrade(config.document)
        new = config_document.validate(document, current=old if partial else None)
        config.document = new
        config.updated_by = actor
        config.save()
        changes = config_document.diff(old, new)
        audit(
            "config.update",
            actor=actor,
            target="config",
            ip=ip,
            details={"method": "PATCH" if partial else "PUT", "changes": changes},
        )
    if changes:
        events.notify("info", f"Backup configuration changed by {actor}: {', '.join(sorted(changes))}.")
    return new


# --- catalogue sync -------------------------------------------------------------------------------


def catalogue_sync(*, force_ids: Iterable[str] = ()) -> dict[str, int]:
    """Make the Backup rows match the folders on disk. Folders whose change signature is unchanged are
    not re-walked, so a re-sync with nothing changed costs one directory listing."""
    root = backup_root()
    force = {backup_id for backup_id in force_ids if backup_id}
    folders = {folder.name: folder for folder in catalogue.list_folders(root)}
    known = dict(Backup.objects.values_list("id", "signature"))

    walked: list[tuple[str, catalogue.ScannedBackup, dict[str, Any]]] = []
    for name, folder in folders.items():
        if name in known and known[name] == folder.signature and name not in force:
            continue
        try:
            walked.append((name, catalogue.scan_backup(root, name), catalogue.read_metadata(root, name)))
        except catalogue.BackupNotFound:
            continue  # vanished between the listing and the walk

    gone = set(known) - set(folders)
    with transaction.atomic():
        # Statuses are decided here, from the runs as they are when the rows are written: a walk that
        # began before a run ended must not write the run's folder back as running (or move `latest`).
        scanned = _catalogue_rows(walked)
        if gone:
            Backup.objects.filter(id__in=gone).delete()
        # A folder whose content changed since it was verified is not verified any more.
        changed = [row.id for row in scanned if row.id in known and known[row.id] != row.signature]
        if changed:
            Backup.objects.filter(id__in=changed, verified=True).update(verified=False)
        for batch_start in range(0, len(scanned), 500):
            Backup.objects.bulk_create(
                scanned[batch_start : batch_start + 500],
                update_conflicts=True,
                unique_fields=["id"],
                update_fields=[
                    "created_at",
                    "status",
                    "type",
                    "description",
                    "triggered_by",
                    "size_bytes",
                    "file_count",
                    "files",
                    "run",
                    "signature",
                    "synced_at",
                ],
            )
        _sync_latest_flag(root)
    return {"scanned": len(scanned), "removed": len(gone), "total": len(folders)}


def _catalogue_rows(walked: list[tuple[str, catalogue.ScannedBackup, dict[str, Any]]]) -> list[Backup]:
    """Backup rows for walked folders. A folder a run of this database made takes its facts from that
    run: the metadata file beside it may be missing (a full disk refuses it too), and a failed run's
    folder must never read completed. The metadata only speaks for folders no known run made."""
    if not walked:
        return []
    names = [name for name, _, _ in walked]
    runs = Run.objects.exclude(backup_id="")
    if len(names) <= 500:  # a short IN list; a first sync of thousands of folders reads every run instead
        runs = runs.filter(backup_id__in=names)
    fields = ("backup_id", "id", "status", "type", "description", "triggered_by")
    runs_by_folder = {row["backup_id"]: row for row in runs.order_by("created_at").values(*fields)}
    running = active_run()
    running_folder = running.backup_id if running and running.status == RunStatus.RUNNING else ""
    named = [meta["run_id"] for _, _, meta in walked if isinstance(meta.get("run_id"), str)]
    known_runs = {
        str(run_id) for run_id in Run.objects.filter(id__in=_valid_uuids(named)).values_list("id", flat=True)
    }
    rows = []
    now = timezone.now()
    for name, found, meta in walked:
        run = runs_by_folder.get(name)
        facts = (
            {**meta, **{key: str(run[key]) for key in ("type", "description", "triggered_by")}}
            if run
            else meta
        )
        meta_run = meta.get("run_id") if meta.get("run_id") in known_runs else None
        rows.append(
            Backup(
                id=name,
                created_at=found.created_at,
                status=_folder_status(name, meta, run["status"] if run else None, running_folder),
                type=facts.get("type") if facts.get("type") in BackupType.values else BackupType.EXTERNAL,
                description=str(facts.get("description", ""))[:500],
                triggered_by=str(facts.get("triggered_by", ""))[:200],
                size_bytes=found.size_bytes,
                file_count=len(found.files),
                files=[{"path": _printable(f.path), "size_bytes": f.size_bytes} for f in found.files],
                run_id=str(run["id"]) if run else meta_run,
                signature=found.signature,
                synced_at=now,
            )
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
    return status if status in BackupStatus.values else BackupStatus.COMPLETED  # made outside the service


def _printable(path: str) -> str:
    """A file name that is not UTF-8 (kept by the walk as surrogate escapes) shown with \\x escapes: a
    JSON column, PostgreSQL's above all, cannot store lone surrogates."""
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
    latest = catalogue.read_latest(root)
    if latest and Backup.objects.filter(id=latest).exclude(status=BackupStatus.COMPLETED).exists():
        # A failed run's script may have pointed `latest` at its half-written folder.
        latest = repoint_latest()
    Backup.objects.filter(is_latest=True).exclude(id=latest or "").update(is_latest=False)
    if latest:
        Backup.objects.filter(id=latest, is_latest=False).update(is_latest=True)


# --- retention ------------------------------------------------------------------------------------


def retention_apply(*, actor: str = "retention") -> list[str]:
    """Delete the completed backups the policy no longer keeps. Pinned and latest stay; incomplete ones
    are left for an admin to look at (they must not fill a day's slot of a good backup)."""
    policy = config_current()["retention"]
    candidates = [
        retention.Candidate(id=b.id, created_at=b.created_at, keep=b.pinned or b.is_latest)
        for b in Backup.objects.filter(status=BackupStatus.COMPLETED).only(
            "id", "created_at", "pinned", "is_latest"
        )
    ]
    doomed = retention.select_prunable(candidates, policy, tz=timezone.get_current_timezone())
    deleted = []
    for backup_id in doomed:
        try:
            backup_delete(backup_id=backup_id, actor=actor)
            deleted.append(backup_id)
        except ServiceError as error:
            logger.warning("retention could not delete %s: %s", backup_id, error.message)
    if deleted:
        logger.info("retention pruned backups", extra={"deleted": deleted})
    return deleted
