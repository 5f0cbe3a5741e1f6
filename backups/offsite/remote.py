"""Reading copies back, removing them, collecting garbage, and the service's own disaster recovery.

Everything here works from the bucket alone: a lost server is rebuilt from the manifests (with the age
identity), the config document and the audit export kept under `service/`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from pyrage import x25519

from backups.offsite import crypto, layout
from backups.offsite.errors import Cancelled, IdentityError, IntegrityError, OffsiteError, RecipientError
from backups.offsite.layout import Manifest, ManifestFile
from backups.offsite.store import Store, StoreSettings, initiated_before
from backups.offsite.upload import CHUNK, DEFAULT_PART_SIZE, MIN_PART_SIZE, connect

Identities = Sequence[x25519.Identity]

DEFAULT_GRACE = timedelta(hours=6)
DEFAULT_STALE_UPLOADS = timedelta(days=2)
INDEX_MAX_BYTES = 64 << 20
CONFIG_MAX_BYTES = 16 << 20


class RemoteNotFound(OffsiteError):
    """The bucket holds no (complete) copy of that backup or document."""


@dataclass(frozen=True)
class RemoteBackup:
    """A backup the bucket knows of. `complete` is true when its manifest exists."""

    backup_id: str
    complete: bool
    encrypted: bool
    manifest_key: str | None
    index_key: str | None
    last_modified: datetime | None


def list_backups(store: StoreSettings | Store) -> list[RemoteBackup]:
    """Every backup with a manifest or an index in the bucket, by id."""
    client = connect(store)
    manifests: dict[str, tuple[str, bool, datetime | None]] = {}
    indexes: dict[str, str] = {}
    for item in client.list(layout.BACKUPS):
        parsed = layout.parse_backups_key(client.settings.rel(item["Key"]))
        if parsed is None:
            continue
        backup_id, kind, encrypted = parsed
        if kind == "index":
            indexes[backup_id] = item["Key"]
        elif backup_id not in manifests or encrypted:
            manifests[backup_id] = (item["Key"], encrypted, item.get("LastModified"))
    found = []
    for backup_id in sorted(set(manifests) | set(indexes)):
        manifest = manifests.get(backup_id)
        found.append(
            RemoteBackup(
                backup_id=backup_id,
                complete=manifest is not None,
                encrypted=manifest[1] if manifest else False,
                manifest_key=manifest[0] if manifest else None,
                index_key=indexes.get(backup_id),
                last_modified=manifest[2] if manifest else None,
            )
        )
    return found


def fetch_manifest(
    store: StoreSettings | Store, backup_id: str, identities: Identities | None = None
) -> Manifest:
    """A backup's manifest, decrypted with `identities` when it is encrypted. NotFound-like
    OffsiteError when the bucket holds no manifest for it (an unfinished copy has none)."""
    client = connect(store)
    for encrypted in (True, False):
        key = client.settings.key(layout.manifest_key(backup_id, encrypted=encrypted))
        if client.head(key) is None:
            continue
        data = client.get_bytes(key, layout.MANIFEST_MAX_BYTES)
        if encrypted:
            if not identities:
                raise IdentityError(
                    f"the manifest of {backup_id} is encrypted: an age identity is needed "
                    "(OFFSITE_IDENTITY_FILE)"
                )
            data = crypto.decrypt_bytes(data, identities)
        manifest = Manifest.from_json(data)
        if manifest.backup_id != backup_id:
            raise IntegrityError(f"the manifest stored for {backup_id} describes {manifest.backup_id}")
        return manifest
    raise RemoteNotFound(f"the store holds no complete copy of {backup_id}")


def fetch_index(store: StoreSettings | Store, backup_id: str) -> set[str] | None:
    """The object keys (relative to the prefix) a backup's `.objects` index names; None without one."""
    client = connect(store)
    key = client.settings.key(layout.index_key(backup_id))
    if client.head(key) is None:
        return None
    return layout.parse_index(client.get_bytes(key, INDEX_MAX_BYTES))


# --- file contents --------------------------------------------------------------------------------------


