"""Verifying a backup: `quick` (every file against the manifest) and `deep` (quick, plus every archive
read to its end, every dump checked for completeness, and optionally each dump restore-tested).

Pure (no Django). The caller gives the folder's listing `[(rel_path, size_bytes)]` and an opener
`open_file(rel_path) -> BinaryIO` (the catalogue's safe, no-follow access; whatever it raises for an unsafe
or vanished path is reported as "cannot be read"). Each file is opened and read once, in either level: the
SHA-256 is taken from the same bytes that the gzip/zstd decoder, the tar walker, the dump check and the
restore-test consume.

Deep checks look at the files at the top of the folder, where the script writes its dumps and archives;
deeper files are copies of the platform's own trees, checked against the manifest only.

A labelled demo dump (`-- DEMO DUMP:`) is a problem unless `demo_dumps_ok`: the script writes one exactly
when it could not dump the real database (PostgreSQL unreachable, database missing) and still exits 0, so in
production it means the backup holds no database at all, the one thing a verification must not let pass.
The demo setup, which has no PostgreSQL by design, turns it off.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO, Literal

from backups.verification import dumps
from backups.verification.manifest import (
    MANIFEST_NAME,
    ManifestEntry,
    ManifestError,
    parse_manifest,
    read_manifest,
)
from backups.verification.pg import (
    SCRATCH_PREFIX,
    PgError,
    TocCount,
    error_summary,
    restore_list_sink,
    restore_read_sink,
)
from backups.verification.restore_test import RestoreTestResult, ScratchRestore
from backups.verification.streams import (
    ByteStream,
    Cancelled,
    ProgressCallback,
    SourceReader,
    StopCheck,
    StreamError,
    compression_of,
    decompressed,
)
from backups.verification.tar import TarError, iter_tar

Level = Literal["quick", "deep"]


@dataclass
class FileCheck:
    path: str
    size_bytes: int
    kind: str  # "file", "archive", "dump"
    sha256: str | None = None
    problems: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_document(self) -> dict[str, object]:
        return {
            "path": self.path,
            "size_bytes": self.size_bytes,
            "kind": self.kind,
            "ok": self.ok,
            "sha256": self.sha256,
            "problems": list(self.problems),
            **self.details,
        }


@dataclass
class Verdict:
    level: Level
    manifest: str  # "folder" (the script's MANIFEST.sha256), "service" (the one the service built), "none"
    problems: list[str] = field(default_factory=list)
    files: list[FileCheck] = field(default_factory=list)
    databases: list[RestoreTestResult] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_document(self, at: datetime) -> dict[str, object]:
        """The backup's `verification` document (CONTRACT §6)."""
        return {
            "status": "ok" if self.ok else "failed",
            "level": self.level,
            "at": at.isoformat(),
            "problems": list(self.problems),
            "databases": [result.to_document() for result in self.databases],
        }

    def file_details(self) -> list[dict[str, object]]:
        return [check.to_document() for check in self.files]


def unsafe_reason(path: str) -> str | None:
    """Why a manifest path may not be followed (it could name something outside the folder)."""
    if path.startswith("/"):
        return "absolute path"
    if "\0" in path:
        return "NUL in path"
    parts = path.split("/")
    if ".." in parts:
        return "'..' in path"
    if any(part in ("", ".") for part in parts):
        return "not a canonical relative path"
    return None


