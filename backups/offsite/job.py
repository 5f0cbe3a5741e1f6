"""The off-site job, in a process of its own (`python -m backups.jobs offsite ...`). Pure: no Django.

Two actions:
- `upload`: copy one backup folder to the store (`upload_backup`, resumable: a job that was killed or
  cancelled continues from the parts the store holds), then refresh the service's own documents (the
  config document and the audit export the worker wrote beside the job) in the store.
- `prune`: remove the copies of deleted backups from the store's list, then collect the objects no copy
  references (`garbage_collect`, with its default grace), and refresh the service's documents.

Params (never a secret): `action`, `store` (the config's `offsite` section), `state_dir`, `recipients`;
for `upload` also `root`, `backup_id`, `metadata`, `use_hashes`, `bytes_per_second`; for `prune`
`delete` (backup ids), `gc` and `grace_seconds`; for both optionally `documents` (a folder holding
`config.json` and `audit.jsonl`). The credentials (and the age identity's path, for collecting copies
without an index) come in the environment. The result line holds `UploadResult.as_dict()` (upload) or
what was removed (prune), or `error` with `transient` (worth an automatic retry) and `refused` (the
store said no).
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from backups.catalogue import scan, sidecar
from backups.catalogue.paths import BackupNotFound, open_member
from backups.jobs.protocol import Reporter
from backups.offsite import crypto, layout, remote
from backups.offsite.errors import (
    IdentityError,
    IntegrityError,
    OffsiteError,
    RecipientError,
    StoreError,
    StoreRefused,
)
from backups.offsite.store import Store, StoreSettings, validate_settings
from backups.offsite.upload import upload_backup
from backups.verification.manifest import MANIFEST_NAME, ManifestError, parse_manifest

IDENTITY_ENV = "OFFSITE_IDENTITY_FILE"
DOCUMENTS = (layout.SERVICE_CONFIG, layout.SERVICE_AUDIT)


def store_settings(section: Mapping[str, Any], environ: Mapping[str, str]) -> StoreSettings:
    """The store from the params' `store` section and the credentials in the environment."""
    return StoreSettings.from_config(section, environ)


def run(params: dict[str, Any], reporter: Reporter) -> int:
    store = store_settings(params.get("store") or {}, os.environ)
    problems = validate_settings(store)
    if problems:
        reporter.result(failure("; ".join(problems), transient=False))
        return 0
    action = params.get("action", "upload")
    try:
        if action == "upload":
            document = upload(store, params, reporter)
        elif action == "prune":
            document = prune(store, params, reporter)
        else:
            document = failure(f"unknown off-site action {action!r}", transient=False)
    except BackupNotFound:
        document = failure("the backup folder is gone", transient=False)
    except OffsiteError as error:
        document = failure(
            error.message, transient=_transient(error), refused=isinstance(error, StoreRefused)
        )
    reporter.result(document)
    # An error is a verdict, not a crash: the worker reads it from the result (exit 0 with `error`).
    return 0


def failure(message: str, *, transient: bool, refused: bool = False) -> dict[str, Any]:
    return {"error": message[:2000], "transient": transient, "refused": refused}


def _transient(error: OffsiteError) -> bool:
    """Worth trying again later: the store could not be reached or answered with an error of its own.
    Not: a refusal (credentials, policy), content that does not match, a bad key."""
    if isinstance(error, StoreRefused | IntegrityError | RecipientError | IdentityError):
        return False
    return isinstance(error, StoreError) or type(error) is OffsiteError


# --- upload ---------------------------------------------------------------------------------------------


def upload(store: StoreSettings, params: Mapping[str, Any], reporter: Reporter) -> dict[str, Any]:
    root, backup_id = Path(params["root"]), str(params["backup_id"])
    listing = [(entry.path, entry.size_bytes) for entry in scan.scan_backup(root, backup_id).files]
    open_file = opener(root, backup_id)
    hashes = verified_hashes(root, backup_id, listing, open_file) if params.get("use_hashes") else {}
    rate = int(params.get("bytes_per_second") or 0)
    if rate > 0:
        open_file = paced(open_file, Pace(rate))
    recipients = list(params.get("recipients") or [])
    result = upload_backup(
        store,
        backup_id,
        listing,
        open_file,
        metadata=dict(params.get("metadata") or {}),
        state_dir=Path(params["state_dir"]),
        recipients=recipients,
        hashes=hashes,
        on_progress=lambda percent, message: reporter.progress(min(percent, 97), message),
    )
    document = {**result.as_dict(), "encrypted": bool(recipients), "hashes_given": len(hashes)}
    reporter.progress(98, "refreshing the service's documents in the store")
    document["documents"] = refresh_documents(store, params, recipients)
    return document


def opener(root: Path, backup_id: str):
    """Each call resolves from the root's descriptor on its own (the uploader opens files from more than
    one thread, so no descriptor chain is shared between calls)."""

    def open_file(rel_path: str) -> BinaryIO:
        return open_member(root, backup_id, rel_path).file  # type: ignore[return-value]

    return open_file


def verified_hashes(
    root: Path, backup_id: str, listing: Sequence[tuple[str, int]], open_file: Any
) -> dict[str, str]:
    """The digests of the manifest the backup's verification passed against (the script's
    MANIFEST.sha256, else the one the service built), for the files of the listing. The uploader still
    hashes what it sends and refuses a file that does not match, so a stale manifest cannot slip in."""
    sizes = dict(listing)
    text: bytes | str | None = None
    if MANIFEST_NAME in sizes:
        with open_file(MANIFEST_NAME) as handle:
            text = handle.read(16 << 20)
    else:
        text = sidecar.read_manifest(root, backup_id)
    if not text:
        return {}
    try:
        entries = parse_manifest(text)
    except ManifestError:
        return {}
    return {entry.path: entry.sha256 for entry in entries if entry.path in sizes}


