"""The restore-test on its own: real dumps into scratch databases on the real server, which are gone
afterwards whatever happened — success, SQL error, cancel, or the process doing it killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backups.verification.pg import PgError, mask_url
from backups.verification.restore_test import drop_leftovers, restore_test_backup, restore_test_dump
from backups.verification.streams import Cancelled
from tests.servers import PROJECT
from tests.verification.backup_fixtures import (
    PG_HOST,
    PG_PORT,
    SERVER_URL,
    SOURCE_ROWS,
    Opener,
    create_database,
    databases_like,
    drop_database,
    listing,
    make_source_database,
    psql,
    unique_name,
)


@pytest.fixture(scope="module")
def big_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~25 MB plain dump, so a restore takes long enough to be interrupted in the middle."""
    name = unique_name("bsvc_verify_big_")
    make_source_database(name, extra_mb=24)
    folder = tmp_path_factory.mktemp("big")
    try:
        subprocess.run(
            [
                "pg_dump",
                "-h",
                PG_HOST,
                "-p",
                PG_PORT,
                "-U",
                "postgres",
                "--no-owner",
                "-f",
                str(folder / "big.sql"),
                name,
            ],
            check=True,
        )
    finally:
        drop_database(name)
    return folder


def test_restore_test_of_the_script_dump_counts_what_the_source_holds(
    script_backup: Path, source_db: str, scratch_prefix: str
) -> None:
    path = f"{source_db}.sql"
    seen: list[int] = []
    result = restore_test_dump(
        SERVER_URL,
        path,
        Opener(script_backup),
        size_bytes=(script_backup / path).stat().st_size,
        prefix=scratch_prefix,
        on_progress=lambda percent, _message: seen.append(percent),
    )
    assert result.ok, result.error
    source_counts = {
        f"{schema}.{table}": int(psql(f'SELECT count(*) FROM "{schema}"."{table}"', source_db))
        for schema, table in (name.split(".") for name in SOURCE_ROWS)
    }
    assert result.tables == source_counts == SOURCE_ROWS
    assert result.database.startswith(scratch_prefix)
    assert databases_like(scratch_prefix) == []
    assert seen[-1] == 100


def test_restore_test_backup_tests_every_dump(
    script_backup: Path, source_db: str, scratch_prefix: str
) -> None:
    opener = Opener(script_backup)
    results = restore_test_backup(SERVER_URL, listing(script_backup), opener, prefix=scratch_prefix)
    assert [(r.dump, r.ok, r.rows) for r in results] == [(f"{source_db}.sql", True, 482)]


def test_failed_restore_reports_the_sql_error_and_drops_the_scratch_database(
    script_backup: Path, source_db: str, tmp_path: Path, scratch_prefix: str
) -> None:
    sql = (script_backup / f"{source_db}.sql").read_bytes()
    trailer = sql.index(b"--\n-- PostgreSQL database dump complete")
    broken = sql[:trailer] + b"INSERT INTO missing_table VALUES (1);\n" + sql[trailer:]
    (tmp_path / "bad.sql").write_bytes(broken)
    result = restore_test_dump(SERVER_URL, "bad.sql", Opener(tmp_path), prefix=scratch_prefix)
    assert not result.ok
    assert result.error == 'ERROR:  relation "missing_table" does not exist'
    assert result.tables == {}
    assert databases_like(scratch_prefix) == []


def test_sql_file_that_is_not_a_pg_dump_is_not_restored(tmp_path: Path, scratch_prefix: str) -> None:
    (tmp_path / "hand.sql").write_text("CREATE TABLE t (id int);\n")
    result = restore_test_dump(SERVER_URL, "hand.sql", Opener(tmp_path), prefix=scratch_prefix)
    assert not result.ok
    assert result.error == (
        "not restored: the dump is not a pg_dump file (no pg_dump header or completion trailer)"
    )
    assert databases_like(scratch_prefix) == []