def open_remote_file(
    store: StoreSettings | Store,
    item: ManifestFile,
    identities: Identities | None = None,
    *,
    encrypted: bool | None = None,
) -> BinaryIO:
    """One file of a copy as a readable binary stream of its plaintext. The sha256 and size are checked
    as it is read: the read that reaches the end raises IntegrityError if they differ. Close it."""
    client = connect(store)
    is_encrypted = item.object.endswith(layout.AGE_SUFFIX) if encrypted is None else encrypted
    if is_encrypted and not identities:
        raise IdentityError("this copy is encrypted: an age identity is needed (OFFSITE_IDENTITY_FILE)")
    body = client.get(client.settings.key(item.object))
    source: BinaryIO = _DecryptingReader(body, identities or ()) if is_encrypted else body
    return _CheckedReader(source, item)  # type: ignore[return-value]


def iter_files(
    store: StoreSettings | Store, manifest: Manifest, identities: Identities | None = None
) -> Iterator[tuple[ManifestFile, BinaryIO]]:
    """Each file of a copy with its plaintext stream, in manifest order (each closed when the next is
    asked for)."""
    client = connect(store)
    for item in manifest.files:
        stream = open_remote_file(client, item, identities, encrypted=manifest.encrypted)
        with contextlib.closing(stream):
            yield item, stream


def download_file(
    store: StoreSettings | Store,
    item: ManifestFile,
    target: BinaryIO,
    identities: Identities | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Writes one file's plaintext into `target` (for a restore); returns its size."""
    written = 0
    with contextlib.closing(open_remote_file(store, item, identities)) as source:
        while chunk := source.read(CHUNK):
            if should_stop is not None and should_stop():
                raise Cancelled("the download was cancelled")
            target.write(chunk)
            written += len(chunk)
    return written


class _CheckedReader(io.RawIOBase):
    def __init__(self, inner: BinaryIO, item: ManifestFile) -> None:
        self.inner = inner
        self.item = item
        self.digest = hashlib.sha256()
        self.seen = 0
        self.checked = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        data = self.inner.read(size)
        if data:
            self.digest.update(data)
            self.seen += len(data)
            if self.seen > self.item.size:
                raise IntegrityError(f"the stored copy of {self.item.path} is larger than its manifest says")
        elif not self.checked:
            self.checked = True
            if self.seen != self.item.size or self.digest.hexdigest() != self.item.sha256:
                raise IntegrityError(f"the stored copy of {self.item.path} does not match its sha256")
        return data or b""

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.inner.close()
        super().close()


class _DecryptingReader:
    """Pull-style plaintext of an age stream: pyrage pushes into a writer, so a thread decrypts into a
    small bounded queue (≤ 4 pieces of ≤ 1 MiB) that `read` drains."""

    _END = object()

    def __init__(self, body: Any, identities: Identities) -> None:
        self.body = body
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=4)
        self.buffer = bytearray()
        self.closed = False
        self.failure: BaseException | None = None
        self.finished = False
        self.thread = threading.Thread(
            target=self._run, args=(list(identities),), name="offsite-decrypt", daemon=True
        )
        self.thread.start()

    def _run(self, identities: list[x25519.Identity]) -> None:
        try:
            crypto.decrypt_stream(self.body, self, identities)  # type: ignore[arg-type]
        except BaseException as error:
            self.failure = error
        with contextlib.suppress(_ReaderClosed):
            self._put(self._END)

    def _put(self, item: Any) -> None:
        while True:
            if self.closed:
                raise _ReaderClosed()
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def write(self, data: bytes) -> int:
        self._put(bytes(data))
        return len(data)

    def flush(self) -> None:
        return None

    def read(self, size: int = -1) -> bytes:
        size = CHUNK if size is None or size < 0 else size
        while len(self.buffer) < size and not self.finished:
            item = self.queue.get()
            if item is self._END:
                self.finished = True
                if self.failure is not None and not isinstance(self.failure, _ReaderClosed):
                    raise self.failure
                break
            self.buffer += item
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(queue.Empty):
            while True:
                self.queue.get_nowait()
        self.thread.join(10)
        with contextlib.suppress(Exception):
            self.body.close()


class _ReaderClosed(Exception):
    pass


# --- a copy without the key -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportMember:
    """One member of a download of a copy as stored: `name` inside the archive, its exact `size`, and
    `open()` giving its bytes (the object as the store holds it, or the README's text)."""

    name: str
    size: int
    open: Callable[[], BinaryIO] = field(repr=False)