class _Progress:
    def __init__(self, total: int, on_progress: ProgressCallback | None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.message = ""
        self._last: tuple[int, str] | None = None
        self._callback = on_progress

    def file(self, message: str) -> None:
        self.message = message
        self._emit()

    def bytes(self, count: int) -> None:
        self.done += count
        self._emit()

    def _emit(self) -> None:
        if self._callback is None:
            return
        state = (min(99, self.done * 100 // self.total), self.message)
        if state != self._last:
            self._last = state
            self._callback(*state)


def verify_backup(
    listing: Iterable[tuple[str, int]],
    open_file: Callable[[str], BinaryIO],
    *,
    level: Level = "quick",
    manifest_text: str | bytes | None = None,
    restore_test_url: str | None = None,
    scratch_prefix: str = SCRATCH_PREFIX,
    demo_dumps_ok: bool = False,
    full_custom_read: bool = True,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> Verdict:
    """Check a backup folder; every problem found names its file.

    `manifest_text` is the manifest the service built for a backup whose folder has no MANIFEST.sha256
    (kept in the service's metadata folder); without it the folder's own MANIFEST.sha256 is used.
    `restore_test_url` (deep only): restore each dump into a scratch database there, within the same read.
    `full_custom_read`: besides `pg_restore --list`, read every data block of a custom-format dump
    (`pg_restore -f /dev/null`) when no restore-test does it anyway.
    Raises Cancelled when should_stop() says so (a scratch database is dropped first).
    """
    started = time.monotonic()
    files = dict(listing)
    progress = _Progress(sum(files.values()), on_progress)
    verdict = Verdict(level=level, manifest="none")

    entries = _load_manifest(files, open_file, manifest_text, verdict, progress)
    expected: dict[str, ManifestEntry] = {}
    for entry in entries:
        reason = unsafe_reason(entry.path)
        if reason is not None:
            verdict.problems.append(
                f"{MANIFEST_NAME} line {entry.line}: unsafe entry {entry.path!r} ({reason})"
            )
        elif entry.path not in files:
            verdict.problems.append(f"{entry.path}: listed in {MANIFEST_NAME} but missing from the folder")
        else:
            expected[entry.path] = entry

    for path in sorted(files):
        if path == MANIFEST_NAME:
            continue
        if should_stop is not None and should_stop():
            raise Cancelled()
        check = FileCheck(path=path, size_bytes=files[path], kind=_kind(path) if level == "deep" else "file")
        progress.file(f"verifying {path}")
        _check_file(
            check,
            open_file,
            level,
            restore_test_url,
            scratch_prefix,
            full_custom_read,
            progress,
            should_stop,
            verdict,
        )
        entry = expected.get(path)
        if entry is None and verdict.manifest != "none":
            check.problems.append(f"missing manifest entry (the file is not listed in {MANIFEST_NAME})")
        elif entry is not None and check.sha256 is not None and check.sha256 != entry.sha256:
            check.problems.append(
                f"digest mismatch (manifest {entry.sha256[:12]}…, file {check.sha256[:12]}…)"
            )
        if check.details.get("demo") and not demo_dumps_ok:
            note = check.details.get("demo_note") or "DEMO DUMP"
            check.problems.append(f"labelled demo dump, not real data ({note})")
        verdict.files.append(check)
        verdict.problems.extend(f"{path}: {problem}" for problem in check.problems)
    for result in verdict.databases:
        if not result.ok:
            verdict.problems.append(f"{result.dump}: restore-test failed: {result.error}")
    verdict.bytes_read = progress.done
    verdict.seconds = time.monotonic() - started
    if on_progress is not None:
        on_progress(100, "verification finished")
    return verdict


def _kind(path: str) -> str:
    if "/" in path:
        return "file"
    if compression_of(path) is not None:
        return "archive"
    if dumps.dump_name(path) is not None:
        return "dump"
    return "file"


def _load_manifest(
    files: dict[str, int],
    open_file: Callable[[str], BinaryIO],
    manifest_text: str | bytes | None,
    verdict: Verdict,
    progress: _Progress,
) -> list[ManifestEntry]:
    try:
        if manifest_text is not None:
            verdict.manifest = "service"
            return parse_manifest(manifest_text)
        if MANIFEST_NAME not in files:
            verdict.problems.append(
                f"no manifest: the folder has no {MANIFEST_NAME} and none was built for it"
            )
            return []
        verdict.manifest = "folder"
        try:
            handle = open_file(MANIFEST_NAME)
        except Exception as exc:  # the catalogue's opener raises its own error types
            verdict.problems.append(f"{MANIFEST_NAME}: cannot be read ({type(exc).__name__})")
            return []
        with handle:
            entries = read_manifest(handle)
        progress.bytes(files[MANIFEST_NAME])
        return entries
    except ManifestError as exc:
        verdict.problems.append(str(exc))
        return []
    except (OSError, UnicodeError) as exc:
        verdict.problems.append(f"{MANIFEST_NAME}: cannot be read ({type(exc).__name__})")
        return []


def _check_file(
    check: FileCheck,
    open_file: Callable[[str], BinaryIO],
    level: Level,
    restore_test_url: str | None,
    scratch_prefix: str,
    full_custom_read: bool,
    progress: _Progress,
    should_stop: StopCheck | None,
    verdict: Verdict,
) -> None:
    try:
        handle = open_file(check.path)
    except Exception as exc:  # the catalogue's opener raises its own error types
        check.problems.append(f"cannot be read ({type(exc).__name__})")
        return
    try:
        with handle:
            reader = SourceReader(handle, on_bytes=progress.bytes, should_stop=should_stop)
            if check.kind == "archive":
                _check_archive(check, reader)
            elif check.kind == "dump":
                result = _check_dump(
                    check, reader, restore_test_url, scratch_prefix, full_custom_read, should_stop
                )
                if result is not None:
                    verdict.databases.append(result)
            reader.drain()
    except OSError as exc:
        check.problems.append(f"read error ({exc.strerror or type(exc).__name__})")
        return
    check.sha256 = reader.hexdigest()
    if reader.bytes_read != check.size_bytes:
        check.problems.append(
            f"size changed while being read ({check.size_bytes} listed, {reader.bytes_read} read)"
        )


def _check_archive(check: FileCheck, reader: SourceReader) -> None:
    compression = compression_of(check.path)
    assert compression is not None
    members = 0
    data_bytes = 0
    try:
        stream = ByteStream(decompressed(reader.chunks(), compression))
        for member, data in iter_tar(stream):
            members += 1
            data_bytes += member.size
            data.skip()
        stream.drain()  # the rest of the record padding, and with it the end of the compressed stream
    except (StreamError, TarError) as exc:
        check.problems.append(f"corrupt archive: {exc}")
    check.details.update({"compression": compression, "members": members, "member_bytes": data_bytes})


def _check_dump(
    check: FileCheck,
    reader: SourceReader,
    restore_test_url: str | None,
    scratch_prefix: str,
    full_custom_read: bool,
    should_stop: StopCheck | None,
) -> RestoreTestResult | None:
    name = dumps.dump_name(check.path)
    assert name is not None
    chunks: Iterator[bytes] = (
        decompressed(reader.chunks(), name.compression) if name.compression != "none" else reader.chunks()
    )
    try:
        first = next(chunks, b"")
    except StreamError as exc:
        check.problems.append(f"corrupt dump: {exc}")
        return None
    fmt = dumps.sniff_format(first)
    check.details.update({"format": fmt, "database": name.database})
    if name.expected is not None and fmt != name.expected:
        check.problems.append(f"not a {name.expected} dump")
        return None
    if fmt == "plain":
        return _check_plain(check, first, chunks, restore_test_url, scratch_prefix, should_stop)
    return _check_custom(
        check, first, chunks, restore_test_url, scratch_prefix, full_custom_read, should_stop
    )


def _check_plain(
    check: FileCheck,
    first: bytes,
    chunks: Iterator[bytes],
    restore_test_url: str | None,
    scratch_prefix: str,
    should_stop: StopCheck | None,
) -> RestoreTestResult | None:
    plain = dumps.PlainDumpCheck()
    scratch = None
    if restore_test_url is not None:
        scratch = ScratchRestore(
            restore_test_url, check.path, "plain", prefix=scratch_prefix, should_stop=should_stop
        )
    unreadable = None
    try:
        for chunk in _prepend(first, chunks):
            plain.update(chunk)
            if scratch is not None and scratch.alive:
                scratch.write(chunk)
    except StreamError as exc:
        unreadable = f"corrupt dump: {exc}"
    except BaseException:
        if scratch is not None:
            scratch.abort()
        raise
    facts = plain.facts()
    check.details.update(facts.details())
    if facts.demo:
        check.details["demo_note"] = facts.demo_note
    problem = unreadable or facts.problem
    if problem is not None:
        check.problems.append(problem)
    if scratch is None:
        return None
    return scratch.finish(problem)


def _check_custom(
    check: FileCheck,
    first: bytes,
    chunks: Iterator[bytes],
    restore_test_url: str | None,
    scratch_prefix: str,
    full_custom_read: bool,
    should_stop: StopCheck | None,
) -> RestoreTestResult | None:
    header = dumps.read_custom_header(first)
    if header is not None:
        check.details.update({"version": header.version, "compression": header.compression})
        if header.database:
            check.details["database"] = header.database
    try:
        toc = TocCount()
        listing = restore_list_sink(toc, should_stop)
        reading = restore_read_sink(should_stop) if full_custom_read and restore_test_url is None else None
    except PgError as exc:
        check.problems.append(f"not checked: {exc}")
        return None
    scratch = None
    if restore_test_url is not None:
        scratch = ScratchRestore(
            restore_test_url, check.path, "custom", prefix=scratch_prefix, should_stop=should_stop
        )
    unreadable = None
    try:
        # pg_restore --list stops reading after the table of contents: write() then says False.
        listing_open = True
        for chunk in _prepend(first, chunks):
            if listing_open:
                listing_open = listing.write(chunk)
            if scratch is not None and scratch.alive:
                scratch.write(chunk)
            if reading is not None:
                reading.write(chunk)
    except StreamError as exc:
        unreadable = f"corrupt dump: {exc}"
    except BaseException:
        listing.abort()
        if reading is not None:
            reading.abort()
        if scratch is not None:
            scratch.abort()
        raise
    code, stderr = listing.finish()
    check.details.update(toc.details())
    if code != 0:
        check.problems.append(f"pg_restore --list failed: {error_summary(stderr) or f'status {code}'}")
    if reading is not None:
        read_code, read_err = reading.finish()
        if read_code != 0:
            check.problems.append(f"pg_restore could not read it to the end: {error_summary(read_err)}")
    if unreadable:
        check.problems.append(unreadable)
    if scratch is None:
        return None
    return scratch.finish(check.problems[0] if check.problems else None)


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest
