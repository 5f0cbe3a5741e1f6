"""Restoring a dump into a named target database on the real server: counts equal to the source, a
non-empty target refused, replace only when asked, cancel and failure leave the target as it was."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from backups.restore import database
from backups.restore.contents import backup_contents
from backups.restore.database import TargetNotEmpty, dry_run_database, inspect_target, restore_dump
from backups.verification.pg import PgError
from tests.verification.backup_fixtures import (
    PG_HOST,
    PG_PORT,
    SOURCE_ROWS,
    Opener,
    db_url,
    drop_database,
    listing,
    make_source_database,
    psql,
    unique_name,
)


def _restore(folder: Path, dump: str, target: str, **kwargs) -> database.DatabaseRestoreResult:
    with Opener(folder)(dump) as handle:
        return restore_dump(db_url(target), dump, handle, size_bytes=(folder / dump).stat().st_size, **kwargs)


def test_script_dump_restores_into_a_fresh_database_with_the_source_counts(
    script_backup: Path, source_db: str, target_db: Callable[[], str]
) -> None:
    target = target_db()
    assert inspect_target(db_url(target)).empty
    seen: list[int] = []
    result = _restore(script_backup, f"{source_db}.sql", target, on_progress=lambda pct, _m: seen.append(pct))
    assert result.ok and result.complete and not result.cancelled, result.error
    assert result.tables == SOURCE_ROWS
    assert result.bytes_read == (script_backup / f"{source_db}.sql").stat().st_size
    # Counted independently, straight from the target, and the foreign key came along.
    joined = psql("SELECT count(*) FROM appointments a JOIN clients c ON c.id = a.client_id", target)
    assert joined.strip() == "345"
    assert psql("SELECT count(*) FROM audit.events", target).strip() == "17"
    assert seen[-1] == 100


def test_custom_format_dump_restores_too(
    tmp_path: Path, source_db: str, target_db: Callable[[], str]
) -> None:
    subprocess.run(
        [
            "pg_dump",
            "-h",
            PG_HOST,
            "-p",
            PG_PORT,
            "-U",
            "postgres",
            "-Fc",
            "-f",
            str(tmp_path / "db.dump"),
            source_db,
        ],
        check=True,
    )
    target = target_db()
    result = _restore(tmp_path, "db.dump", target)
    assert result.ok, result.error
    assert result.tables == SOURCE_ROWS


def test_non_empty_target_is_detected_and_refused_without_replace(
    script_backup: Path, source_db: str, target_db: Callable[[], str]
) -> None:
    target = target_db()
    psql("CREATE TABLE keep_me (id int); INSERT INTO keep_me VALUES (1), (2);", target)
    state = inspect_target(db_url(target))
    assert not state.empty
    assert state.tables == {"public.keep_me": 2}
    assert state.size_bytes > 0
    with pytest.raises(TargetNotEmpty):
        _restore(script_backup, f"{source_db}.sql", target)
    assert psql("SELECT count(*) FROM keep_me", target).strip() == "2"


def test_replace_existing_swaps_the_content_in_one_transaction(
    script_backup: Path, source_db: str, target_db: Callable[[], str]
) -> None:
    target = target_db()
    psql("CREATE SCHEMA old; CREATE TABLE old.stale (id int); CREATE TABLE public.clients (x int);", target)
    result = _restore(script_backup, f"{source_db}.sql", target, replace_existing=True)
    assert result.ok, result.error
    assert result.tables == SOURCE_ROWS
    assert psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'old'", target).strip() == "0"


def test_a_target_filled_after_the_check_is_refused_inside_the_transaction(
    script_backup: Path, source_db: str, target_db: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = target_db()
    empty_state = inspect_target(db_url(target))
    psql("CREATE TABLE arrived_late (id int); INSERT INTO arrived_late VALUES (7);", target)
    # The race: the pre-check saw the target empty, something wrote to it before the restore began.
    monkeypatch.setattr(database, "inspect_target", lambda url: empty_state)
    result = _restore(script_backup, f"{source_db}.sql", target)
    assert not result.ok and not result.complete
    assert "restore refused: the target database is not empty" in (result.error or "")
    assert result.tables == {"public.arrived_late": 1}


def test_cancel_half_way_reports_incomplete_and_commits_nothing(
    tmp_path: Path, target_db: Callable[[], str]
) -> None:
    name = unique_name("bsvc_restore_big_")
    make_source_database(name, extra_mb=12)
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
                str(tmp_path / "big.sql"),
                name,
            ],
            check=True,
        )
    finally:
        drop_database(name)
    target = target_db()
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 6

    result = _restore(tmp_path, "big.sql", target, should_stop=stop)
    assert result.cancelled and not result.complete and not result.ok
    assert 0 < result.bytes_read < (tmp_path / "big.sql").stat().st_size
    assert result.tables == {}
    assert inspect_target(db_url(target)).empty


def test_failed_restore_leaves_the_target_as_it_was(
    script_backup: Path, source_db: str, tmp_path: Path, target_db: Callable[[], str]
) -> None:
    sql = (script_backup / f"{source_db}.sql").read_bytes()
    broken = sql.replace(b"COPY public.clients", b"COPY public.no_such_table", 1)
    (tmp_path / "broken.sql").write_bytes(broken)
    target = target_db()
    result = _restore(tmp_path, "broken.sql", target)
    assert not result.ok and not result.complete
    assert 'relation "public.no_such_table" does not exist' in (result.error or "")
    assert inspect_target(db_url(target)).empty


def test_truncated_dump_is_not_restored(
    script_backup: Path, source_db: str, tmp_path: Path, target_db: Callable[[], str]
) -> None:
    sql = (script_backup / f"{source_db}.sql").read_bytes()
    (tmp_path / "cut.sql").write_bytes(sql[: len(sql) * 3 // 4])
    target = target_db()
    result = _restore(tmp_path, "cut.sql", target)
    assert not result.ok
    assert result.error == (
        "not restored: the dump is incomplete: pg_dump's completion trailer is missing (truncated?)"
    )
    assert inspect_target(db_url(target)).empty


def test_dry_run_describes_target_and_dump_and_changes_nothing(
    script_backup: Path, source_db: str, target_db: Callable[[], str]
) -> None:
    target = target_db()
    psql("CREATE TABLE present (id int); INSERT INTO present VALUES (1);", target)
    dump = backup_contents(listing(script_backup), Opener(script_backup)).dump(f"{source_db}.sql")
    assert dump is not None
    before = psql("SELECT relname, reltuples FROM pg_class ORDER BY 1", target)
    plan = dry_run_database(db_url(target), dump)
    assert plan["needs_confirm"] is True
    assert plan["target"]["tables"] == [{"table": "public.present", "rows": 1}]
    assert plan["dump"]["path"] == f"{source_db}.sql" and plan["dump"]["format"] == "plain"
    assert psql("SELECT relname, reltuples FROM pg_class ORDER BY 1", target) == before


def test_unreachable_target_error_masks_the_password() -> None:
    with pytest.raises(PgError) as raised:
        inspect_target("postgresql://restorer:T0p-Secret@127.0.0.1:1/staging")
    assert "T0p-Secret" not in str(raised.value)
    assert "postgresql://restorer:****@127.0.0.1:1/staging" in str(raised.value)
