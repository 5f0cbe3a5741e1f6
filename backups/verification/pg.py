"""PostgreSQL plumbing shared by the restore-test and restores: URLs without their secrets, scratch
databases, table counts, and dumps streamed into `psql` / `pg_restore`.

Pure (no Django). Passwords never reach a command line (they would show in `ps`), an exception or a
message: they travel in PGPASSWORD and are scrubbed from every text this module produces.

The commit envelope: `psql` is fed `BEGIN;`, the dump, then `COMMIT;` and an `\\echo` of a random marker,
and the restore counts as done only when the marker comes back on stdout. A dump cut short (a truncated
file, a cancel, the feeding process killed) therefore never commits: psql reaches end of input inside the
open transaction, and the server rolls it back when psql disconnects. (psql alone would commit at end of
input, even after a COPY cut in the middle.) One exception: a dump holding large objects carries its own
BEGIN/COMMIT pairs, which end the envelope early, so such a restore can leave part of itself behind.

Restricted mode: psql obeys meta-commands found in its input, `\\!` (a shell command) among them, and a dump
is only as trustworthy as whoever could write the backup folder. The feed therefore puts psql into
restricted mode (`\\restrict`, psql 15.14+ / 16.10+ / 17.6+) with a random key of its own before the first
byte of the dump, and drops the dump's own `\\restrict` / `\\unrestrict` lines (pg_dump writes them with a
key that anyone holding the file knows, and psql refuses a second `\\restrict`): until the feed's own
`\\unrestrict` after the last byte, psql refuses every meta-command, and `\\connect` or `\\!` in a dump
fails the restore instead of running.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backups.verification.streams import Cancelled, StopCheck

SCRATCH_PREFIX = "bsvc_restoretest_"
PSQL = "psql"
PG_RESTORE = "pg_restore"
CONNECT_TIMEOUT_SECONDS = 10
_POLL_SECONDS = 0.2
_STDERR_TAIL_BYTES = 16 << 10
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")

_URL_PASSWORD = re.compile(r"(://[^/:@?#]*:)([^@/?#]*)(@)")
_QUERY_PASSWORD = re.compile(r"((?:^|[?&\s])password=)([^&\s]*)", re.IGNORECASE)


class PgError(Exception):
    """A PostgreSQL operation failed; the message holds no password."""


def mask_url(url: str) -> str:
    """`postgres://user:****@host/db`: the password (in the authority or a query parameter) masked."""
    masked = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}****{m.group(3)}", url)
    return _QUERY_PASSWORD.sub(lambda m: f"{m.group(1)}****", masked)


@dataclass(frozen=True)
class Pg:
    """Where to connect: a libpq conninfo without the password, the password apart, a masked display."""

    conninfo: str
    password: str | None
    display: str
    dbname: str

    @classmethod
    def from_url(cls, url: str, dbname: str | None = None) -> Pg:
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error:
            raise PgError(f"invalid PostgreSQL URL {mask_url(url)}") from None
        password = params.pop("password", None)
        if dbname is not None:
            params["dbname"] = dbname
        params.setdefault("connect_timeout", str(CONNECT_TIMEOUT_SECONDS))
        display = mask_url(url)
        if dbname is not None:
            display = _with_dbname(display, dbname)
        return cls(
            conninfo=make_conninfo(**params),
            password=str(password) if password else None,
            display=display,
            dbname=str(params.get("dbname") or params.get("user") or ""),
        )

    def database(self, dbname: str) -> Pg:
        params = conninfo_to_dict(self.conninfo)
        params["dbname"] = dbname
        return Pg(make_conninfo(**params), self.password, _with_dbname(self.display, dbname), dbname)

    def scrub(self, text: str) -> str:
        text = mask_url(text)
        if self.password:
            text = text.replace(self.password, "****")
        return text

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PGPASSWORD", None)
        if self.password:
            env["PGPASSWORD"] = self.password
        env.setdefault("PGAPPNAME", "backup-service")
        return env

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection:
        try:
            return psycopg.connect(self.conninfo, password=self.password, autocommit=autocommit)
        except psycopg.Error as exc:
            raise PgError(f"cannot connect to {self.display}: {self.scrub(_first_line(exc))}") from None


def _with_dbname(url: str, dbname: str) -> str:
    if "://" not in url:
        return f"{url} dbname={dbname}"
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def _failed(where: Pg, what: str, exc: BaseException) -> PgError:
    return PgError(f"{what} on {where.display}: {where.scrub(_first_line(exc))}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- databases ------------------------------------------------------------------------------------------


def scratch_name(prefix: str = SCRATCH_PREFIX) -> str:
    # Creation time in the name lets an operator see how old a leftover is; 63 bytes is PG's limit.
    return f"{prefix}{int(time.time())}_{secrets.token_hex(4)}"[:63]


def create_database(server: Pg, name: str) -> None:
    # template0: a scratch database must start empty even if template1 was customised on that server.
    try:
        with server.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise _failed(server, f"cannot create database {name}", exc) from None


def drop_database(server: Pg, name: str) -> None:
    """DROP … WITH (FORCE): backends a killed psql left behind must not keep the database alive."""
    try:
        with server.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise _failed(server, f"cannot drop database {name}", exc) from None


def databases_with_prefix(server: Pg, prefix: str) -> list[str]:
    if not prefix:
        raise ValueError("an empty prefix would match every database")
    try:
        with server.connect() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY datname", (prefix,)
            ).fetchall()
    except psycopg.Error as exc:
        raise _failed(server, "cannot list databases", exc) from None
    return [row[0] for row in rows]


def table_counts(target: Pg) -> dict[str, int]:
    """Every ordinary table (partitions included, their parents not, so no row counts twice) and its exact
    row count, as `schema.table`."""
    try:
        with target.connect() as conn:
            tables = conn.execute(
                """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.relkind = 'r' AND n.nspname <> ALL(%s)
                     AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
                   ORDER BY 1, 2""",
                (list(_SYSTEM_SCHEMAS),),
            ).fetchall()
            counts: dict[str, int] = {}
            for schema, table in tables:
                name = sql.Identifier(schema, table)
                query = sql.SQL("SELECT count(*) FROM {}").format(name)
                counts[f"{schema}.{table}"] = int(conn.execute(query).fetchone()[0])
            return counts
    except psycopg.Error as exc:
        raise _failed(target, "cannot count rows", exc) from None


# --- processes ------------------------------------------------------------------------------------------


class _Tail:
    """The last bytes of a stream, read to the end by a daemon thread (so the child never blocks on it)."""

    def __init__(
        self,
        stream: IO[bytes],
        limit: int = _STDERR_TAIL_BYTES,
        on_line: Callable[[bytes], None] | None = None,
    ) -> None:
        self._data: deque[bytes] = deque()
        self._size = 0
        self._limit = limit
        self._on_line = on_line
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[bytes]) -> None:
        with contextlib.suppress(OSError, ValueError):
            # Bounded reads: a line longer than 64 KiB arrives in pieces instead of all at once.
            for line in iter(lambda: stream.readline(1 << 16), b""):
                if self._on_line is not None:
                    self._on_line(line)
                self._data.append(line[: self._limit])
                self._size += len(self._data[-1])
                while self._size > self._limit and len(self._data) > 1:
                    self._size -= len(self._data.popleft())

    def text(self, timeout: float = 5) -> str:
        self._thread.join(timeout)
        return b"".join(self._data).decode("utf-8", "replace")


def error_summary(stderr: str) -> str:
    """The first ERROR/FATAL line of psql or pg_restore output (the cause, not the aftermath), else the
    last non-empty line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "ERROR:" in line or "FATAL:" in line or "error:" in line:
            return line[:500]
    return lines[-1][:500] if lines else ""


