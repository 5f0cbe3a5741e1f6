"""The restore job, in a process of its own (`python -m backups.jobs restore ...`). Pure: no Django.

Params (never a secret): `root`, `backup_id`, `component` ("database" | "files"), `path` (the dump or
the archive, as the backup lists it), `target` (its name), `dry_run`, and
- for a database: `replace` (the admin confirmed with the backup id: a non-empty target is replaced, in
  the same transaction as the restore). The target's URL comes in the environment (RESTORE_TARGET_URL).
- for files: `directory` (the restore directory), `paths` (optional member prefixes),
  `max_total_bytes` (what the directory's disk can take).
- for a backup whose folder is gone: `store` (the config's `offsite` section). Its files are then read
  from the off-site copy, decrypted and checked against their sha256 as they stream; the store's
  credentials and the age identity's path come in the environment.

The result line holds `{"component", "target", "dryRun", "complete", ...}` with the restore's own
document under `database` or `files`, and `error` when it did not succeed. A cancel (SIGTERM) rolls a
database restore back and removes a files restore's half-written folder; the result says so.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from backups.catalogue import scan
from backups.catalogue.paths import BackupNotFound, CatalogueError, member_opener
from backups.jobs.protocol import Reporter
from backups.offsite import crypto, remote
from backups.offsite.errors import OffsiteError
from backups.offsite.store import Store, StoreSettings
from backups.restore.contents import backup_contents
from backups.restore.database import TargetNotEmpty, dry_run_database, restore_dump
from backups.restore.files import ExtractionError, Limits, extract_archive, folder_name, plan_extraction
from backups.verification.pg import PgError

URL_ENV = "RESTORE_TARGET_URL"
IDENTITY_ENV = "OFFSITE_IDENTITY_FILE"


@contextlib.contextmanager
def _local(root: Path, backup_id: str) -> Iterator[tuple[list[tuple[str, int]], Callable[[str], BinaryIO]]]:
    listing = [(entry.path, entry.size_bytes) for entry in scan.scan_backup(root, backup_id).files]
    with member_opener(root, backup_id) as open_file:
        yield listing, open_file


@contextlib.contextmanager
def _remote(
    section: dict[str, Any], backup_id: str
) -> Iterator[tuple[list[tuple[str, int]], Callable[[str], BinaryIO]]]:
    """The off-site copy's files: the listing from its manifest, each file a checked plaintext stream."""
    client = Store(StoreSettings.from_config(section, os.environ))
    identity_file = os.environ.get(IDENTITY_ENV)
    identities = crypto.load_identities(identity_file) if identity_file else None
    manifest = remote.fetch_manifest(client, backup_id, identities)
    items = {item.path: item for item in manifest.files}

    def open_file(path: str) -> BinaryIO:
        if path not in items:
            raise BackupNotFound("file not found")
        return remote.open_remote_file(client, items[path], identities, encrypted=manifest.encrypted)

    yield sorted((item.path, item.size) for item in manifest.files), open_file


def run(params: dict[str, Any], reporter: Reporter) -> int:
    root, backup_id = Path(params["root"]), str(params["backup_id"])
    component, path = params["component"], str(params["path"])
    base: dict[str, Any] = {
        "component": component,
        "target": params["target"],
        "path": path,
        "dryRun": bool(params.get("dry_run")),
        "complete": False,
    }
    source = _remote(params["store"], backup_id) if params.get("store") else _local(root, backup_id)
    if params.get("store"):
        base["from_offsite_copy"] = True
    try:
        with source as (listing, open_file):
            contents = backup_contents(listing, open_file)
            try:
                if component == "database":
                    document = _database(params, contents, open_file, reporter)
                else:
                    document = _files(params, backup_id, contents, open_file, reporter)
            except SystemExit:
                # Cancelled (SIGTERM): what the restore left is said before the process ends.
                reporter.result({**base, "cancelled": True, "error": _cancelled(component)})
                raise
    except (BackupNotFound, CatalogueError):
        document = {"error": f"{path} cannot be read from the backup folder"}
    except OffsiteError as error:
        document = {"error": f"the off-site copy cannot be read: {error.message}"}
    reporter.result({**base, **document})
    return 0


def _cancelled(component: str) -> str:
    if component == "database":
        return "cancelled: the restore was rolled back; the target database is as it was before"
    return "cancelled: the new folder was removed"


def _database(params: dict[str, Any], contents: Any, open_file: Any, reporter: Reporter) -> dict[str, Any]:
    path = str(params["path"])
    dump = contents.dump(path)
    if dump is None:
        return {"error": f"{path} is not a database dump of this backup"}
    url = os.environ.get(URL_ENV, "")
    if not url:
        return {"error": "the target database is not configured any more"}
    try:
        if params.get("dry_run"):
            reporter.progress(10, f"looking at the target {params['target']}")
            plan = dry_run_database(url, dump)
            plan["would_replace"] = bool(plan["needs_confirm"])
            plan["confirmed"] = bool(params.get("replace"))
            return {"database": plan}
        with open_file(path) as handle:
            result = restore_dump(
                url,
                path,
                handle,
                size_bytes=dump.size_bytes,
                replace_existing=bool(params.get("replace")),
                on_progress=reporter.progress,
            )
    except TargetNotEmpty as refusal:
        return {"error": f"restore refused: {refusal}; confirm with the backup id to replace it"}
    except PgError as error:
        return {"error": str(error)}
    document: dict[str, Any] = {"database": result.to_document(), "complete": result.complete}
    if not result.ok:
        document["error"] = result.error or "the restore did not complete"
    return document


def _files(
    params: dict[str, Any], backup_id: str, contents: Any, open_file: Any, reporter: Reporter
) -> dict[str, Any]:
    path = str(params["path"])
    archive = contents.archive(path)
    if archive is None:
        return {"error": f"{path} is not an archive of this backup"}
    limits = Limits(max_total_bytes=params.get("max_total_bytes"))
    prefixes = params.get("paths") or None
    name = folder_name(backup_id, datetime.now(UTC))
    handle: BinaryIO
    with open_file(path) as handle:
        if params.get("dry_run"):
            report = plan_extraction(
                handle,
                archive.compression,
                prefixes=prefixes,
                limits=limits,
                size_bytes=archive.size_bytes,
                on_progress=reporter.progress,
            )
            document: dict[str, Any] = {"files": {**report.to_document(), "would_create": name}}
        else:
            try:
                report = extract_archive(
                    handle,
                    archive.compression,
                    params["directory"],
                    name,
                    prefixes=prefixes,
                    limits=limits,
                    size_bytes=archive.size_bytes,
                    on_progress=reporter.progress,
                )
            except ExtractionError as error:
                return {"error": str(error)}
            document = {"files": report.to_document(), "complete": report.ok}
    if not report.ok:
        document["error"] = report.error or "the extraction did not complete"
    return document
