"""Restores in the service: what a backup holds, asking for a restore (checked before it is queued),
and what a restore job's end means. A restore is a run of kind `restore` in the one-at-a-time lane; the
target is a name from the environment (backups.restore.targets), its URL reaches only the job's
environment and the check made here."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction

from backups.audit import Actor, audit, refuse
from backups.catalogue.models import Backup, BackupStatus, OffsiteStatus
from backups.errors import Conflict, NotFound, ServiceError
from backups.offsite import services as offsite
from backups.offsite.store import validate_settings
from backups.restore import files, targets
from backups.restore.contents import Contents, backup_contents
from backups.restore.database import inspect_target
from backups.restore.files import normalize_prefixes
from backups.restore.job import URL_ENV
from backups.runs.models import Run, RunKind, RunStatus
from backups.runs.services import job_enqueue
from backups.verification.pg import PgError

logger = logging.getLogger(__name__)

COMPONENTS = (targets.DATABASE, targets.FILES)


@dataclass(frozen=True)
class RestoreRequest:
    component: str
    target: str
    path: str
    dry_run: bool = False
    confirm: str = ""
    paths: list[str] = field(default_factory=list)


def restorable_backup(backup_id: str) -> Backup:
    backup = Backup.objects.filter(id=backup_id).first()
    if backup is None:
        raise NotFound("Backup not found.")
    if backup.status == BackupStatus.RUNNING:
        raise Conflict("This backup is still being written; restore it once its run has ended.")
    return backup


def contents_of(backup: Backup) -> Contents:
    """Dumps and archives, from the catalogue's listing of the folder (no file is opened)."""
    return backup_contents([(entry["path"], int(entry["size_bytes"])) for entry in backup.files or []])


def restore_request(*, backup_id: str, request: RestoreRequest, actor: Actor) -> Run:
    """`POST /api/backup/<id>/restore`: a restore an admin asked for (a backup request waits for it).
    A bad request is a 400 (ServiceError) and queues nothing; a database target that is not empty
    needs `confirm` equal to the backup id (409 otherwise, audited), also for the job, which checks
    again inside the restore's transaction."""
    backup = restorable_backup(backup_id)
    if not backup.local:
        _check_offsite_copy(backup)
    contents = contents_of(backup)
    kinds = targets.kinds_of(request.target)
    if not kinds:
        raise ServiceError(f"Unknown restore target {request.target!r}: see GET /api/backup/restore/targets.")
    if request.component not in kinds:
        raise ServiceError(
            f"{request.target!r} is a {' and '.join(kinds)} target, not a {request.component} target."
        )
    params: dict[str, Any] = {
        "component": request.component,
        "path": request.path,
        "target": request.target,
        "dry_run": request.dry_run,
    }
    if request.component == targets.DATABASE:
        dump = contents.dump(request.path)
        if dump is None:
            raise ServiceError(f"{request.path!r} is not a database dump of this backup.")
        params["replace"] = _check_database_target(backup, request, actor)
        verb = "Dry run of the restore" if request.dry_run else "Restore"
        description = f"{verb} of {request.path} from {backup.id} into the database {request.target}"
    else:
        if contents.archive(request.path) is None:
            raise ServiceError(f"{request.path!r} is not an archive of this backup.")
        try:
            normalize_prefixes(request.paths)
        except ValueError as error:
            raise ServiceError(str(error).capitalize() + ".") from None
        directory = targets.directory(request.target)
        if directory is None or not directory.is_dir():
            raise Conflict(f"The restore directory {request.target!r} does not exist on this server.")
        params["paths"] = list(request.paths)
        verb = "Dry run of the extraction" if request.dry_run else "Extraction"
        description = f"{verb} of {request.path} from {backup.id} into {request.target}"
    return job_enqueue(
        kind=RunKind.RESTORE,
        actor=actor,
        params=params,
        backup_id=backup.id,
        automatic=False,
        description=description,
    )


def _check_offsite_copy(backup: Backup) -> None:
    """A backup whose folder is gone is restored from its off-site copy, read back with the age
    identity (OFFSITE_IDENTITY_FILE) when it is encrypted."""
    if backup.offsite_status != OffsiteStatus.OK:
        raise Conflict("This backup's folder is gone and it has no complete off-site copy.")
    problems = validate_settings(offsite.store_settings())
    if problems:
        raise Conflict("The off-site store cannot be read: " + " ".join(problems))