class _Writer:
    """Non-blocking writes to a child's stdin, so a busy child (a long CREATE INDEX) never keeps
    should_stop() from being looked at."""

    def __init__(self, process: subprocess.Popen, should_stop: StopCheck | None) -> None:
        assert process.stdin is not None
        self._process = process
        self._fd = process.stdin.fileno()
        os.set_blocking(self._fd, False)
        self._should_stop = should_stop
        self.broken = False

    def write(self, data: bytes) -> bool:
        """False once the child stopped reading (exited, broken pipe)."""
        if self.broken:
            return False
        view = memoryview(data)
        while view:
            if self._should_stop is not None and self._should_stop():
                raise Cancelled()
            try:
                _, writable, _ = select.select([], [self._fd], [], _POLL_SECONDS)
                if not writable:
                    if self._process.poll() is not None:
                        self.broken = True
                        return False
                    continue
                written = os.write(self._fd, view)
            except BlockingIOError:
                continue
            except (BrokenPipeError, OSError, ValueError):
                self.broken = True
                return False
            view = view[written:]
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self._process.stdin is not None
            self._process.stdin.close()


def _spawn(args: list[str], **kwargs: Any) -> subprocess.Popen:
    # No new session: the children stay in the job's process group, so killing the job's group ends
    # them too; on their own, they end at the end of their input (the module doc says why that is safe).
    try:
        return subprocess.Popen(args, **kwargs)
    except OSError as exc:
        raise PgError(f"cannot start {args[0]}: {exc.strerror or type(exc).__name__}") from None