def test_cancel_mid_restore_raises_and_drops_the_scratch_database(
    big_dump: Path, scratch_prefix: str
) -> None:
    calls = 0
    during: list[str] = []

    def stop() -> bool:
        nonlocal calls
        calls += 1
        if calls == 10:
            during.extend(databases_like(scratch_prefix))
        return calls >= 10

    with pytest.raises(Cancelled):
        restore_test_dump(SERVER_URL, "big.sql", Opener(big_dump), prefix=scratch_prefix, should_stop=stop)
    assert len(during) == 1
    assert databases_like(scratch_prefix) == []


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from backups.verification.restore_test import restore_test_dump

    folder, prefix, url = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

    class Slow:
        def __init__(self, handle):
            self.handle = handle
        def read(self, size=-1):
            time.sleep(0.05)
            return self.handle.read(size)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.handle.close()

    restore_test_dump(url, "big.sql", lambda rel: Slow(open(folder / rel, "rb")), prefix=prefix)
    """
)


def test_sigkill_mid_restore_leaves_only_a_rolled_back_scratch_database_that_drop_leftovers_removes(
    big_dump: Path, scratch_prefix: str
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(big_dump), scratch_prefix, SERVER_URL],
        cwd=PROJECT,
        start_new_session=True,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not databases_like(scratch_prefix):
            assert child.poll() is None, child.stderr.read() if child.stderr else b""
            assert time.monotonic() < deadline, "no scratch database appeared"
            time.sleep(0.05)
        time.sleep(0.5)  # some ten 1 MiB chunks in: psql is in the middle of the data
        assert child.poll() is None
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        # psql, left without its feeder, reaches end of input and exits by itself.
        deadline = time.monotonic() + 20
        while _group_members(child.pid):
            assert time.monotonic() < deadline, f"left running: {_group_members(child.pid)}"
            time.sleep(0.1)
    finally:
        if _group_members(child.pid):
            os.killpg(child.pid, signal.SIGKILL)
    [leftover] = databases_like(scratch_prefix)
    deadline = time.monotonic() + 20
    while psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{leftover}'").strip() != "0":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # The commit envelope: the half-fed restore never committed.
    relations = psql("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace", leftover)
    assert relations.strip() == "0"
    assert drop_leftovers(SERVER_URL, scratch_prefix) == [leftover]
    assert databases_like(scratch_prefix) == []


def test_drop_leftovers_spares_kept_names_and_other_prefixes(scratch_prefix: str) -> None:
    kept, gone = f"{scratch_prefix}kept", f"{scratch_prefix}gone"
    other = unique_name("bsvc_vt_other_")
    for name in (kept, gone, other):
        create_database(name)
    try:
        assert drop_leftovers(SERVER_URL, scratch_prefix, keep=[kept]) == [gone]
        assert databases_like(scratch_prefix) == [kept]
        assert databases_like(other) == [other]
    finally:
        for name in (kept, other):
            drop_database(name)
    with pytest.raises(ValueError):
        drop_leftovers(SERVER_URL, "")


def test_passwords_never_appear_in_errors() -> None:
    url = "postgresql://restorer:Pa55-w0rd@127.0.0.1:1/postgres"
    assert mask_url(url) == "postgresql://restorer:****@127.0.0.1:1/postgres"
    assert (
        mask_url("postgres://h/db?password=Pa55-w0rd&sslmode=off")
        == "postgres://h/db?password=****&sslmode=off"
    )
    with pytest.raises(PgError) as raised:
        drop_leftovers(url, "bsvc_x_")
    assert "Pa55-w0rd" not in str(raised.value)
    assert "restorer:****@127.0.0.1:1" in str(raised.value)


def test_meta_commands_in_a_dump_are_refused_even_after_its_own_unrestrict(
    script_backup: Path, source_db: str, tmp_path: Path, scratch_prefix: str
) -> None:
    sql = (script_backup / f"{source_db}.sql").read_bytes()
    key = sql.split(b"\\restrict ", 1)[1].split(b"\n", 1)[0]
    pwned = tmp_path / "pwned"
    hostile = sql.replace(
        b"\\restrict " + key + b"\n",
        b"\\restrict " + key + b"\n\\unrestrict " + key + b"\n\\! touch " + str(pwned).encode() + b"\n",
        1,
    )
    (tmp_path / "hostile.sql").write_bytes(hostile)
    result = restore_test_dump(SERVER_URL, "hostile.sql", Opener(tmp_path), prefix=scratch_prefix)
    assert not result.ok
    assert "backslash commands are restricted" in (result.error or "")
    assert not pwned.exists()
    assert databases_like(scratch_prefix) == []


def test_missing_psql_is_a_failed_restore_test_not_a_crash(
    script_backup: Path, source_db: str, scratch_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backups.verification import pg

    monkeypatch.setattr(pg, "PSQL", "/nonexistent/psql")
    result = restore_test_dump(SERVER_URL, f"{source_db}.sql", Opener(script_backup), prefix=scratch_prefix)
    assert not result.ok
    assert result.error == "cannot start /nonexistent/psql: No such file or directory"
    assert databases_like(scratch_prefix) == []
