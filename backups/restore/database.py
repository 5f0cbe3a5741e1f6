"""Restoring a database dump into a named target database, and looking at that target first.

Pure (no Django). The target URL comes from the service's configuration (RESTORE_TARGETS), never from a
request. The dump streams from the caller's file object into psql (plain) or pg_restore → psql (custom),
inside the commit envelope of backups.verification.pg: the restore commits only once every byte went in
and psql said so. A failed or cancelled restore therefore normally leaves the target as it was; the result
says `complete: False` in every such case, and lists what the target holds afterwards.

A target that is not empty is refused unless `replace_existing` (the service asks for the confirmation
first): then every user schema is dropped and `public` recreated in the same transaction as the restore,
so the old content goes only if the new one arrives. Emptiness is re-checked inside that transaction, so
a target that filled up after the dry run is not restored over by accident.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import psycopg

from backups.restore.contents import DumpInfo
from backups.verification import dumps
from backups.verification.pg import CustomDumpFeed, Pg, PgError, SqlFeed, table_counts
from backups.verification.streams import (
    Cancelled,
    Compression,
    ProgressCallback,
    SourceReader,
    StopCheck,
    StreamError,
    decompressed,
)

# Objects that make a database "not empty": relations, routines, types, schemas other than public, and
# extensions other than plpgsql (which every new database has), outside the system schemas.
_USER_SCHEMA = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
_OBJECT_COUNT = f"""
SELECT
  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_SCHEMA})
+ (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {_USER_SCHEMA})
+ (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE {_USER_SCHEMA} AND t.typrelid = 0 AND t.typcategory <> 'A')
+ (SELECT count(*) FROM pg_namespace n WHERE {_USER_SCHEMA} AND n.nspname <> 'public')
+ (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql')
"""

_GUARD_EMPTY = f"""DO $bsvc$
BEGIN
  IF ({_OBJECT_COUNT}) > 0 THEN
    RAISE EXCEPTION 'restore refused: the target database is not empty';
  END IF;
END $bsvc$;
""".encode()

_REPLACE = f"""DO $bsvc$
DECLARE s name;
BEGIN
  FOR s IN SELECT n.nspname FROM pg_namespace n WHERE {_USER_SCHEMA} LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', s);
  END LOOP;
  CREATE SCHEMA public;
END $bsvc$;
""".encode()


class TargetNotEmpty(Exception):
    """The target holds objects and the restore was not told to replace them."""


@dataclass
class TargetState:
    display: str  # masked URL
    database: str
    size_bytes: int
    objects: int
    tables: dict[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.objects == 0

    def to_document(self) -> dict[str, object]:
        return {
            "database": self.database,
            "empty": self.empty,
            "size_bytes": self.size_bytes,
            "objects": self.objects,
            "tables": [{"table": name, "rows": rows} for name, rows in self.tables.items()],
        }


def inspect_target(url: str) -> TargetState:
    """Is the target empty, which tables with how many rows (exact counts), how big is it. Changes
    nothing. Raises PgError (masked) when it cannot be reached."""
    target = Pg.from_url(url)
    try:
        with target.connect() as conn:
            row = conn.execute(
                f"SELECT current_database(), pg_database_size(current_database()), ({_OBJECT_COUNT})"
            ).fetchone()
    except psycopg.Error as exc:
        reason = target.scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise PgError(f"cannot inspect {target.display}: {reason}") from None
    assert row is not None
    return TargetState(target.display, str(row[0]), int(row[1]), int(row[2]), table_counts(target))


@dataclass
class DatabaseRestoreResult:
    dump: str
    target: str  # masked URL
    ok: bool
    complete: bool
    cancelled: bool = False
    error: str | None = None
    seconds: float = 0.0
    bytes_read: int = 0
    tables: dict[str, int] = field(default_factory=dict)  # what the target holds afterwards

    def to_document(self) -> dict[str, object]:
        return {
            "dump": self.dump,
            "ok": self.ok,
            "complete": self.complete,
            "cancelled": self.cancelled,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "bytes_read": self.bytes_read,
            "tables": len(self.tables),
            "rows": sum(self.tables.values()),
            "table_rows": [{"table": name, "rows": rows} for name, rows in self.tables.items()],
        }


def restore_dump(
    target_url: str,
    dump_path: str,
    fileobj: BinaryIO,
    *,
    size_bytes: int | None = None,
    replace_existing: bool = False,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> DatabaseRestoreResult:
    """Stream the dump `dump_path` (its name gives the compression; its first bytes the format) into the
    target database. TargetNotEmpty before anything is written when the target is not empty and
    `replace_existing` is False; PgError when the target cannot be reached. Everything else, a cancel
    included, is in the result."""
    started = time.monotonic()
    target = Pg.from_url(target_url)
    state = inspect_target(target_url)
    if not state.empty and not replace_existing:
        raise TargetNotEmpty(f"{state.database} is not empty ({state.objects} objects)")
    name = dumps.dump_name(dump_path) or dumps.DumpName(dump_path, dump_path, "none", None)
    compression: Compression = name.compression
    done = 0
    last = -1

    def advance(count: int) -> None:
        nonlocal done, last
        done += count
        percent = min(99, done * 100 // size_bytes) if size_bytes else 0
        if on_progress is not None and percent != last:
            last = percent
            on_progress(percent, f"restoring {dump_path} into {state.database}")

    reader = SourceReader(fileobj, on_bytes=advance, should_stop=should_stop)
    chunks = decompressed(reader.chunks(), compression) if compression != "none" else reader.chunks()
    result = DatabaseRestoreResult(dump=dump_path, target=target.display, ok=False, complete=False)
    feed: SqlFeed | CustomDumpFeed | None = None
    try:
        first = next(chunks, b"")
        fmt = dumps.sniff_format(first)
        check = dumps.PlainDumpCheck() if fmt == "plain" else None
        preamble = _REPLACE if replace_existing else _GUARD_EMPTY
        feed_type = CustomDumpFeed if fmt == "custom" else SqlFeed
        feed = feed_type(target, preamble=preamble, should_stop=should_stop)
        for chunk in _prepend(first, chunks):
            if check is not None:
                check.update(chunk)
            if not feed.write(chunk):
                break
        problem = check.facts().problem if check is not None and feed.alive else None
        if problem is not None:
            feed.abort()
            result.error = f"not restored: the dump is {problem}"
        else:
            outcome = feed.finish()
            result.ok = result.complete = outcome.ok
            result.error = outcome.error
    except Cancelled:
        if feed is not None:
            feed.abort()
        result.cancelled = True
        result.error = "cancelled"
    except StreamError as exc:
        if feed is not None:
            feed.abort()
        result.error = f"not restored: the dump is unreadable ({exc})"
    except PgError as exc:
        if feed is not None:
            feed.abort()
        result.error = str(exc)
    except BaseException:
        if feed is not None:
            feed.abort()
        raise
    result.bytes_read = reader.bytes_read
    try:
        result.tables = table_counts(target)
    except PgError as exc:
        result.error = f"{result.error + '; ' if result.error else ''}{exc}"
    result.seconds = time.monotonic() - started
    if on_progress is not None:
        on_progress(100, "restore finished" if result.ok else "restore stopped")
    return result


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def dry_run_database(target_url: str, dump: DumpInfo) -> dict[str, object]:
    """What a restore would do, changing nothing: the target's current state, the dump that would go in,
    and whether the restore needs the confirmation (a non-empty target). Raises PgError."""
    state = inspect_target(target_url)
    return {"target": state.to_document(), "dump": dump.to_document(), "needs_confirm": not state.empty}