def _kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, OSError):
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def _wait(process: subprocess.Popen, should_stop: StopCheck | None) -> int:
    while True:
        try:
            return process.wait(_POLL_SECONDS)
        except subprocess.TimeoutExpired:
            if should_stop is not None and should_stop():
                _kill(process)
                raise Cancelled() from None


@dataclass
class FeedResult:
    ok: bool
    error: str | None = None
    details: dict[str, object] = field(default_factory=dict)


class RestrictLines:
    """Drops lines that are exactly `\\restrict <key>` or `\\unrestrict <key>` from a stream of SQL.

    Such a line cannot be COPY data (COPY's text format doubles a leading backslash), so the lines removed
    are only the meta-commands themselves. A line split across two chunks is held back (at most 512 bytes).
    """

    _LINE = re.compile(rb"\\(?:un)?restrict [0-9A-Za-z]+")

    def __init__(self) -> None:
        self._carry = b""
        self._line_start = True
        self.dropped = 0

    def feed(self, data: bytes, *, final: bool = False) -> bytes:
        buf = self._carry + data if self._carry else data
        self._carry = b""
        at_line_start = self._line_start
        hold = len(buf)
        if not final:
            # A last, unfinished line that starts with a backslash may be one of ours: keep it for later.
            tail = buf.rfind(b"\n") + 1
            if (tail or at_line_start) and buf[tail : tail + 1] == b"\\" and len(buf) - tail <= 512:
                hold = tail
        if hold < len(buf):
            self._carry, buf = buf[hold:], buf[:hold]
            self._line_start = True
        elif buf:
            self._line_start = buf.endswith(b"\n")
        # bytes.find for the word is fast; the rare hits are then checked for being a whole line.
        drops: list[tuple[int, int]] = []
        pos = 0
        while (word := buf.find(b"restrict ", pos)) >= 0:
            pos = word + 9
            if buf[word - 1 : word] == b"\\":
                start = word - 1
            elif buf[word - 3 : word] == b"\\un":
                start = word - 3
            else:
                continue
            if (start == 0 and not at_line_start) or (start > 0 and buf[start - 1 : start] != b"\n"):
                continue
            end = buf.find(b"\n", word)
            end = len(buf) if end < 0 else end
            if self._LINE.fullmatch(buf[start:end].rstrip(b"\r \t")):
                drops.append((start, min(end + 1, len(buf))))
                pos = end
        if not drops:
            return buf
        self.dropped += len(drops)
        out: list[bytes] = []
        copied = 0
        for start, end in drops:
            out.append(buf[copied:start])
            copied = end
        out.append(buf[copied:])
        return b"".join(out)


