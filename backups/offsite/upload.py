"""Uploading one backup: content-addressed, incremental, multipart, bounded in memory and resumable.

Order of writes (see layout.py): the `.objects` index (extended before any object it does not name yet
is sent), then the objects the store lacks, then the manifest. A manifest therefore means a complete
copy, and garbage collection never removes an object an unfinished copy is sending.

Memory: files are read in parts of `part_size` (8 MiB by default, 5 MiB at least: S3's minimum for all
but the last part) and at most `concurrency` parts are held at once, whatever the file size.

Resuming after a crash or a cancel. A multipart upload's parts stay in the store until it is completed
or aborted; the state folder records, per object being sent, its upload id and part size. The next
attempt lists the parts the store holds (`list_parts`; without a state file it finds the upload with
`list_multipart_uploads`), checks each against the bytes it would send (size, and the ETag when it is
the part's MD5), and sends only the others.
- Plain objects are the file's bytes: the file is read again from the start (it is hashed anyway, so
  the object cannot end up holding other bytes than its name says), and only missing parts are sent.
- Encrypted objects cannot be regenerated: age draws a fresh file key for every encryption, so a second
  encryption of the same file differs in every byte. Each file larger than one part is therefore
  encrypted once into a staging file in the state folder (`<sha256>.age.staged`), and the parts are
  read from that file. Encryption runs in a child process (encryptor.py, reading the opened file's
  descriptor: pyrage holds the GIL while it encrypts) and the upload starts while it is still running
  (it is several times faster than any upload); once the staging file is complete, fsynced and marked
  (`.complete`), a later attempt resumes from it and the store's parts. An attempt interrupted before
  the mark starts over for that file. Cost: free disk in the state folder for the largest file being
  sent (plus 16 bytes per 64 KiB), one extra write and read of it, ~1.7 s of CPU per GiB for age; the
  staging file is removed once its object is complete. Files that fit in one part are encrypted in
  memory and sent in one request: nothing to resume.

Hashing: a file's sha256 names its object, so it is known before the upload: from `hashes` (a verified
MANIFEST.sha256), or computed first, one file ahead of the upload. Whatever is sent is hashed again on
the way and must match, except a file this call hashed itself whose signature (inode, size, mtime,
ctime) is unchanged since: one sha256 pass per file either way.

Storage class (`storageClass`) applies to objects only; indexes, manifests and the service's documents
stay in the default class, so listing and rebuilding never wait for an archive tier. Objects in an
archive class (GLACIER, DEEP_ARCHIVE) must be restored in the store before a download can read them.

Compression: none. Backups are compressed by the script (`compressionLevel`); compressing again costs
CPU for nothing, and an object that is `age -d` away from the file is simpler to recover.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pyrage import x25519

from backups.offsite import crypto, layout
from backups.offsite.errors import Cancelled, IntegrityError, OffsiteError, RecipientError, StoreError
from backups.offsite.layout import Manifest, ManifestFile
from backups.offsite.store import Store, StoreSettings

MiB = 1 << 20
DEFAULT_PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last (SeaweedFS enforces it too)
MAX_PARTS = 10_000
DEFAULT_CONCURRENCY = 4
CHUNK = MiB
PROGRESS_INTERVAL = 0.5

META_SHA256 = "sha256"
META_SIZE = "plain-size"
META_RECIPIENTS = "recipients"

ProgressCallback = Callable[[int, str], None]
StopCallback = Callable[[], bool]
Opener = Callable[[str], BinaryIO]


@dataclass(frozen=True)
class UploadResult:
    backup_id: str
    manifest_key: str  # full key in the bucket
    manifest: Manifest
    total_bytes: int  # plaintext bytes of the backup's files
    uploaded_bytes: int  # bytes this call sent to the store (objects as stored, index, manifest)
    skipped_bytes: int  # plaintext bytes of files whose object the store already held
    resumed_bytes: int  # bytes of parts an interrupted earlier attempt had already sent
    objects_uploaded: int
    objects_skipped: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "manifest_key": self.manifest_key,
            "files": len(self.manifest.files),
            "total_bytes": self.total_bytes,
            "uploaded_bytes": self.uploaded_bytes,
            "skipped_bytes": self.skipped_bytes,
            "resumed_bytes": self.resumed_bytes,
            "objects_uploaded": self.objects_uploaded,
            "objects_skipped": self.objects_skipped,
            "seconds": round(self.seconds, 3),
        }


def connect(store: StoreSettings | Store, *, max_connections: int = 10) -> Store:
    return store if isinstance(store, Store) else Store(store, max_connections=max_connections)


def upload_backup(
    store: StoreSettings | Store,
    backup_id: str,
    listing: Sequence[tuple[str, int]],
    open_file: Opener,
    *,
    metadata: Mapping[str, Any],
    state_dir: Path,
    recipients: Sequence[str] = (),
    hashes: Mapping[str, str] | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> UploadResult:
    """Copies one backup to the store; safe to call again after any failure, cancel or crash.

    `listing` is the backup's files `[(rel_path, size_bytes)]` and `open_file(rel_path)` opens one for
    reading (it is also called from a hashing thread). `hashes` (rel_path → sha256) may come from a
    verified MANIFEST.sha256: the files are then not read before upload, a file whose object exists
    is not read at all, and a file that is sent is hashed on the way and must match. Without them,
    each file is hashed first (one file ahead of the upload).
    `metadata` (JSON-serialisable: type, description, created_at, ...) goes into the manifest.
    `recipients` (age1… public keys): empty = plain objects. `on_progress` and `should_stop` are called
    from the calling thread only. Raises OffsiteError subclasses (Cancelled, StoreRefused,
    IntegrityError, ...; an OSError of reading becomes an OffsiteError); exceptions of the opener's own
    kinds pass through unchanged.
    """
    started = time.monotonic()
    layout.check_backup_id(backup_id)
    files = _check_listing(listing)
    if part_size < MIN_PART_SIZE:
        raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
    parsed = crypto.parse_recipients(list(recipients))
    try:
        json.dumps(dict(metadata))
    except (TypeError, ValueError):
        raise IntegrityError("the backup's metadata must be JSON-serialisable") from None
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    client = connect(store, max_connections=concurrency + 4)
    session = _Session(
        client,
        state_dir,
        parsed,
        [value.strip() for value in recipients],
        part_size,
        concurrency,
        on_progress or _no_progress,
        should_stop or _never,
        sum(size for _, size in files),
    )
    try:
        manifest = session.run(backup_id, files, open_file, dict(metadata), dict(hashes or {}))
    except OSError as error:
        # strerror only: the message of an OSError names the full path
        raise OffsiteError(f"reading the backup or the state folder failed: {_reason(error)}") from None
    finally:
        session.close()
    return UploadResult(
        backup_id=backup_id,
        manifest_key=client.settings.key(layout.manifest_key(backup_id, encrypted=bool(parsed))),
        manifest=manifest,
        total_bytes=manifest.total_bytes,
        uploaded_bytes=session.sent,
        skipped_bytes=session.skipped,
        resumed_bytes=session.resumed,
        objects_uploaded=session.objects_uploaded,
        objects_skipped=session.objects_skipped,
        seconds=time.monotonic() - started,
    )


def _reason(error: BaseException) -> str:
    return (error.strerror if isinstance(error, OSError) else None) or type(error).__name__


def _no_progress(percent: int, message: str) -> None:
    return None


def _never() -> bool:
    return False


def _check_listing(listing: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    files = []
    seen = set()
    for rel_path, size in listing:
        layout.check_rel_path(rel_path)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise IntegrityError(f"the listed size of {rel_path} is not a byte count")
        if rel_path in seen:
            raise IntegrityError(f"{rel_path} is listed twice")
        seen.add(rel_path)
        files.append((rel_path, size))
    return files


def hash_file(open_file: Opener, rel_path: str, size: int) -> str:
    """sha256 of a file, read in 1 MiB chunks; IntegrityError if its size is not the listed one."""
    return _hash_with_signature(open_file, rel_path, size)[0]


# What identifies a file's content without reading it (git's index and rsync rely on the same): a write
# changes st_ctime, which no one can set back. Files this call hashed itself and that still carry the
# same signature when they are uploaded are not hashed a second time.
Signature = tuple[int, int, int, int, int]


def _signature(handle: Any) -> Signature | None:
    try:
        st = os.fstat(handle.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_with_signature(open_file: Opener, rel_path: str, size: int) -> tuple[str, Signature | None]:
    digest = hashlib.sha256()
    seen = 0
    with open_file(rel_path) as handle:
        before = _signature(handle)
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            seen += len(chunk)
            if seen > size:
                break
        after = _signature(handle)
    if seen != size:
        raise IntegrityError(f"{rel_path} is not the size the listing says: it changed or is being written")
    if before != after:
        raise IntegrityError(f"{rel_path} changed while it was hashed")
    return digest.hexdigest(), after


def choose_part_size(size: int, part_size: int) -> int:
    """`part_size`, or more for a file so large that it would need more than S3's 10,000 parts."""
    needed = -(-(size + size // 1000 + MiB) // MAX_PARTS)
    if needed <= part_size:
        return part_size
    return -(-needed // MiB) * MiB


# --- state folder ---------------------------------------------------------------------------------------


@dataclass
class PendingUpload:
    """One object's multipart upload in progress, as the state folder records it."""

    key: str
    upload_id: str
    part_size: int
    bucket: str
    staged: bool
    path: Path = field(compare=False)

    def save(self) -> None:
        document = {
            "key": self.key,
            "upload_id": self.upload_id,
            "part_size": self.part_size,
            "bucket": self.bucket,
            "staged": self.staged,
        }
        _atomic_write(self.path, json.dumps(document).encode())


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _state_name(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def pending_uploads(state_dir: Path) -> list[PendingUpload]:
    """The multipart uploads the state folder says are unfinished (for status pages and cleanup)."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for path in sorted(Path(state_dir).glob("*.upload.json")):
            loaded = _load_pending(path)
            if loaded is not None:
                found.append(loaded)
    return found


def _load_pending(path: Path) -> PendingUpload | None:
    try:
        document = json.loads(path.read_bytes())
        return PendingUpload(
            key=str(document["key"]),
            upload_id=str(document["upload_id"]),
            part_size=int(document["part_size"]),
            bucket=str(document["bucket"]),
            staged=bool(document.get("staged")),
            path=path,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def discard_state(state_dir: Path, store: StoreSettings | Store | None = None) -> int:
    """Removes the state folder's staging files and records (and, given the store, aborts their
    multipart uploads); returns the bytes freed locally. For a copy that will not be resumed."""
    state_dir = Path(state_dir)
    client = connect(store) if store is not None else None
    if client is not None:
        for pending in pending_uploads(state_dir):
            if pending.bucket == client.bucket:
                client.abort(pending.key, pending.upload_id)
    freed = 0
    with contextlib.suppress(FileNotFoundError):
        for path in state_dir.iterdir():
            if path.is_file() and path.name.endswith(_STATE_SUFFIXES):
                freed += path.stat().st_size
                path.unlink()
    return freed


_STATE_SUFFIXES = (".upload.json", ".staged", ".complete", ".tmp")


# --- reading parts --------------------------------------------------------------------------------------


class _HashingReader:
    """Reads a file once in order, hashing what it hands out (unless `verify` is false: a file this call
    hashed and whose signature is unchanged); `finish()` checks size and sha256."""

    def __init__(
        self, handle: BinaryIO, verify: bool = True, *, rel_path: str, size: int, sha256: str
    ) -> None:
        self.handle = handle
        self.rel_path = rel_path
        self.size = size
        self.sha256 = sha256
        self.digest = hashlib.sha256() if verify else None
        self.seen = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.size - self.seen + 1
        data = _read_exactly(self.handle, size)
        self.seen += len(data)
        if self.seen > self.size:
            raise IntegrityError(f"{self.rel_path} grew while it was uploaded")
        if self.digest is not None:
            self.digest.update(data)
        return data

    def finish(self) -> None:
        if self.seen != self.size or (self.digest is not None and self.digest.hexdigest() != self.sha256):
            raise IntegrityError(f"{self.rel_path} changed while it was uploaded (size or sha256 differ)")

    def close(self) -> None:
        self.handle.close()


def _read_exactly(handle: BinaryIO, size: int) -> bytes:
    first = handle.read(size)
    if not first or len(first) == size:
        return first or b""
    pieces = [first]
    have = len(first)
    while have < size:
        more = handle.read(size - have)
        if not more:
            break
        pieces.append(more)
        have += len(more)
    return b"".join(pieces)


ENCRYPTOR = Path(__file__).with_name("encryptor.py")


def _regular_fd_at_start(handle: Any) -> int | None:
    """The descriptor of a regular file, rewound to its start, or None (then it is fed by a pipe)."""
    if _signature(handle) is None:
        return None
    try:
        fd = handle.fileno()
        os.lseek(fd, 0, os.SEEK_SET)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd


class _StagedSource:
    """An encrypted staging file, read part by part while it may still be being written.

    A thread feeds the plaintext (hashing it) into encryptor.py, a child process whose stdout is the
    staging file; when the child is done and the plaintext's size and sha256 match, the file is fsynced
    and the `.complete` mark written. `read` blocks until the next part is in the file or encryption is
    over. The child stays in the caller's process group, so a kill of the job's group ends it too; if
    only this process dies, the child reaches end of input and exits, and the missing mark tells the
    next attempt to start over."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mark = path.with_name(path.name.removesuffix(".staged") + ".complete")
        self.offset = 0
        self.done = False
        self.failure: BaseException | None = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.fd: int | None = None

    @classmethod
    def resume(cls, path: Path) -> _StagedSource | None:
        """The staging file of an earlier attempt, if it was completed and marked."""
        source = cls(path)
        try:
            recorded = json.loads(source.mark.read_bytes())
            size = path.stat().st_size
        except (OSError, ValueError):
            return None
        if not isinstance(recorded, dict) or recorded.get("size") != size:
            return None
        source.done = True
        source.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return source

    def start(
        self, handle: BinaryIO, rel_path: str, size: int, sha256: str, verify: bool, recipients: Sequence[str]
    ) -> None:
        """Starts encrypting `handle` (just opened) into the staging file. A regular file's descriptor
        becomes the child's stdin; anything else is fed through a pipe by a thread."""
        with contextlib.suppress(FileNotFoundError):
            self.mark.unlink()
        source_fd = _regular_fd_at_start(handle)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            self.process = subprocess.Popen(
                [sys.executable, str(ENCRYPTOR), *([] if verify else ["--no-hash"]), *recipients],
                stdin=subprocess.PIPE if source_fd is None else source_fd,
                stdout=self.fd,
                stderr=subprocess.PIPE,
            )
        except OSError as error:
            handle.close()
            raise OffsiteError(f"cannot start the encryptor process: {error.strerror or error}") from None
        expected = (rel_path, size, sha256 if verify else None)
        self.thread = threading.Thread(
            target=self._watch,
            args=(handle, source_fd is None, expected),
            name="offsite-encrypt",
            daemon=True,
        )
        self.thread.start()

    def _watch(self, handle: BinaryIO, feed: bool, expected: tuple[str, int, str | None]) -> None:
        process = self.process
        assert process is not None and self.fd is not None
        rel_path, size, sha256 = expected
        try:
            if feed:
                assert process.stdin is not None
                try:
                    while chunk := handle.read(CHUNK):
                        if self.stop.is_set():
                            raise Cancelled("the off-site copy was cancelled")
                        process.stdin.write(chunk)
                    # communicate() below flushes and closes stdin: closing it here makes it fail.
                except BrokenPipeError:
                    pass  # the child ended early: its exit status and stderr say why
            while True:
                try:
                    _, errors = process.communicate(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    if self.stop.is_set():
                        raise Cancelled("the off-site copy was cancelled") from None
            lines = errors.decode(errors="replace").strip().splitlines()
            if process.returncode != 0:
                detail = lines[-1] if lines else "no message"
                raise RecipientError(f"age encryption failed (encryptor exit {process.returncode}): {detail}")
            try:
                result = json.loads(lines[-1])
            except (IndexError, ValueError):
                raise OffsiteError("the encryptor process did not report what it read") from None
            if result.get("size") != size or (sha256 is not None and result.get("sha256") != sha256):
                raise IntegrityError(f"{rel_path} changed while it was uploaded (size or sha256 differ)")
            os.fsync(self.fd)
            written = os.fstat(self.fd).st_size
            _atomic_write(self.mark, json.dumps({"size": written, "sha256": result.get("sha256")}).encode())
        except BaseException as error:  # the reading thread re-raises it
            self.failure = error
            with contextlib.suppress(OSError):
                process.kill()
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                process.wait(10)
        finally:
            handle.close()
            for stream in (process.stdin, process.stderr):
                with contextlib.suppress(OSError):
                    if stream is not None:
                        stream.close()
            self.done = True

    def read(self, size: int, should_stop: Callable[[], bool]) -> bytes:
        assert self.fd is not None
        asked = time.monotonic()
        while True:
            done = self.done  # read before the size: what was written before `done` is all there is
            written = os.fstat(self.fd).st_size
            if done or written >= self.offset + size:
                break
            if time.monotonic() - asked > 0.2:
                asked = time.monotonic()
                if should_stop():
                    raise Cancelled("the off-site copy was cancelled")
            time.sleep(0.01)
        if self.failure is not None:
            raise self.failure
        available = max(0, min(size, written - self.offset))
        data = os.pread(self.fd, available, self.offset)
        if len(data) != available:
            raise IntegrityError(f"the staging file {self.path.name} is shorter than what was written")
        self.offset += len(data)
        return data

    @property
    def complete(self) -> bool:
        return self.done and self.failure is None

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def remove(self) -> None:
        for path in (self.path, self.mark):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


# --- the upload session ---------------------------------------------------------------------------------


class _Session:
    def __init__(
        self,
        store: Store,
        state_dir: Path,
        recipients: list[x25519.Recipient],
        recipient_strings: list[str],
        part_size: int,
        concurrency: int,
        on_progress: ProgressCallback,
        should_stop: StopCallback,
        total: int,
    ) -> None:
        self.store = store
        self.state_dir = state_dir
        self.recipients = recipients
        self.recipient_strings = recipient_strings
        self.encrypted = bool(recipients)
        self.fingerprint = crypto.recipients_fingerprint(recipient_strings) if recipients else ""
        self.part_size = part_size
        self.concurrency = max(1, concurrency)
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.total = total
        self.pool = concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="offsite-put")
        self.slots = threading.BoundedSemaphore(self.concurrency)
        self.lock = threading.Lock()
        self.in_flight: set[concurrent.futures.Future[Any]] = set()
        self.failures: list[BaseException] = []
        self.sent = 0
        self.skipped = 0
        self.resumed = 0
        self.objects_uploaded = 0
        self.objects_skipped = 0
        self.done_plain = 0  # plaintext bytes fully handled (sent, skipped or queued)
        self.current_plain = 0.0  # fraction of the current file's bytes handled, in bytes
        self.indexed: set[str] = set()
        self.uploaded_keys: set[str] = set()
        self.last_report = 0.0

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _count_sent(self, count: int) -> None:
        with self.lock:  # part senders add from the pool's threads
            self.sent += count

    # --- progress and cancel

    def check(self) -> None:
        if self.failures:
            raise self.failures[0]
        if self.should_stop():
            raise Cancelled("the off-site copy was cancelled")

    def report(self, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_report < PROGRESS_INTERVAL:
            return
        self.last_report = now
        handled = self.done_plain + self.current_plain
        percent = 99 if self.total == 0 else min(99, int(handled * 100 / self.total))
        self.on_progress(percent, message)

    # --- the flow

    def run(
        self,
        backup_id: str,
        files: list[tuple[str, int]],
        open_file: Opener,
        metadata: dict[str, Any],
        hashes: dict[str, str],
    ) -> Manifest:
        for rel_path, digest in hashes.items():
            if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
                raise IntegrityError(f"the given sha256 of {rel_path} is not a sha256")
        self.report(f"checking {len(files)} files against the store", force=True)
        entries: list[ManifestFile] = []
        with _Hasher(files, open_file, hashes) as hasher:
            for number, (rel_path, size) in enumerate(files, start=1):
                self.check()
                digest, signature = hasher.wait(rel_path, self.check)
                key = layout.object_key(digest, encrypted=self.encrypted)
                entries.append(ManifestFile(rel_path, size, digest, key))
                self.current_plain = 0
                label = f"{rel_path} ({number}/{len(files)})"
                if self._already_stored(key, digest):
                    self.skipped += size
                    self.objects_skipped += 1
                    self.done_plain += size
                    self.report(f"{label}: already in the store")
                    continue
                self._index(backup_id, {key, *hasher.known_keys(self.encrypted)})
                self.report(f"uploading {label}", force=True)
                self._send_file(key, rel_path, size, digest, _Opened(open_file, signature), label)
                self.done_plain += size
                self.current_plain = 0
            self._drain()
        manifest = Manifest(
            backup_id=backup_id,
            files=tuple(entries),
            metadata=metadata,
            encrypted=self.encrypted,
            recipients=tuple(self.recipient_strings),
            uploaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self._index(backup_id, set(manifest.object_keys), final=True)
        self.check()
        self._write_manifest(manifest)
        self.on_progress(100, f"off-site copy complete: {len(entries)} files")
        return manifest

    def _already_stored(self, key: str, digest: str) -> bool:
        """An object counts only if its recorded hash (and recipients) are those wanted: one written by
        hand, or encrypted for other recipients, is replaced. Objects sent by this session count too."""
        if key in self.uploaded_keys:
            return True
        head = self.store.head(self.store.settings.key(key))
        if head is None:
            return False
        meta = {name.lower(): value for name, value in (head.get("Metadata") or {}).items()}
        wanted = meta.get(META_SHA256) == digest and (
            not self.encrypted or meta.get(META_RECIPIENTS) == self.fingerprint
        )
        if wanted:
            pending = self._pending(key)
            if pending is not None:
                self.store.abort(pending.key, pending.upload_id)
            self._forget_state(key)
        return wanted

    def _index(self, backup_id: str, keys: set[str], *, final: bool = False) -> None:
        """Writes the backup's `.objects` index when it lacks a key about to be sent; the final one
        names exactly the manifest's objects."""
        wanted = set(keys) if final else self.indexed | keys
        if wanted == self.indexed:
            return
        body = layout.render_index(sorted(wanted))
        self.store.put(self.store.settings.key(layout.index_key(backup_id)), body, content_type="text/plain")
        self._count_sent(len(body))
        self.indexed = wanted

    def _write_manifest(self, manifest: Manifest) -> None:
        body = manifest.to_json()
        if self.encrypted:
            body = crypto.encrypt_bytes(body, self.recipients)
        key = self.store.settings.key(layout.manifest_key(manifest.backup_id, encrypted=self.encrypted))
        self.store.put(
            key, body, content_type="application/octet-stream" if self.encrypted else "application/json"
        )
        self._count_sent(len(body))
        other = self.store.settings.key(layout.manifest_key(manifest.backup_id, encrypted=not self.encrypted))
        if self.store.head(other) is not None:
            self.store.delete(other)
        readme = self.store.settings.key(layout.README_KEY)
        if self.store.head(readme) is None:
            self.store.put(readme, layout.README_TEXT.encode(), content_type="text/plain; charset=utf-8")

    def _metadata(self, digest: str, size: int) -> dict[str, str]:
        meta = {META_SHA256: digest, META_SIZE: str(size)}
        if self.encrypted:
            meta[META_RECIPIENTS] = self.fingerprint
        return meta

    # --- sending one file

    def _send_file(
        self, key: str, rel_path: str, size: int, digest: str, open_file: _Opened, label: str
    ) -> None:
        full_key = self.store.settings.key(key)
        meta = self._metadata(digest, size)
        if size <= self.part_size:
            self._send_small(full_key, rel_path, size, digest, open_file, meta)
        elif self.encrypted:
            self._send_staged(full_key, key, rel_path, size, digest, open_file, meta, label)
        else:
            self._send_plain(full_key, key, rel_path, size, digest, open_file, meta, label)
        self.uploaded_keys.add(key)
        self.objects_uploaded += 1

    def _send_small(
        self, full_key: str, rel_path: str, size: int, digest: str, open_file: _Opened, meta: dict[str, str]
    ) -> None:
        self._take_slot()
        try:
            handle, verify = open_file(rel_path)
            with handle:
                reader = _HashingReader(handle, verify, rel_path=rel_path, size=size, sha256=digest)
                body = reader.read(size + 1)
                reader.finish()
            if self.encrypted:
                body = crypto.encrypt_bytes(body, self.recipients)
        except BaseException:
            self.slots.release()
            raise
        storage_class = self.store.settings.storage_class

        def send() -> None:
            self.store.put(full_key, body, metadata=meta, storage_class=storage_class)
            self._count_sent(len(body))

        self._submit(send)
        self.current_plain = size

    def _send_plain(
        self,
        full_key: str,
        key: str,
        rel_path: str,
        size: int,
        digest: str,
        open_file: _Opened,
        meta: dict[str, str],
        label: str,
    ) -> None:
        pending = self._pending(key)
        reader = _HashingReader(*open_file(rel_path), rel_path=rel_path, size=size, sha256=digest)
        try:
            upload = self._open_multipart(full_key, key, meta, size, pending, staged=False, reusable=True)

            def read(count: int) -> bytes:
                self.check()
                return reader.read(count)

            try:
                self._multipart(full_key, upload, read, reader.finish, size, label)
            except IntegrityError:
                self.store.abort(full_key, upload.upload_id)
                self._forget_state(key)
                raise
        finally:
            reader.close()
        self._forget_state(key)

    def _send_staged(
        self,
        full_key: str,
        key: str,
        rel_path: str,
        size: int,
        digest: str,
        open_file: _Opened,
        meta: dict[str, str],
        label: str,
    ) -> None:
        staging = self.state_dir / f"{_state_name(key)}.staged"
        pending = self._pending(key)
        source = _StagedSource.resume(staging) if pending is not None and pending.staged else None
        if source is None:
            # An unfinished staging file is useless (its file key is gone), and so are the parts sent
            # from it: start this object over.
            if pending is not None:
                self.store.abort(full_key, pending.upload_id)
                self._forget_state(key)
                pending = None
            _StagedSource(staging).remove()
            source = _StagedSource(staging)
            handle, verify = open_file(rel_path)
            source.start(handle, rel_path, size, digest, verify, self.recipient_strings)
            reusable = False
        else:
            reusable = True
        try:
            upload = self._open_multipart(full_key, key, meta, size, pending, staged=True, reusable=reusable)
            try:
                self._multipart(
                    full_key,
                    upload,
                    lambda count: source.read(count, self.should_stop),
                    lambda: None,
                    size,
                    label,
                )
            except IntegrityError:
                self.store.abort(full_key, upload.upload_id)
                self._forget_state(key)
                raise
            except Cancelled:
                if not source.complete:
                    # Parts sent from an unfinished staging file can never be reused.
                    source.close()
                    self.store.abort(full_key, upload.upload_id)
                    self._forget_state(key)
                    source.remove()
                raise
        finally:
            source.close()
        self._forget_state(key)
        source.remove()

    def _pending(self, key: str) -> PendingUpload | None:
        loaded = _load_pending(self.state_dir / f"{_state_name(key)}.upload.json")
        if loaded is None or loaded.key != self.store.settings.key(key) or loaded.bucket != self.store.bucket:
            return None
        return loaded

    def _forget_state(self, key: str) -> None:
        name = _state_name(key)
        for suffix in (".upload.json", ".staged", ".complete"):
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / f"{name}{suffix}").unlink()

    def _open_multipart(
        self,
        full_key: str,
        key: str,
        meta: dict[str, str],
        size: int,
        pending: PendingUpload | None,
        *,
        staged: bool,
        reusable: bool,
    ) -> _Multipart:
        """An upload to continue (its parts listed) or a new one, recorded in the state folder before
        any part is sent, so that a crash leaves a record of it."""
        if reusable:
            candidates = [pending.upload_id] if pending is not None else []
            found = [upload for upload in self.store.multipart_uploads(key) if upload.get("Key") == full_key]
            found.sort(
                key=lambda upload: upload.get("Initiated") or datetime.min.replace(tzinfo=UTC), reverse=True
            )
            candidates += [
                str(upload["UploadId"]) for upload in found if upload["UploadId"] not in candidates
            ]
            for upload_id in candidates:
                try:
                    parts = self.store.parts(full_key, upload_id)
                except StoreError as error:
                    if error.code in ("NoSuchUpload", "404"):
                        continue
                    raise
                part_size = (
                    pending.part_size
                    if pending is not None and pending.upload_id == upload_id
                    else int(parts[1]["Size"])
                    if 1 in parts
                    else choose_part_size(size, self.part_size)
                )
                if part_size < MIN_PART_SIZE or part_size > 16 * self.part_size:
                    continue
                record = PendingUpload(
                    full_key,
                    upload_id,
                    part_size,
                    self.store.bucket,
                    staged,
                    self.state_dir / f"{_state_name(key)}.upload.json",
                )
                record.save()
                return _Multipart(upload_id, part_size, parts)
        extra: dict[str, Any] = {"Metadata": meta, "ContentType": "application/octet-stream"}
        if self.store.settings.storage_class:
            extra["StorageClass"] = self.store.settings.storage_class
        created = self.store.call(
            "CreateMultipartUpload",
            self.store.client.create_multipart_upload,
            Bucket=self.store.bucket,
            Key=full_key,
            **extra,
        )
        part_size = choose_part_size(size, self.part_size)
        record = PendingUpload(
            full_key,
            str(created["UploadId"]),
            part_size,
            self.store.bucket,
            staged,
            self.state_dir / f"{_state_name(key)}.upload.json",
        )
        record.save()
        return _Multipart(record.upload_id, part_size, {})

    def _multipart(
        self,
        full_key: str,
        upload: _Multipart,
        read: Callable[[int], bytes],
        finish: Callable[[], None],
        size: int,
        label: str,
    ) -> None:
        etags: dict[int, str] = {}
        futures: list[concurrent.futures.Future[Any]] = []
        number = 0
        while True:
            self.check()
            self._take_slot()
            try:
                data = read(upload.part_size)
            except BaseException:
                self.slots.release()
                raise
            if not data and number > 0:
                self.slots.release()
                break
            number += 1
            if number > MAX_PARTS:
                self.slots.release()
                raise IntegrityError(f"{label} needs more than {MAX_PARTS} parts: it grew while uploaded")
            held = upload.parts.get(number)
            if held is not None and _same_part(held, data):
                etags[number] = str(held["ETag"])
                self.resumed += len(data)
                self.slots.release()
            else:
                sender = self._part_sender(full_key, upload.upload_id, number, data, etags)
                futures.append(self._submit(sender))
            self.current_plain = min(size, upload.part_size * number)
            self.report(f"uploading {label}")
            if len(data) < upload.part_size:
                break
        finish()
        self._wait(futures)
        self.check()
        parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
        self.store.call(
            "CompleteMultipartUpload",
            self.store.client.complete_multipart_upload,
            Bucket=self.store.bucket,
            Key=full_key,
            UploadId=upload.upload_id,
            MultipartUpload={"Parts": parts},
        )

    def _part_sender(
        self, full_key: str, upload_id: str, number: int, data: bytes, etags: dict[int, str]
    ) -> Callable[[], None]:
        def send() -> None:
            answer = self.store.call(
                "UploadPart",
                self.store.client.upload_part,
                Bucket=self.store.bucket,
                Key=full_key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
            )
            with self.lock:
                etags[number] = str(answer["ETag"])
                self.sent += len(data)

        return send

    # --- the pool

    def _take_slot(self) -> None:
        while not self.slots.acquire(timeout=0.2):
            self.check()

    def _submit(self, job: Callable[[], None]) -> concurrent.futures.Future[Any]:
        def run() -> None:
            try:
                job()
            except BaseException as error:
                with self.lock:
                    self.failures.append(error)
                raise
            finally:
                self.slots.release()

        future = self.pool.submit(run)
        with self.lock:
            self.in_flight.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: concurrent.futures.Future[Any]) -> None:
        with self.lock:
            self.in_flight.discard(future)

    def _wait(self, futures: Sequence[concurrent.futures.Future[Any]]) -> None:
        pending = set(futures)
        while pending:
            finished, pending = concurrent.futures.wait(
                pending, timeout=0.2, return_when=concurrent.futures.FIRST_EXCEPTION
            )
            for future in finished:
                error = future.exception()
                if error is not None:
                    raise error
            if pending:
                self.check()

    def _drain(self) -> None:
        with self.lock:
            futures = list(self.in_flight)
        self._wait(futures)
        self.check()


class _Opened:
    """The caller's opener, plus whether what it opens must be hashed again: not when this call hashed
    the file itself and its signature has not changed since."""

    def __init__(self, open_file: Opener, signature: Signature | None) -> None:
        self.open_file = open_file
        self.signature = signature

    def __call__(self, rel_path: str) -> tuple[BinaryIO, bool]:
        handle = self.open_file(rel_path)
        return handle, self.signature is None or _signature(handle) != self.signature


@dataclass
class _Multipart:
    upload_id: str
    part_size: int
    parts: dict[int, dict[str, Any]]


def _same_part(held: Mapping[str, Any], data: bytes) -> bool:
    if int(held.get("Size", -1)) != len(data):
        return False
    etag = str(held.get("ETag", "")).strip('"').lower()
    if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
        return hashlib.md5(data, usedforsecurity=False).hexdigest() == etag
    return True


class _Hasher:
    """sha256 of the files in listing order, one file ahead of the upload, in a thread (hashlib releases
    the GIL). Files with a given hash are not read."""

    def __init__(self, files: list[tuple[str, int]], open_file: Opener, given: dict[str, str]) -> None:
        self.files = files
        self.open_file = open_file
        self.given = given
        self.results: dict[str, tuple[str, Signature | None]] = {}
        self.errors: dict[str, BaseException] = {}
        self.stop = threading.Event()
        self.condition = threading.Condition()
        self.thread = threading.Thread(target=self._work, name="offsite-hash", daemon=True)

    def __enter__(self) -> _Hasher:
        for rel_path, _size in self.files:
            if rel_path in self.given:
                self.results[rel_path] = (self.given[rel_path].lower(), None)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _work(self) -> None:
        for rel_path, size in self.files:
            if self.stop.is_set():
                return
            if rel_path in self.results:
                continue
            try:
                found = _hash_with_signature(_stoppable(self.open_file, self.stop), rel_path, size)
            except BaseException as error:
                with self.condition:
                    self.errors[rel_path] = error
                    self.condition.notify_all()
                return
            with self.condition:
                self.results[rel_path] = found
                self.condition.notify_all()

    def wait(self, rel_path: str, check: Callable[[], None]) -> tuple[str, Signature | None]:
        with self.condition:
            while rel_path not in self.results:
                if rel_path in self.errors:
                    error = self.errors[rel_path]
                    if isinstance(error, OSError):
                        raise IntegrityError(f"cannot read {rel_path}: {_reason(error)}") from None
                    raise error
                self.condition.wait(0.2)
                check()
            return self.results[rel_path]

    def known_keys(self, encrypted: bool) -> list[str]:
        with self.condition:
            return [layout.object_key(digest, encrypted=encrypted) for digest, _ in self.results.values()]


def _stoppable(open_file: Opener, stop: threading.Event) -> Opener:
    def opened(rel_path: str) -> BinaryIO:
        return _StopReading(open_file(rel_path), stop)  # type: ignore[return-value]

    return opened


class _StopReading(io.RawIOBase):
    def __init__(self, inner: BinaryIO, stop: threading.Event) -> None:
        self.inner = inner
        self.stop_event = stop

    def read(self, size: int = -1) -> bytes:
        if self.stop_event.is_set():
            raise Cancelled("the off-site copy was cancelled")
        return self.inner.read(size)

    def fileno(self) -> int:
        return self.inner.fileno()

    def close(self) -> None:
        self.inner.close()
        super().close()


def iter_chunks(handle: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    while chunk := handle.read(size):
        yield chunk
