"""Off-site copies in the service: what is owed, asking for a copy, starting the owed upload (or the
removal of deleted backups' copies and the garbage collection) as an automatic job, recording what a job
did, and reading a copy back for downloads and restores.

A backup is owed a copy (`offsite_status` pending) once its verification passed and off-site copies are
configured; a copy that failed for a passing reason is tried again after OFFSITE_RETRY_SECONDS, up to
MAX_ATTEMPTS times; a store that refuses is not retried until an admin asks again. Every network call
happens in a job process (credentials in its environment), never inside a transaction of the web or the
worker; reading a copy back for a download happens in the request.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from backups import events
from backups.audit import WORKER, Actor, AuditEvent, audit
from backups.catalogue.models import Backup, BackupStatus, OffsiteStatus
from backups.config.selectors import config_current
from backups.errors import Conflict, NotFound
from backups.notifications.services import notify_offsite_failed
from backups.offsite import crypto, remote
from backups.offsite.errors import IdentityError
from backups.offsite.layout import Manifest
from backups.offsite.models import RemoteDeletion
from backups.offsite.store import ACCESS_KEY_ENV, SECRET_KEY_ENV, StoreSettings, validate_settings
from backups.runs.models import ACTIVE_RUN_STATUSES, Run, RunKind, RunStatus
from backups.runs.services import PREEMPTED, job_enqueue

logger = logging.getLogger(__name__)

UPLOAD = "upload"
PRUNE = "prune"
MAX_ATTEMPTS = 3
GC_EVERY = timedelta(days=1)
IDENTITY_ENV = "OFFSITE_IDENTITY_FILE"


# --- where the copies go --------------------------------------------------------------------------------


def credentials() -> dict[str, str]:
    """The store's credentials as a job's environment (never its arguments)."""
    return {
        ACCESS_KEY_ENV: settings.OFFSITE_ACCESS_KEY_ID,
        SECRET_KEY_ENV: settings.OFFSITE_SECRET_ACCESS_KEY,
    }


def store_section(document: dict[str, Any] | None = None) -> dict[str, Any]:
    section = (document or config_current())["offsite"]
    return {key: section.get(key, "") for key in ("endpoint", "bucket", "prefix", "region", "storageClass")}


def store_settings(document: dict[str, Any] | None = None) -> StoreSettings:
    return StoreSettings.from_config(store_section(document), credentials())


def configuration_problems(document: dict[str, Any] | None = None) -> list[str]:
    """Why no copy can be made now, in words for the admin (empty when off-site copies are ready)."""
    document = document or config_current()
    if not document["offsite"]["enabled"]:
        return ["Off-site copies are disabled (offsite.enabled is false)."]
    problems = validate_settings(store_settings(document))
    problems += crypto.recipient_problems(document["encryptionRecipients"])
    return problems


def identities() -> list[Any] | None:
    """The age identity of OFFSITE_IDENTITY_FILE, or None when none is set (IdentityError if unusable)."""
    if not settings.OFFSITE_IDENTITY_PATH:
        return None
    return crypto.load_identities(settings.OFFSITE_IDENTITY_PATH)


def state_dir() -> Path:
    """Where uploads keep their resumable state: one folder for every backup, since an object being
    sent may be shared by two backups and its parts are worth finding again from either."""
    return Path(settings.BACKUP_STATE_DIR) / "offsite" / "uploads"


def documents_dir(run: Run) -> Path:
    return Path(settings.BACKUP_STATE_DIR) / "offsite" / "documents" / str(run.id)


# --- what is owed ---------------------------------------------------------------------------------------


def owe_verified_backups() -> int:
    """Every kept backup whose verification passed and that has no copy yet is owed one (enabling
    off-site copies thus copies the backups already kept, newest first; unchanged files are sent once)."""
    return Backup.objects.filter(
        offsite_status=OffsiteStatus.NONE, verified=True, local=True, status=BackupStatus.COMPLETED
    ).update(offsite_status=OffsiteStatus.PENDING, offsite_retry_at=None)


def unstick_uploads() -> int:
    """A backup left `uploading` by a job whose end was never recorded (its worker died after a backup
    request had already cancelled it) is owed its copy again."""
    active = Run.objects.filter(kind=RunKind.OFFSITE, status__in=ACTIVE_RUN_STATUSES).values_list(
        "backup_id", flat=True
    )
    return (
        Backup.objects.filter(offsite_status=OffsiteStatus.UPLOADING)
        .exclude(id__in=list(active))
        .update(offsite_status=OffsiteStatus.PENDING)
    )


def offsite_mark_owed(*, backup_ids: Iterable[str], actor: Actor) -> int:
    """Owe these backups a copy (the admin's action on a selection): the off-site step uploads them one
    after the other when the lane is free."""
    ids = list(backup_ids)
    with transaction.atomic():
        count = (
            Backup.objects.filter(id__in=ids, local=True, status=BackupStatus.COMPLETED)
            .exclude(offsite_status=OffsiteStatus.UPLOADING)
            .update(offsite_status=OffsiteStatus.PENDING, offsite_retry_at=None, offsite={})
        )
        for backup_id in ids:
            audit("backup.offsite.owe", actor=actor, target=backup_id)
    return count


def offsite_request(*, backup_id: str, actor: Actor) -> Run:
    """`POST /api/backup/<id>/offsite`: a copy an admin asked for (a backup request waits for it)."""
    backup = Backup.objects.filter(id=backup_id).first()
    if backup is None:
        raise NotFound("Backup not found.")
    if not backup.local:
        raise Conflict("This backup's folder is gone: only its off-site copy is left.")
    if backup.status != BackupStatus.COMPLETED:
        raise Conflict(f"Only a completed backup is copied off site; this one is {backup.status}.")
    problems = configuration_problems()
    if problems:
        raise Conflict("Off-site copies are not ready: " + " ".join(problems))
    return job_enqueue(
        kind=RunKind.OFFSITE,
        actor=actor,
        params={"action": UPLOAD},
        backup_id=backup_id,
        automatic=False,
        description=f"Off-site copy of {backup_id}",
    )


def offsite_start_due(*, now: datetime | None = None) -> Run | None:
    """Queue the automatic off-site job most owed: the upload of the newest backup owed a copy, else the
    removal of deleted backups' copies (with a garbage collection), else the daily garbage collection.
    None when off-site copies are not configured, nothing is owed, or the lane is busy."""
    now = now or timezone.now()
    unstick_uploads()
    if configuration_problems():
        return None
    owe_verified_backups()
    due = (
        Backup.objects.filter(offsite_status=OffsiteStatus.PENDING, local=True, status=BackupStatus.COMPLETED)
        .filter(Q(offsite_retry_at__isnull=True) | Q(offsite_retry_at__lte=now))
        .order_by("-created_at", "-id")
        .first()
    )
    if due is not None:
        return _enqueue_automatic(
            {"action": UPLOAD}, backup_id=due.id, description=f"Off-site copy of {due.id}"
        )
    if _prune_due(now):
        return _enqueue_automatic({"action": PRUNE, "gc": True}, description="Off-site: prune and collect")
    return None


def _enqueue_automatic(params: dict[str, Any], *, backup_id: str = "", description: str) -> Run | None:
    try:
        return job_enqueue(
            kind=RunKind.OFFSITE,
            actor=WORKER,
            params=params,
            backup_id=backup_id,
            automatic=True,
            description=description,
        )
    except Conflict:
        return None


def _prune_runs():
    # A prune run is the off-site run without a backup.
    return Run.objects.filter(kind=RunKind.OFFSITE, backup_id="")


def _prune_due(now: datetime) -> bool:
    last = _prune_runs().order_by("-created_at").first()
    if last is not None and last.is_active:
        return False
    retry = timedelta(seconds=settings.OFFSITE_RETRY_SECONDS)
    if RemoteDeletion.objects.exists() and (last is None or last.created_at <= now - retry):
        return True
    collected = _prune_runs().filter(status=RunStatus.SUCCEEDED).order_by("-created_at").first()
    if collected is None:
        return last is None or last.created_at <= now - retry
    return collected.created_at <= now - GC_EVERY


# --- the job --------------------------------------------------------------------------------------------


def job_prepare(run: Run) -> tuple[dict[str, Any], dict[str, str]]:
    """The off-site job's parameters and secrets; the backup shows `uploading` meanwhile."""
    document = config_current()
    recipients = list(document["encryptionRecipients"])
    params: dict[str, Any] = {
        "action": run.params.get("action", UPLOAD),
        "store": store_section(document),
        "state_dir": str(state_dir()),
        "recipients": recipients,
    }
    secrets = credentials()
    if settings.OFFSITE_IDENTITY_PATH:
        secrets[IDENTITY_ENV] = str(settings.OFFSITE_IDENTITY_PATH)
    if recipients:
        params["documents"] = str(write_documents(run, document))
    if params["action"] == PRUNE:
        doomed = list(
            RemoteDeletion.objects.order_by("created_at").values_list("backup_id", flat=True)[:1000]
        )
        Run.objects.filter(id=run.id).update(params={**run.params, "delete": doomed})
        params.update(
            delete=doomed,
            gc=bool(run.params.get("gc", True)),
            grace_seconds=settings.OFFSITE_GC_GRACE_SECONDS,
        )
        return params, secrets
    backup = Backup.objects.filter(id=run.backup_id).first()
    if backup is None or not backup.local:
        raise ValueError("the backup's folder is gone")
    if backup.offsite_status != OffsiteStatus.UPLOADING:
        Run.objects.filter(id=run.id).update(params={**run.params, "previous_status": backup.offsite_status})
    Backup.objects.filter(id=backup.id).update(offsite_status=OffsiteStatus.UPLOADING)
    params.update(
        root=str(settings.BACKUP_ROOT),
        backup_id=backup.id,
        metadata=manifest_metadata(backup),
        use_hashes=backup.verified,
        bytes_per_second=settings.OFFSITE_UPLOAD_BYTES_PER_SECOND,
    )
    return params, secrets


def manifest_metadata(backup: Backup) -> dict[str, Any]:
    """What the catalogue needs to rebuild this backup's row from the bucket alone."""
    return {
        "created_at": backup.created_at.isoformat(),
        "type": backup.type,
        "description": backup.description,
        "triggered_by": backup.triggered_by,
        "status": backup.status,
        "run_id": str(backup.run_id) if backup.run_id else None,
        "pinned": backup.pinned,
        "verification": {
            "status": backup.verification_status,
            "level": backup.verification_level,
            "at": backup.verified_at.isoformat() if backup.verified_at else None,
        },
    }


def write_documents(run: Run, document: dict[str, Any]) -> Path:
    """The config document and the audit export, for the job to store encrypted beside the copies. Only
    the service may read them here (the config holds notification URLs in clear); the job's end removes
    them."""
    folder = documents_dir(run)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    config_path = folder / "config.json"
    with open(os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        json.dump(document, handle, indent=1, sort_keys=True)
    audit_path = folder / "audit.jsonl"
    with open(os.open(audit_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        for event in AuditEvent.objects.order_by("id").iterator(chunk_size=2000):
            record = {
                "id": event.id,
                "created_at": event.created_at.isoformat(),
                "actor": event.actor,
                "action": event.action,
                "target": event.target,
                "client_ip": event.client_ip,
                "outcome": event.outcome,
                "details": event.details,
            }
            handle.write(json.dumps(record, sort_keys=True, default=str) + "\n")
    return folder


def job_record(run: Run) -> None:
    """What an off-site run's end means (inside the transaction that records the end)."""
    shutil.rmtree(documents_dir(run), ignore_errors=True)
    if run.params.get("action", UPLOAD) == PRUNE:
        _record_prune(run)
        return
    backup = Backup.objects.filter(id=run.backup_id).first()
    if backup is None:
        return
    result = run.result or {}
    now = timezone.now()
    if run.status == RunStatus.SUCCEEDED and "error" not in result:
        _record_copy(run, backup, result, now)
        return
    if run.status == RunStatus.CANCELLED and run.error == PREEMPTED:
        # Made way for a backup: owed again at once; the next attempt resumes from the parts sent.
        Backup.objects.filter(id=backup.id).update(
            offsite_status=OffsiteStatus.PENDING, offsite_retry_at=None
        )
        return
    if run.status == RunStatus.CANCELLED:
        _record_failure(run, backup, "The upload was cancelled.", now, notify=False)
        return
    error = str(result.get("error") or run.error or f"the off-site job {run.status}")
    transient = bool(result.get("transient", True))
    attempts = int((backup.offsite or {}).get("attempts", 0)) + 1
    if run.automatic and transient and attempts < MAX_ATTEMPTS:
        Backup.objects.filter(id=backup.id).update(
            offsite_status=OffsiteStatus.PENDING,
            offsite_retry_at=now + timedelta(seconds=settings.OFFSITE_RETRY_SECONDS),
            offsite={**(backup.offsite or {}), "attempts": attempts, "error": error[:2000]},
        )
        logger.warning(
            "off-site copy of %s failed (attempt %d), tried again later: %s", backup.id, attempts, error[:300]
        )
        return
    _record_failure(run, backup, error, now, attempts=attempts, refused=bool(result.get("refused")))


def _record_copy(run: Run, backup: Backup, result: dict[str, Any], now: datetime) -> None:
    details = {
        key: result.get(key)
        for key in (
            "manifest_key",
            "files",
            "skipped_bytes",
            "resumed_bytes",
            "objects_uploaded",
            "objects_skipped",
            "seconds",
            "encrypted",
            "documents",
        )
    }
    Backup.objects.filter(id=backup.id).update(
        offsite_status=OffsiteStatus.OK,
        offsite_at=now,
        offsite_bytes=int(result.get("total_bytes") or 0),
        offsite_uploaded_bytes=int(result.get("uploaded_bytes") or 0),
        offsite_retry_at=None,
        offsite={**details, "run_id": str(run.id)},
    )
    # The copy is wanted again (a folder that came back under the id of a deleted backup).
    RemoteDeletion.objects.filter(backup_id=backup.id).delete()
    audit(
        "backup.offsite",
        actor=Actor(run.triggered_by),
        target=backup.id,
        details={
            "run_id": str(run.id),
            "total_bytes": result.get("total_bytes"),
            "uploaded_bytes": result.get("uploaded_bytes"),
            "skipped_bytes": result.get("skipped_bytes"),
            "resumed_bytes": result.get("resumed_bytes"),
            "encrypted": result.get("encrypted"),
        },
    )


def _record_failure(
    run: Run,
    backup: Backup,
    error: str,
    now: datetime,
    *,
    notify: bool = True,
    attempts: int = 1,
    refused: bool = False,
) -> None:
    # A complete copy made earlier is still whole in the store (an upload never removes what an older
    # manifest names, and replaces the manifest only at its very end): the backup keeps `ok`.
    Backup.objects.filter(id=backup.id).update(
        offsite_status=OffsiteStatus.OK if backup.offsite_at else OffsiteStatus.FAILED,
        offsite_retry_at=None,
        offsite={
            **({"kept": "the copy made before this attempt"} if backup.offsite_at else {}),
            "error": error[:2000],
            "attempts": attempts,
            "refused": refused,
            "run_id": str(run.id),
            "failed_at": now.isoformat(),
        },
    )
    audit(
        "backup.offsite",
        actor=Actor(run.triggered_by),
        target=backup.id,
        outcome="failed",
        details={"run_id": str(run.id), "error": error[:2000], "refused": refused},
    )
    if notify:
        events.notify("error", f"Off-site copy of {backup.id} failed: {error[:300]}")
        notify_offsite_failed(backup_id=backup.id, error=error)


def _record_prune(run: Run) -> None:
    result = run.result or {}
    removed = [str(value) for value in result.get("removed") or []]
    if removed:
        RemoteDeletion.objects.filter(backup_id__in=removed).delete()
    failed = result.get("failed") or {}
    for backup_id, error in failed.items():
        row = RemoteDeletion.objects.filter(backup_id=backup_id).first()
        if row is not None:
            RemoteDeletion.objects.filter(id=row.id).update(
                attempts=row.attempts + 1, last_error=str(error)[:500]
            )
    if removed or failed or result.get("gc"):
        gc = result.get("gc") or {}
        audit(
            "offsite.prune",
            actor=Actor(run.triggered_by),
            target="offsite",
            outcome="ok" if not failed and not gc.get("problems") else "failed",
            details={"run_id": str(run.id), "removed": removed, "failed": failed, "gc": gc},
        )


# --- reading -------------------------------------------------------------------------------------------


def status_counts() -> dict[str, int]:
    """Backups by the state of their off-site copy (every state present, zero included)."""
    counts = dict(Backup.objects.values_list("offsite_status").annotate(count=Count("id")).order_by())
    return {value: counts.get(value, 0) for value in OffsiteStatus.values}


def last_copy_at() -> datetime | None:
    return (
        Backup.objects.filter(offsite_status=OffsiteStatus.OK, offsite_at__isnull=False)
        .order_by("-offsite_at")
        .values_list("offsite_at", flat=True)
        .first()
    )


def remote_manifest(backup_id: str, *, with_identity: bool = True) -> Manifest:
    """The manifest of a backup's copy, decrypted with OFFSITE_IDENTITY_FILE (IdentityError without)."""
    return remote.fetch_manifest(store_settings(), backup_id, identities() if with_identity else None)


def open_remote_file(*, backup_id: str, rel_path: str) -> BinaryIO:
    """One file of a backup's off-site copy as a readable binary stream of its plaintext (checked
    against its sha256 as it is read; close it). For restores of a backup whose folder is gone. Raises
    NotFound for a file the copy does not hold, IdentityError without a usable identity, OffsiteError
    for the store's failures."""
    found = identities()
    if found is None:
        raise IdentityError("reading an off-site copy needs the age identity (OFFSITE_IDENTITY_FILE)")
    manifest = remote.fetch_manifest(store_settings(), backup_id, found)
    item = next((entry for entry in manifest.files if entry.path == rel_path), None)
    if item is None:
        raise NotFound("File not found in this backup.")
    return remote.open_remote_file(store_settings(), item, found, encrypted=manifest.encrypted)


def remote_listing(backup_id: str) -> list[tuple[str, int]]:
    """The files of a backup's off-site copy, `[(rel_path, size)]`, as `open_remote_file` opens them."""
    return [(entry.path, entry.size) for entry in remote_manifest(backup_id).files]


def remote_job_params() -> tuple[dict[str, Any], dict[str, str]]:
    """For another kind's job (a restore of a backup whose folder is gone) that reads a copy in its own
    process: `{"store": ...}` for its params, and the credentials and the identity's path for its
    environment. The job opens the copy with `backups.offsite.job.open_remote_backup`."""
    secrets = credentials()
    if settings.OFFSITE_IDENTITY_PATH:
        secrets[IDENTITY_ENV] = str(settings.OFFSITE_IDENTITY_PATH)
    return {"store": store_section()}, secrets