class SqlFeed:
    """`psql -X -q -v ON_ERROR_STOP=1` fed SQL through stdin inside the commit envelope (module doc).

    `write()` returns False once psql has stopped (an SQL error): the caller may go on reading its source
    (to finish a hash) but nothing more reaches the database. `finish()` commits only if psql took every
    byte; `abort()` kills psql, and the open transaction rolls back.
    """

    def __init__(self, target: Pg, *, preamble: bytes = b"", should_stop: StopCheck | None = None) -> None:
        self.target = target
        self._marker = f"bsvc-restore-committed-{secrets.token_hex(16)}".encode()
        self._key = secrets.token_hex(24).encode()
        self._restrict_lines = RestrictLines()
        self._committed = False
        self._should_stop = should_stop
        self._process = _spawn(
            [PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-P", "pager=off", "-d", target.conninfo],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=target.env(),
        )
        assert self._process.stdout is not None and self._process.stderr is not None
        self._stdout = _Tail(self._process.stdout, limit=4096, on_line=self._look_for_marker)
        self._stderr = _Tail(self._process.stderr)
        self._writer = _Writer(self._process, should_stop)
        self.bytes_written = 0
        self._writer.write(b"BEGIN;\n" + preamble + b"\\restrict " + self._key + b"\n")

    def _look_for_marker(self, line: bytes) -> None:
        if line.rstrip(b"\r\n") == self._marker:
            self._committed = True

    @property
    def alive(self) -> bool:
        return not self._writer.broken

    def write(self, data: bytes) -> bool:
        if not self._writer.write(self._restrict_lines.feed(data)):
            return False
        self.bytes_written += len(data)
        return True

    def finish(self, should_stop: StopCheck | None = None) -> FeedResult:
        """Commit if every byte went in; the result says whether the marker came back. `should_stop`
        (default: the one given at construction) is looked at while psql works through the end."""
        # The newline first: a dump whose last line has none must not swallow what follows into it.
        ending = b"\n\\unrestrict " + self._key + b"\nCOMMIT;\n\\echo " + self._marker + b"\n"
        took_all = self.alive and self._writer.write(self._restrict_lines.feed(b"", final=True) + ending)
        self._writer.close()
        try:
            code = _wait(self._process, should_stop or self._should_stop)
        except Cancelled:
            self._stdout.text(1)
            raise
        self._stdout.text()
        stderr = self._stderr.text()
        if took_all and code == 0 and self._committed:
            return FeedResult(ok=True)
        reason = error_summary(stderr) or (
            f"psql exited with status {code}" if code else "psql did not commit"
        )
        return FeedResult(ok=False, error=self.target.scrub(reason))

    def abort(self) -> None:
        self._writer.close()
        _kill(self._process)
        self._stdout.text(1)
        self._stderr.text(1)


class CustomDumpFeed:
    """A custom-format dump: `pg_restore --no-owner -f -` turns it into SQL, a thread pumps that SQL into
    a SqlFeed, so the commit envelope and error handling are the same as for a plain dump."""

    def __init__(self, target: Pg, *, preamble: bytes = b"", should_stop: StopCheck | None = None) -> None:
        self.target = target
        # The pump thread writes into this feed: should_stop() stays on the caller's thread, where
        # it may use thread-bound resources (a database connection).
        self._sql = SqlFeed(target, preamble=preamble)
        self._should_stop = should_stop
        self._process = _spawn(
            [PG_RESTORE, "--no-owner", "-f", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=target.env(),
        )
        assert self._process.stdout is not None and self._process.stderr is not None
        self._stderr = _Tail(self._process.stderr)
        self._writer = _Writer(self._process, should_stop)
        self._pump_error: BaseException | None = None
        self._pump = threading.Thread(target=self._pump_sql, args=(self._process.stdout,), daemon=True)
        self._pump.start()
        self.bytes_written = 0

    def _pump_sql(self, stdout: IO[bytes]) -> None:
        try:
            while chunk := stdout.read1(1 << 20):
                if not self._sql.write(chunk):
                    break  # psql stopped on an error; pg_restore then dies of EPIPE, which is fine
        except Cancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self._pump_error = exc
        finally:
            with contextlib.suppress(OSError):
                stdout.close()

    @property
    def alive(self) -> bool:
        return not self._writer.broken and self._sql.alive

    def write(self, data: bytes) -> bool:
        if not self._sql.alive or not self._writer.write(data):
            return False
        self.bytes_written += len(data)
        return True

    def finish(self) -> FeedResult:
        took_all = not self._writer.broken
        self._writer.close()
        code = _wait(self._process, self._should_stop)
        self._pump.join()
        stderr = self._stderr.text()
        if self._pump_error is not None or not took_all or code != 0:
            sql_failed = not self._sql.alive
            self._sql.abort()
            if sql_failed:
                result = FeedResult(ok=False, error=self._sql_error())
            else:
                reason = error_summary(stderr) or f"pg_restore exited with status {code}"
                result = FeedResult(ok=False, error=self.target.scrub(reason))
            return result
        return self._sql.finish(self._should_stop)

    def _sql_error(self) -> str:
        return self.target.scrub(error_summary(self._sql._stderr.text()) or "psql stopped")

    def abort(self) -> None:
        self._writer.close()
        _kill(self._process)
        self._sql.abort()
        self._pump.join(5)


class TocCount:
    """What `pg_restore --list` says, counted line by line as it comes (a big schema lists a lot)."""

    def __init__(self) -> None:
        self.entries = 0
        self.table_data = 0
        self.database: str | None = None

    def line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if line.startswith(";"):
            if line.startswith(";     dbname:"):
                self.database = line.split(":", 1)[1].strip()
        elif line.strip():
            self.entries += 1
            if " TABLE DATA " in line:
                self.table_data += 1

    def details(self) -> dict[str, object]:
        return {"toc_entries": self.entries, "table_data_entries": self.table_data, "database": self.database}


class ProcessSink:
    """A pg_restore that reads a dump from stdin for an integrity read: `--list` (the table of contents,
    each line handed to `on_line`) or `-f /dev/null` (every data block, decompressed, nothing kept)."""

    def __init__(
        self,
        args: Iterable[str],
        *,
        should_stop: StopCheck | None = None,
        on_line: Callable[[bytes], None] | None = None,
    ) -> None:
        self._process = _spawn(
            [PG_RESTORE, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if on_line is not None else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PGAPPNAME": "backup-service"},
        )
        assert self._process.stderr is not None
        self._stdout = _Tail(self._process.stdout, limit=4096, on_line=on_line) if on_line else None
        self._stderr = _Tail(self._process.stderr)
        self._writer = _Writer(self._process, should_stop)
        self._should_stop = should_stop

    def write(self, data: bytes) -> bool:
        return self._writer.write(data)

    def finish(self) -> tuple[int, str]:
        self._writer.close()
        code = _wait(self._process, self._should_stop)
        if self._stdout is not None:
            self._stdout.text()
        return code, self._stderr.text()

    def abort(self) -> None:
        self._writer.close()
        _kill(self._process)


def restore_list_sink(toc: TocCount, should_stop: StopCheck | None = None) -> ProcessSink:
    return ProcessSink(["--list", "-f", "-"], should_stop=should_stop, on_line=toc.line)


def restore_read_sink(should_stop: StopCheck | None = None) -> ProcessSink:
    return ProcessSink(["-f", os.devnull], should_stop=should_stop)
