"""The restore-test: a database dump restored into a fresh scratch database, its tables counted, the
scratch database dropped whatever happens.

Pure (no Django). The scratch database lives on a server the caller names (RESTORE_TEST_DATABASE_URL, where
the service may create and drop databases) and is named `<prefix><unix time>_<random>`; if the process
doing a restore-test is killed, `drop_leftovers()` finds such databases by that prefix and drops them.
The dump streams from the caller's file object into psql (plain) or pg_restore (custom); it is never held
in memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from backups.verification import dumps
from backups.verification.pg import (
    SCRATCH_PREFIX,
    CustomDumpFeed,
    Pg,
    PgError,
    SqlFeed,
    create_database,
    databases_with_prefix,
    drop_database,
    scratch_name,
    table_counts,
)
from backups.verification.streams import (
    Cancelled,
    ProgressCallback,
    SourceReader,
    StopCheck,
    StreamError,
    decompressed,
)


@dataclass
class RestoreTestResult:
    dump: str
    ok: bool
    tables: dict[str, int] = field(default_factory=dict)  # "schema.table" -> exact row count
    seconds: float = 0.0
    error: str | None = None
    database: str = ""  # the scratch database's name (dropped by now)

    @property
    def rows(self) -> int:
        return sum(self.tables.values())

    def to_document(self) -> dict[str, object]:
        """The CONTRACT §6 shape: `tables` is the number of tables, `rows` their total row count."""
        document: dict[str, object] = {
            "dump": self.dump,
            "ok": self.ok,
            "tables": len(self.tables),
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
        }
        if self.error:
            document["error"] = self.error
        return document


class ScratchRestore:
    """One restore-test in progress: feed it the dump's (decompressed) bytes, then finish() or abort().

    Whatever path is taken, the scratch database is dropped before finish()/abort() return; if even that
    fails, the result says so and drop_leftovers() will find the database later.
    """

    def __init__(
        self,
        server_url: str,
        dump: str,
        fmt: dumps.DumpFormat,
        *,
        prefix: str = SCRATCH_PREFIX,
        should_stop: StopCheck | None = None,
    ) -> None:
        self.dump = dump
        self.started = time.monotonic()
        self.error: str | None = None
        self.database = scratch_name(prefix)
        self._feed: SqlFeed | CustomDumpFeed | None = None
        self._server: Pg | None = None
        self._created = False
        try:
            self._server = Pg.from_url(server_url)
            create_database(self._server, self.database)
            self._created = True
            target = self._server.database(self.database)
            feed_type = CustomDumpFeed if fmt == "custom" else SqlFeed
            self._feed = feed_type(target, should_stop=should_stop)
        except PgError as exc:
            self.error = str(exc)
            self._drop()
        except BaseException:
            self._drop()
            raise

    @property
    def alive(self) -> bool:
        return self._feed is not None and self._feed.alive

    def write(self, chunk: bytes) -> bool:
        if self._feed is None:
            return False
        try:
            return self._feed.write(chunk)
        except BaseException:
            self.abort()
            raise

    def finish(self, dump_problem: str | None = None) -> RestoreTestResult:
        """Commit (unless the dump itself was found incomplete), count the tables, drop the database."""
        tables: dict[str, int] = {}
        try:
            if self._feed is not None:
                if dump_problem is not None:
                    self._feed.abort()
                    self.error = f"not restored: the dump is {dump_problem}"
                else:
                    outcome = self._feed.finish()
                    if not outcome.ok:
                        self.error = outcome.error or "restore failed"
                    else:
                        assert self._server is not None
                        tables = table_counts(self._server.database(self.database))
        except PgError as exc:
            self.error = str(exc)
        except BaseException:
            if self._feed is not None:
                self._feed.abort()
            raise
        finally:
            self._drop()
        return RestoreTestResult(
            dump=self.dump,
            ok=self.error is None,
            tables=tables if self.error is None else {},
            seconds=time.monotonic() - self.started,
            error=self.error,
            database=self.database,
        )

    def abort(self) -> None:
        if self._feed is not None:
            self._feed.abort()
        self._drop()

    def _drop(self) -> None:
        if not self._created or self._server is None:
            return
        try:
            drop_database(self._server, self.database)
            self._created = False
        except PgError as exc:
            self.error = f"{self.error + '; ' if self.error else ''}{exc}"


def dump_chunks(reader: SourceReader, name: dumps.DumpName) -> Iterator[bytes]:
    return decompressed(reader.chunks(), name.compression) if name.compression != "none" else reader.chunks()


def restore_test_dump(
    server_url: str,
    path: str,
    open_file: Callable[[str], BinaryIO],
    *,
    size_bytes: int | None = None,
    prefix: str = SCRATCH_PREFIX,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> RestoreTestResult:
    """Restore one dump of a backup into a scratch database and count its tables (module doc).

    Raises Cancelled (the scratch database is dropped first); every other failure is in the result."""
    name = dumps.dump_name(path) or dumps.DumpName(path, path, "none", None)
    done = 0
    last = -1

    def advance(count: int) -> None:
        nonlocal done, last
        done += count
        percent = min(99, done * 100 // size_bytes) if size_bytes else 0
        if on_progress is not None and percent != last:
            last = percent
            on_progress(percent, f"restore-test of {path}")

    started = time.monotonic()
    try:
        handle = open_file(path)
    except Exception as exc:  # the catalogue's opener raises its own error types
        return RestoreTestResult(path, False, seconds=0.0, error=f"cannot be read ({type(exc).__name__})")
    with handle:
        reader = SourceReader(handle, on_bytes=advance, should_stop=should_stop)
        chunks = dump_chunks(reader, name)
        try:
            first = next(chunks, b"")
        except StreamError as exc:
            return RestoreTestResult(path, False, seconds=time.monotonic() - started, error=str(exc))
        fmt = dumps.sniff_format(first)
        check = dumps.PlainDumpCheck() if fmt == "plain" else None
        scratch = ScratchRestore(server_url, path, fmt, prefix=prefix, should_stop=should_stop)
        problem: str | None = None
        try:
            for chunk in _prepend(first, chunks):
                if check is not None:
                    check.update(chunk)
                if not scratch.write(chunk):
                    break
        except StreamError as exc:
            problem = f"unreadable ({exc})"
        except Cancelled:
            scratch.abort()
            raise
        except BaseException:
            scratch.abort()
            raise
        if problem is None and check is not None and scratch.alive:
            problem = check.facts().problem
        result = scratch.finish(problem)
    if on_progress is not None:
        on_progress(100, f"restore-test of {path} done")
    return result


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def restore_test_backup(
    server_url: str,
    listing: Iterable[tuple[str, int]],
    open_file: Callable[[str], BinaryIO],
    *,
    prefix: str = SCRATCH_PREFIX,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> list[RestoreTestResult]:
    """restore_test_dump() for every dump of a backup (dumps.dump_name decides), one after the other.

    verify_backup(level="deep", restore_test_url=...) does the same within its single read of each file;
    this is for a restore-test on its own."""
    files = [(path, size) for path, size in listing if dumps.dump_name(path) is not None]
    total = sum(size for _, size in files) or 1
    results: list[RestoreTestResult] = []
    before = 0
    for path, size in sorted(files):

        def scaled(percent: int, message: str, base: int = before, size: int = size) -> None:
            if on_progress is not None:
                on_progress(min(99, (base + size * percent // 100) * 100 // total), message)

        results.append(
            restore_test_dump(
                server_url,
                path,
                open_file,
                size_bytes=size,
                prefix=prefix,
                on_progress=scaled,
                should_stop=should_stop,
            )
        )
        before += size
    if on_progress is not None:
        on_progress(100, "restore-tests done")
    return results


def drop_leftovers(server_url: str, prefix: str = SCRATCH_PREFIX, *, keep: Iterable[str] = ()) -> list[str]:
    """Drop every database whose name starts with `prefix` (scratch databases of restore-tests whose
    process was killed), except those in `keep`; returns the names dropped. Raises PgError."""
    server = Pg.from_url(server_url)
    spared = set(keep)
    dropped = []
    for name in databases_with_prefix(server, prefix):
        if name not in spared:
            drop_database(server, name)
            dropped.append(name)
    return dropped