def plan_export(store: StoreSettings | Store, backup_id: str) -> list[ExportMember]:
    """A copy's objects as they are (encrypted) plus the manifest and a README on decrypting them with
    `age`: what a download serves when the service has no identity. Sizes are known before the first
    byte, so the caller can announce an exact length."""
    client = connect(store)
    remote = {entry.backup_id: entry for entry in list_backups(client)}.get(backup_id)
    if remote is None or not remote.complete or remote.manifest_key is None:
        raise RemoteNotFound(f"the store holds no complete copy of {backup_id}")
    index = fetch_index(client, backup_id)
    if index is None:
        if remote.encrypted:
            raise IntegrityError(
                f"the copy of {backup_id} has no object index: it cannot be listed without its age identity"
            )
        index = set(fetch_manifest(client, backup_id).object_keys)
    manifest_name = layout.manifest_key(backup_id, encrypted=remote.encrypted).rsplit("/", 1)[-1]
    readme = layout.export_readme(backup_id, manifest_name, encrypted=remote.encrypted).encode()
    members = [ExportMember("README.txt", len(readme), lambda: io.BytesIO(readme))]  # type: ignore[arg-type]
    head = client.head(remote.manifest_key)
    if head is None:
        raise RemoteNotFound(f"the manifest of {backup_id} vanished")
    members.append(_member(client, manifest_name, remote.manifest_key, int(head["ContentLength"])))
    for rel in sorted(index):
        key = client.settings.key(rel)
        head = client.head(key)
        if head is None:
            raise IntegrityError(f"the copy of {backup_id} misses its object {rel}")
        members.append(_member(client, rel, key, int(head["ContentLength"])))
    return members


def _member(client: Store, name: str, key: str, size: int) -> ExportMember:
    return ExportMember(name, size, lambda: client.get(key))


# --- retention and garbage ------------------------------------------------------------------------------


def delete_backup(store: StoreSettings | Store, backup_id: str) -> bool:
    """Removes a backup's copy from the remote list: its manifest first (the copy stops being complete),
    then its index (its objects become garbage unless another backup uses them). True if anything was
    there."""
    client = connect(store)
    existed = False
    keys = (
        layout.manifest_key(backup_id, encrypted=True),
        layout.manifest_key(backup_id, encrypted=False),
        layout.index_key(backup_id),
    )
    for key in keys:
        full = client.settings.key(key)
        if client.head(full) is not None:
            client.delete(full)
            existed = True
    return existed


@dataclass(frozen=True)
class GcResult:
    referenced_objects: int
    kept_objects: int  # referenced, or too young to judge
    deleted_objects: int
    deleted_bytes: int
    aborted_uploads: int
    problems: tuple[str, ...]  # why nothing was deleted, if so

    def as_dict(self) -> dict[str, Any]:
        return {
            "referenced_objects": self.referenced_objects,
            "kept_objects": self.kept_objects,
            "deleted_objects": self.deleted_objects,
            "deleted_bytes": self.deleted_bytes,
            "aborted_uploads": self.aborted_uploads,
            "problems": list(self.problems),
        }


def referenced_objects(
    store: StoreSettings | Store, identities: Identities | None = None
) -> tuple[set[str], list[str]]:
    """Object keys (relative) named by any backup's index or manifest, and problems: backups whose
    references could not be read (then nothing may be deleted)."""
    client = connect(store)
    referenced: set[str] = set()
    problems = []
    for remote in list_backups(client):
        if remote.index_key is not None:
            index = fetch_index(client, remote.backup_id)
            referenced |= index or set()
            if remote.complete:
                # The index is written from the manifest's own list; a manifest of another writer may
                # name more. Read it too when it can be read.
                with contextlib.suppress(OffsiteError):
                    if not remote.encrypted or identities:
                        referenced |= set(fetch_manifest(client, remote.backup_id, identities).object_keys)
            continue
        try:
            referenced |= set(fetch_manifest(client, remote.backup_id, identities).object_keys)
        except OffsiteError as error:
            problems.append(f"{remote.backup_id}: cannot read which objects it uses ({error})")
    return referenced, problems


def garbage_collect(
    store: StoreSettings | Store,
    *,
    identities: Identities | None = None,
    grace: timedelta = DEFAULT_GRACE,
    stale_uploads: timedelta = DEFAULT_STALE_UPLOADS,
    now: datetime | None = None,
    dry_run: bool = False,
) -> GcResult:
    """Deletes objects no backup references and aborts multipart uploads older than `stale_uploads`.

    An object is deleted only if no index or manifest names it, it is older than `grace` (an upload
    running elsewhere may be about to name it), and every backup's references could be read: one
    unreadable manifest without an index and nothing is deleted (the problem is returned)."""
    client = connect(store)
    moment = now or datetime.now(UTC)
    referenced, problems = referenced_objects(client, identities)
    kept = deleted = deleted_bytes = 0
    doomed: list[str] = []
    doomed_bytes = 0
    for item in client.list(layout.OBJECTS):
        rel = client.settings.rel(item["Key"])
        if layout.parse_object_key(rel) is None:
            continue
        modified = item.get("LastModified")
        young = isinstance(modified, datetime) and modified > moment - grace
        if rel in referenced or young or problems:
            kept += 1
            continue
        doomed.append(item["Key"])
        doomed_bytes += int(item.get("Size") or 0)
    if doomed and not dry_run:
        deleted = client.delete_many(doomed)
        deleted_bytes = doomed_bytes
    elif dry_run:
        deleted, deleted_bytes = len(doomed), doomed_bytes
    aborted = 0
    for upload in client.multipart_uploads():
        if initiated_before(upload, moment - stale_uploads):
            if not dry_run:
                client.abort(str(upload["Key"]), str(upload["UploadId"]))
            aborted += 1
    return GcResult(len(referenced), kept, deleted, deleted_bytes, aborted, tuple(problems))


# --- the service's own documents ------------------------------------------------------------------------


def upload_service_document(
    store: StoreSettings | Store,
    name: str,
    source: BinaryIO,
    recipients: Sequence[str],
    *,
    state_dir: Path,
    part_size: int = DEFAULT_PART_SIZE,
) -> int:
    """Stores `service/<name>.age` (name: "config.json" or "audit.jsonl"), replacing the previous one;
    returns the bytes sent. Always encrypted: the audit trail and the config (notification URLs may hold
    tokens) must not sit in a bucket in clear, so no recipients is a RecipientError."""
    if not recipients:
        raise RecipientError(
            "the service's own documents are only stored encrypted: set encryptionRecipients"
        )
    parsed = crypto.parse_recipients(list(recipients))
    client = connect(store)
    key = client.settings.key(layout.service_key(name))
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=state_dir, prefix="service-") as staged:
        crypto.encrypt_stream(source, staged, parsed)
        size = staged.tell()
        staged.seek(0)
        metadata = {"recipients": crypto.recipients_fingerprint(recipients)}
        if size <= part_size:
            client.put(key, staged.read(), metadata=metadata)
            return size
        _put_multipart(client, key, staged, max(part_size, MIN_PART_SIZE), metadata)
        return size


def _put_multipart(
    client: Store, key: str, source: BinaryIO, part_size: int, metadata: Mapping[str, str]
) -> None:
    upload_id = client.call(
        "CreateMultipartUpload",
        client.client.create_multipart_upload,
        Bucket=client.bucket,
        Key=key,
        Metadata=dict(metadata),
    )["UploadId"]
    parts = []
    try:
        number = 0
        while data := source.read(part_size):
            number += 1
            answer = client.call(
                "UploadPart",
                client.client.upload_part,
                Bucket=client.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
            )
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        client.call(
            "CompleteMultipartUpload",
            client.client.complete_multipart_upload,
            Bucket=client.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
    except BaseException:
        with contextlib.suppress(OffsiteError):
            client.abort(key, upload_id)
        raise


def upload_config(
    store: StoreSettings | Store, document: Mapping[str, Any], recipients: Sequence[str], *, state_dir: Path
) -> int:
    body = json.dumps(dict(document), indent=1, sort_keys=True, ensure_ascii=False).encode() + b"\n"
    return upload_service_document(
        store, layout.SERVICE_CONFIG, io.BytesIO(body), recipients, state_dir=state_dir
    )


def upload_audit_export(
    store: StoreSettings | Store,
    events: Iterable[Mapping[str, Any]] | BinaryIO,
    recipients: Sequence[str],
    *,
    state_dir: Path,
) -> int:
    """The audit log as JSON lines: from an open binary stream, or from an iterable of documents
    (serialised one per line, streamed: a large log is never held in memory)."""
    source = events if hasattr(events, "read") else _JsonLines(events)  # type: ignore[arg-type]
    return upload_service_document(
        store,
        layout.SERVICE_AUDIT,
        source,
        recipients,  # type: ignore[arg-type]
        state_dir=state_dir,
    )


class _JsonLines:
    def __init__(self, events: Iterable[Mapping[str, Any]]) -> None:
        self.events = iter(events)
        self.buffer = b""

    def read(self, size: int = -1) -> bytes:
        size = CHUNK if size is None or size < 0 else size
        while len(self.buffer) < size:
            event = next(self.events, None)
            if event is None:
                break
            self.buffer += json.dumps(dict(event), sort_keys=True, default=str).encode() + b"\n"
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def fetch_service_document(
    store: StoreSettings | Store, name: str, identities: Identities, target: BinaryIO
) -> int:
    """Decrypts `service/<name>.age` into `target`; returns the plaintext size."""
    client = connect(store)
    key = client.settings.key(layout.service_key(name))
    if client.head(key) is None:
        raise RemoteNotFound(f"the store holds no {name} of the service")
    if not identities:
        raise IdentityError("the service's documents are encrypted: an age identity is needed")
    counter = _Counting(target)
    body = client.get(key)
    try:
        crypto.decrypt_stream(body, counter, identities)  # type: ignore[arg-type]
    finally:
        body.close()
    return counter.count


class _Counting:
    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.count = 0

    def write(self, data: bytes) -> int:
        self.inner.write(data)
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        return None


def fetch_config(store: StoreSettings | Store, identities: Identities) -> dict[str, Any] | None:
    """The config document last stored, or None if the bucket holds none."""
    target = io.BytesIO()
    try:
        fetch_service_document(store, layout.SERVICE_CONFIG, identities, target)
    except RemoteNotFound:
        return None
    if target.tell() > CONFIG_MAX_BYTES:
        raise IntegrityError("the stored config document is implausibly large")
    try:
        document = json.loads(target.getvalue().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError("the stored config document is not JSON") from None
    if not isinstance(document, dict):
        raise IntegrityError("the stored config document is not a JSON object")
    return document


# --- rebuilding the service -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rebuild:
    """What an empty catalogue needs, read from the bucket alone."""

    backups: tuple[Manifest, ...]  # complete copies, by id
    incomplete: tuple[str, ...]  # ids whose copy never finished (an index, no manifest)
    missing_objects: Mapping[str, tuple[str, ...]]  # backup id → paths whose object is gone
    config: Mapping[str, Any] | None
    audit_export: bool  # service/audit.jsonl.age exists (fetch_service_document reads it)
    problems: tuple[str, ...]  # manifests that could not be read, and why


def rebuild(store: StoreSettings | Store, identities: Identities | None = None) -> Rebuild:
    """Reads every manifest (decrypting with `identities`), checks their objects exist, and fetches the
    config document. Needs the identity when the copies are encrypted (IdentityError otherwise)."""
    client = connect(store)
    remotes = list_backups(client)
    if any(remote.encrypted for remote in remotes) and not identities:
        raise IdentityError(
            "the copies are encrypted: rebuilding needs the age identity (OFFSITE_IDENTITY_FILE)"
        )
    present = {client.settings.rel(item["Key"]) for item in client.list(layout.OBJECTS)}
    manifests = []
    missing: dict[str, tuple[str, ...]] = {}
    problems = []
    for remote in remotes:
        if not remote.complete:
            continue
        try:
            manifest = fetch_manifest(client, remote.backup_id, identities)
        except OffsiteError as error:
            problems.append(f"{remote.backup_id}: {error}")
            continue
        gone = tuple(item.path for item in manifest.files if item.object not in present)
        if gone:
            missing[remote.backup_id] = gone
        manifests.append(manifest)
    config = None
    audit = client.head(client.settings.key(layout.service_key(layout.SERVICE_AUDIT))) is not None
    if client.head(client.settings.key(layout.service_key(layout.SERVICE_CONFIG))) is not None:
        if not identities:
            raise IdentityError("the stored config document is encrypted: rebuilding needs the age identity")
        config = fetch_config(client, identities)
    return Rebuild(
        backups=tuple(manifests),
        incomplete=tuple(remote.backup_id for remote in remotes if not remote.complete),
        missing_objects=missing,
        config=config,
        audit_export=audit,
        problems=tuple(problems),
    )