def _check_database_target(backup: Backup, request: RestoreRequest, actor: Actor) -> bool:
    """True when the restore may replace what the target holds (the admin confirmed with the id)."""
    url = targets.database_url(request.target) or ""
    try:
        state = inspect_target(url)
    except PgError as error:
        raise Conflict(f"The target database {request.target!r} cannot be reached: {error}") from None
    confirmed = request.confirm == backup.id
    if not state.empty and not confirmed and not request.dry_run:
        raise refuse(
            "restore.create",
            f"The target database {request.target!r} is not empty ({state.objects} objects, "
            f'{len(state.tables)} tables): a restore replaces everything in it. Send "confirm" '
            "equal to the backup id to go ahead, or run a dry run first.",
            actor=actor,
            target=backup.id,
            reason="non-empty target without confirmation",
        )
    return confirmed and not state.empty


# --- the job --------------------------------------------------------------------------------------


def job_prepare(run: Run) -> tuple[dict[str, Any], dict[str, str]]:
    """The restore job's parameters; the target database's URL goes in its environment."""
    request = run.params
    params: dict[str, Any] = {
        "root": str(settings.BACKUP_ROOT),
        "backup_id": run.backup_id,
        "component": request["component"],
        "path": request["path"],
        "target": request["target"],
        "dry_run": bool(request.get("dry_run")),
    }
    secrets: dict[str, str] = {}
    backup = Backup.objects.filter(id=run.backup_id).first()
    if backup is None:
        raise ValueError("the backup is gone")
    if not backup.local:
        # Read from the off-site copy: the store's section in the arguments, its secrets in the environment.
        params["store"] = offsite.store_section()
        secrets.update(offsite.credentials())
        if settings.OFFSITE_IDENTITY_PATH:
            secrets[offsite.IDENTITY_ENV] = str(settings.OFFSITE_IDENTITY_PATH)
    if request["component"] == targets.DATABASE:
        url = targets.database_url(request["target"])
        if not url:
            raise ValueError(f"the restore target {request['target']!r} is not configured any more")
        secrets[URL_ENV] = url
        params["replace"] = bool(request.get("replace"))
    else:
        directory = targets.directory(request["target"])
        if directory is None:
            raise ValueError(f"the restore directory {request['target']!r} is not configured any more")
        params["directory"] = str(directory)
        params["paths"] = list(request.get("paths") or [])
        try:
            free = shutil.disk_usage(directory).free
        except OSError:
            raise ValueError(f"the restore directory {request['target']!r} cannot be used") from None
        params["max_total_bytes"] = max(0, free - settings.MIN_FREE_BYTES)
    return params, secrets


def job_record(run: Run) -> None:
    """What a restore run's end means (inside the transaction that records the end): a run that did not
    succeed is marked incomplete in its result, whatever its process managed to say."""
    result = dict(run.result or {})
    succeeded = run.status == RunStatus.SUCCEEDED
    if not succeeded:
        result["complete"] = False
        result.setdefault("component", run.params.get("component"))
        result.setdefault("target", run.params.get("target"))
        if run.status == RunStatus.CANCELLED:
            result["cancelled"] = True
        Run.objects.filter(id=run.id).update(result=result)
        run.result = result
    with transaction.atomic():
        audit(
            "backup.restore",
            actor=Actor(run.triggered_by),
            target=run.backup_id,
            outcome="ok" if succeeded else "failed",
            details={
                "run_id": str(run.id),
                "component": run.params.get("component"),
                "path": run.params.get("path"),
                "target": run.params.get("target"),
                "dry_run": bool(run.params.get("dry_run")),
                "status": run.status,
                "complete": bool(result.get("complete")),
                "error": str(result.get("error") or run.error or "")[:500],
            },
        )


def remove_partial_folders() -> list[str]:
    """Half-written folders (`*.partial`) an extraction killed mid-way (SIGKILL, a crash of the
    machine) left in the restore directories: removed only while no restore run is active (a running
    one owns its own)."""
    if Run.objects.filter(kind=RunKind.RESTORE, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).exists():
        return []
    removed: list[str] = []
    for name in sorted(settings.RESTORE_DIRECTORIES):
        directory = targets.directory(name)
        if directory is None or not directory.is_dir():
            continue
        try:
            removed += [f"{name}:{folder}" for folder in files.remove_partial_folders(directory)]
        except (OSError, files.ExtractionError) as error:
            logger.warning("could not clean the restore directory %s: %s", name, error)
    if removed:
        logger.info("removed half-written restore folders", extra={"folders": removed})
    return removed
