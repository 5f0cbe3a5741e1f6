"""Rebuilding the catalogue from the off-site bucket alone (`manage.py offsite_rebuild`): a Backup row for
every complete copy, marked not local, and the config document stored beside the copies."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backups.audit import Actor, audit
from backups.catalogue import sync
from backups.catalogue.models import Backup, BackupStatus, BackupType, OffsiteStatus
from backups.catalogue.services import ensure_backup_root
from backups.config.document import ConfigInvalid
from backups.config.services import config_update
from backups.offsite import crypto, layout, remote
from backups.offsite.errors import OffsiteError
from backups.offsite.layout import Manifest
from backups.offsite.services import credentials
from backups.offsite.store import StoreSettings, validate_settings

logger = logging.getLogger(__name__)


@dataclass
class RebuildReport:
    added: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # rows that already existed (--force)
    incomplete: list[str] = field(default_factory=list)  # copies that never finished
    damaged: dict[str, list[str]] = field(default_factory=dict)  # id → paths whose object is gone
    problems: list[str] = field(default_factory=list)
    config: str = "none stored"
    audit: str = "not asked"
    local_now: list[str] = field(default_factory=list)  # rows whose folder is in the backup root

    def lines(self, verb: str) -> list[str]:
        out = [f"{verb} {len(self.added)} backup(s) from the store (not local: only off site)"]
        out += [f"  {backup_id}" for backup_id in self.added]
        if self.kept:
            out.append(f"kept {len(self.kept)} backup(s) already in the catalogue: {', '.join(self.kept)}")
        if self.local_now:
            out.append(f"{len(self.local_now)} of them have their folder in the backup root again (local)")
        for backup_id, paths in self.damaged.items():
            out.append(
                f"skipped {backup_id}: the store misses the objects of {len(paths)} file(s): "
                + ", ".join(paths[:5])
                + (" …" if len(paths) > 5 else "")
            )
        if self.incomplete:
            out.append(f"skipped {len(self.incomplete)} unfinished copy(ies): {', '.join(self.incomplete)}")
        out += [f"problem: {problem}" for problem in self.problems]
        out.append(f"config document: {self.config}")
        out.append(f"audit export: {self.audit}")
        return out


def rebuild_catalogue(
    *,
    section: dict[str, Any],
    identity: Path | None,
    actor: Actor,
    replace_config: bool,
    audit_to: Path | None = None,
    dry_run: bool = False,
) -> RebuildReport:
    store = StoreSettings.from_config(section, credentials())
    problems = validate_settings(store)
    if problems:
        raise OffsiteError("the store cannot be used: " + "; ".join(problems))
    identity_path = identity or settings.OFFSITE_IDENTITY_PATH
    identities = crypto.load_identities(identity_path) if identity_path else None
    found = remote.rebuild(store, identities)
    report = RebuildReport(incomplete=list(found.incomplete), problems=list(found.problems))
    report.damaged = {key: list(paths) for key, paths in found.missing_objects.items()}
    existing = set(Backup.objects.values_list("id", flat=True))
    rows = []
    for manifest in found.backups:
        if manifest.backup_id in report.damaged:
            continue
        if manifest.backup_id in existing:
            report.kept.append(manifest.backup_id)
            continue
        rows.append(_row(manifest))
        report.added.append(manifest.backup_id)
    if found.config is not None:
        report.config = "found"
    if audit_to is not None:
        report.audit = _write_audit(store, identities, audit_to, found.audit_export, dry_run)
    if dry_run:
        return report
    with transaction.atomic():
        Backup.objects.bulk_create(rows, ignore_conflicts=True)
        audit(
            "offsite.rebuild",
            actor=actor,
            target="catalogue",
            details={
                "added": report.added,
                "kept": report.kept,
                "damaged": list(report.damaged),
                "incomplete": report.incomplete,
                "bucket": store.bucket,
                "prefix": store.prefix,
            },
        )
    if found.config is not None:
        report.config = _restore_config(found.config, actor, replace_config)
    # A folder still (or again) in the root makes its row local: the sync walks it like any other.
    ensure_backup_root()
    sync.reset()
    sync.sync_all()
    report.local_now = list(
        Backup.objects.filter(id__in=report.added, local=True).values_list("id", flat=True)
    )
    return report


def _row(manifest: Manifest) -> Backup:
    meta = dict(manifest.metadata)
    created = _time(meta.get("created_at")) or _time(manifest.uploaded_at) or timezone.now()
    status = meta.get("status") if meta.get("status") in BackupStatus.values else BackupStatus.COMPLETED
    if status == BackupStatus.RUNNING:
        status = BackupStatus.INCOMPLETE
    files = sorted(
        ({"path": item.path, "size_bytes": item.size} for item in manifest.files),
        key=lambda entry: entry["path"],
    )
    return Backup(
        id=manifest.backup_id,
        created_at=created,
        status=status,
        type=meta.get("type") if meta.get("type") in BackupType.values else BackupType.EXTERNAL,
        description=str(meta.get("description") or "")[:500],
        triggered_by=str(meta.get("triggered_by") or "")[:200],
        size_bytes=manifest.total_bytes,
        file_count=len(files),
        files=files,
        pinned=bool(meta.get("pinned")),
        local=False,
        offsite_status=OffsiteStatus.OK,
        offsite_at=_time(manifest.uploaded_at) or created,
        offsite_bytes=manifest.total_bytes,
        offsite={"rebuilt": True, "encrypted": manifest.encrypted},
        signature="",
    )


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)


def _restore_config(document: dict[str, Any], actor: Actor, replace: bool) -> str:
    if not replace:
        return "found, not restored (the catalogue was not empty: use --force)"
    try:
        config_update(document=document, actor=actor, partial=False)
    except ConfigInvalid as error:
        return f"found but not valid here, not restored: {error.errors}"
    return "restored"


def _write_audit(store: StoreSettings, identities: Any, target: Path, exists: bool, dry_run: bool) -> str:
    if not exists:
        return "none stored"
    if not identities:
        return "stored, but reading it needs the age identity"
    if dry_run:
        return f"would be written to {target}"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as handle:
        size = remote.fetch_service_document(store, layout.SERVICE_AUDIT, identities, handle)
    with contextlib.suppress(OSError):
        os.chmod(target, 0o600)
    return f"written to {target} ({size} bytes)"