class Pace:
    """A shared budget of bytes per second over every reader of one upload (the hashing and the
    uploading threads alike): each read waits until its bytes fit the rate."""

    def __init__(self, bytes_per_second: int) -> None:
        self.rate = float(bytes_per_second)
        self.lock = threading.Lock()
        self.free_at = time.monotonic()

    def take(self, count: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.free_at = max(self.free_at, now) + count / self.rate
            wait = self.free_at - now
        if wait > 0:
            time.sleep(wait)


class _PacedReader(io.RawIOBase):
    # No fileno(): the encrypting child process would read the descriptor itself, past the pace.
    def __init__(self, inner: BinaryIO, pace: Pace) -> None:
        self.inner = inner
        self.pace = pace

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size if size is not None and size >= 0 else 1 << 20)
        if data:
            self.pace.take(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.inner.close()
        super().close()


def paced(open_file: Any, pace: Pace):
    def open_paced(rel_path: str) -> BinaryIO:
        return _PacedReader(open_file(rel_path), pace)  # type: ignore[return-value]

    return open_paced


# --- prune ----------------------------------------------------------------------------------------------


def prune(store: StoreSettings, params: Mapping[str, Any], reporter: Reporter) -> dict[str, Any]:
    doomed = [str(backup_id) for backup_id in params.get("delete") or []]
    removed: list[str] = []
    failed: dict[str, str] = {}
    for number, backup_id in enumerate(doomed):
        reporter.progress(number * 50 // max(1, len(doomed)), f"removing the copy of {backup_id}")
        try:
            remote.delete_backup(store, backup_id)
            removed.append(backup_id)
        except OffsiteError as error:
            failed[backup_id] = error.message[:500]
    document: dict[str, Any] = {"removed": removed, "failed": failed}
    if params.get("gc"):
        reporter.progress(50, "collecting objects no copy references")
        identities, problem = identities_from(os.environ)
        grace = params.get("grace_seconds")
        result = remote.garbage_collect(
            store,
            identities=identities,
            grace=remote.DEFAULT_GRACE if grace is None else timedelta(seconds=int(grace)),
        )
        document["gc"] = result.as_dict()
        if problem:
            document["gc"]["identity"] = problem
    reporter.progress(95, "refreshing the service's documents in the store")
    document["documents"] = refresh_documents(store, params, list(params.get("recipients") or []))
    return document


def identities_from(environ: Mapping[str, str]) -> tuple[list[Any] | None, str]:
    path = environ.get(IDENTITY_ENV, "")
    if not path:
        return None, ""
    try:
        return crypto.load_identities(path), ""
    except IdentityError as error:
        return None, error.message


# --- for other jobs -------------------------------------------------------------------------------------


def open_remote_backup(
    params: Mapping[str, Any], backup_id: str, environ: Mapping[str, str] = os.environ
) -> tuple[list[tuple[str, int]], Callable[[str], BinaryIO]]:
    """A backup's off-site copy as a listing `[(rel_path, size)]` and an opener of plaintext streams
    (checked against their sha256 as they are read), for a job process (a restore) whose params carry
    `store` (`services.remote_job_params`). Needs OFFSITE_IDENTITY_FILE in `environ` for an encrypted
    copy (IdentityError otherwise); RemoteNotFound when the store holds no complete copy."""
    client = Store(store_settings(params.get("store") or {}, environ))
    identities, problem = identities_from(environ)
    if problem:
        raise IdentityError(problem)
    manifest = remote.fetch_manifest(client, backup_id, identities)
    items = {item.path: item for item in manifest.files}

    def open_file(rel_path: str) -> BinaryIO:
        item = items.get(rel_path)
        if item is None:
            raise remote.RemoteNotFound(f"the copy of {backup_id} holds no such file")
        return remote.open_remote_file(client, item, identities, encrypted=manifest.encrypted)

    return [(item.path, item.size) for item in manifest.files], open_file


# --- the service's documents ----------------------------------------------------------------------------


def refresh_documents(
    store: StoreSettings, params: Mapping[str, Any], recipients: list[str]
) -> dict[str, Any]:
    """Stores the config document and the audit export the worker left in `documents`. Never fails the
    job: the backup's copy is what matters, and the next job tries again."""
    folder = params.get("documents")
    if not folder:
        return {"skipped": "not asked"}
    if not recipients:
        return {"skipped": "the service's documents are only stored encrypted: set encryptionRecipients"}
    sent: dict[str, Any] = {}
    for name in DOCUMENTS:
        path = Path(folder) / name
        try:
            with open(path, "rb") as source:
                sent[name] = remote.upload_service_document(
                    store, name, source, recipients, state_dir=Path(params["state_dir"])
                )
        except FileNotFoundError:
            continue
        except OSError as error:
            sent[name] = {"error": error.strerror or type(error).__name__}
        except OffsiteError as error:
            sent[name] = {"error": error.message[:500]}
    with contextlib.suppress(OSError):
        for name in DOCUMENTS:
            (Path(folder) / name).unlink(missing_ok=True)
    return sent
