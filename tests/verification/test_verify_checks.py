"""quick and deep verification of real backups written by the reference script, intact and damaged."""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from backports import zstd

from backups.verification.checks import verify_backup
from backups.verification.manifest import build_manifest
from backups.verification.streams import Cancelled
from tests.servers import free_port
from tests.verification.backup_fixtures import (
    PG_HOST,
    PG_PORT,
    SERVER_URL,
    SOURCE_ROWS,
    Opener,
    copy_backup,
    databases_like,
    drop_database,
    listing,
    make_source_database,
    rewrite_manifest,
    run_reference_script,
    unique_name,
)


def _verify(folder: Path, **kwargs):
    opener = Opener(folder)
    return verify_backup(listing(folder), opener, **kwargs), opener


def _dump_name(folder: Path) -> str:
    return next(path.name for path in folder.glob("*.sql"))


def test_reference_backup_passes_quick_and_deep_with_restore_test(
    script_backup: Path, source_db: str, scratch_prefix: str
) -> None:
    quick, _ = _verify(script_backup)
    assert quick.ok, quick.problems
    assert quick.manifest == "folder"
    deep, _ = _verify(script_backup, level="deep", restore_test_url=SERVER_URL, scratch_prefix=scratch_prefix)
    assert deep.ok, deep.problems
    kinds = {check.path: check.kind for check in deep.files}
    assert kinds[f"{source_db}.sql"] == "dump"
    assert kinds["images-uploads.tar.gz"] == "archive"
    assert kinds["configs/app.env"] == "file"
    [database] = deep.databases
    assert database.ok and database.dump == f"{source_db}.sql"
    assert database.tables == SOURCE_ROWS
    document = deep.to_document(datetime(2026, 1, 2, tzinfo=UTC))
    assert document["status"] == "ok" and document["level"] == "deep" and document["problems"] == []
    assert document["databases"] == [
        {
            "dump": f"{source_db}.sql",
            "ok": True,
            "tables": 4,
            "rows": 482,
            "seconds": database.to_document()["seconds"],
        }
    ]


def test_deep_verify_opens_and_reads_each_file_once(script_backup: Path, scratch_prefix: str) -> None:
    verdict, opener = _verify(
        script_backup, level="deep", restore_test_url=SERVER_URL, scratch_prefix=scratch_prefix
    )
    assert verdict.ok, verdict.problems
    sizes = dict(listing(script_backup))
    assert sorted(opener.opened) == sorted(sizes)
    assert opener.bytes_read == {path: size for path, size in sizes.items() if size}
    assert verdict.bytes_read == sum(sizes.values())


def test_tampered_file_is_a_digest_mismatch_by_name(script_backup: Path, tmp_path: Path) -> None:
    folder = copy_backup(script_backup, tmp_path)
    (folder / "configs" / "app.env").write_text("APP_ENV=tampered\n")
    verdict, _ = _verify(folder)
    assert not verdict.ok
    assert len(verdict.problems) == 1
    assert verdict.problems[0].startswith("configs/app.env: digest mismatch")


def test_file_not_in_manifest_is_a_missing_manifest_entry(script_backup: Path, tmp_path: Path) -> None:
    folder = copy_backup(script_backup, tmp_path)
    (folder / "stray.txt").write_text("not listed\n")
    verdict, _ = _verify(folder)
    assert verdict.problems == [
        "stray.txt: missing manifest entry (the file is not listed in MANIFEST.sha256)"
    ]


def test_manifest_entry_without_its_file_is_reported(script_backup: Path, tmp_path: Path) -> None:
    folder = copy_backup(script_backup, tmp_path)
    (folder / "system-info" / "date.txt").unlink()
    verdict, _ = _verify(folder)
    assert verdict.problems == ["system-info/date.txt: listed in MANIFEST.sha256 but missing from the folder"]


def test_unsafe_manifest_entries_are_reported_and_never_opened(script_backup: Path, tmp_path: Path) -> None:
    folder = copy_backup(script_backup, tmp_path)
    digest = "0" * 64
    with open(folder / "MANIFEST.sha256", "a") as manifest:
        manifest.write(f"{digest}  ../../etc/passwd\n{digest}  /etc/shadow\n{digest}  a/./b\n")
    verdict, opener = _verify(folder)
    assert len(verdict.problems) == 3
    assert all("unsafe entry" in problem for problem in verdict.problems)
    assert "'../../etc/passwd'" in verdict.problems[0] and "'/etc/shadow'" in verdict.problems[1]
    assert not any("etc" in path for path in opener.opened)


def test_malformed_manifest_is_a_problem_and_files_are_still_read(
    script_backup: Path, tmp_path: Path
) -> None:
    folder = copy_backup(script_backup, tmp_path)
    with open(folder / "MANIFEST.sha256", "a") as manifest:
        manifest.write("garbage line\n")
    verdict, _ = _verify(folder, level="deep")
    assert verdict.problems[0].startswith("MANIFEST.sha256 line ")
    assert "not a sha256sum line" in verdict.problems[0]
    assert all(check.sha256 for check in verdict.files)


def test_backup_without_manifest_verifies_against_the_one_the_service_built(
    script_backup: Path, tmp_path: Path
) -> None:
    folder = copy_backup(script_backup, tmp_path)
    (folder / "MANIFEST.sha256").unlink()
    without, _ = _verify(folder)
    assert without.problems == ["no manifest: the folder has no MANIFEST.sha256 and none was built for it"]
    built = build_manifest(listing(folder), Opener(folder))
    with_built, _ = _verify(folder, manifest_text=built)
    assert with_built.ok and with_built.manifest == "service"
    (folder / "configs" / "app.env").write_text("changed\n")
    changed, _ = _verify(folder, manifest_text=built)
    assert [p.split(":")[0] for p in changed.problems] == ["configs/app.env"]


def test_truncated_dump_passes_quick_but_deep_names_it(
    script_backup: Path, tmp_path: Path, scratch_prefix: str
) -> None:
    folder = copy_backup(script_backup, tmp_path)
    dump = folder / _dump_name(folder)
    data = dump.read_bytes()
    dump.write_bytes(data[: len(data) * 2 // 3])
    rewrite_manifest(folder)
    quick, _ = _verify(folder)
    assert quick.ok
    deep, _ = _verify(folder, level="deep", restore_test_url=SERVER_URL, scratch_prefix=scratch_prefix)
    assert f"{dump.name}: incomplete: pg_dump's completion trailer is missing (truncated?)" in deep.problems
    [database] = deep.databases
    assert not database.ok and "incomplete" in (database.error or "")
    assert any(p.startswith(f"{dump.name}: restore-test failed") for p in deep.problems)


def test_corrupt_gzip_archive_passes_quick_but_deep_names_it(script_backup: Path, tmp_path: Path) -> None:
    folder = copy_backup(script_backup, tmp_path)
    archive = folder / "beauty-platform.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    rewrite_manifest(folder)
    assert _verify(folder)[0].ok
    deep, _ = _verify(folder, level="deep")
    assert len(deep.problems) == 1
    assert deep.problems[0].startswith("beauty-platform.tar.gz: corrupt archive:")


def test_truncated_gzip_archive_is_named(script_backup: Path, tmp_path: Path) -> None:
    folder = copy_backup(script_backup, tmp_path)
    archive = folder / "images-uploads.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-20])
    rewrite_manifest(folder)
    deep, _ = _verify(folder, level="deep")
    assert deep.problems == ["images-uploads.tar.gz: corrupt archive: truncated gzip stream"]


def test_gzip_of_a_truncated_tar_is_named(script_backup: Path, tmp_path: Path) -> None:
    """The case the script itself could have hashed: a valid gzip around a broken tar."""
    folder = copy_backup(script_backup, tmp_path)
    archive = folder / "nginx-configs.tar.gz"
    tar_bytes = gzip.decompress(archive.read_bytes())
    archive.write_bytes(gzip.compress(tar_bytes[:700]))
    rewrite_manifest(folder)
    deep, _ = _verify(folder, level="deep")
    assert len(deep.problems) == 1
    assert deep.problems[0].startswith("nginx-configs.tar.gz: corrupt archive: archive truncated")


def test_zstd_archives_are_read_to_the_end(script_backup: Path, tmp_path: Path) -> None:
    folder = copy_backup(script_backup, tmp_path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        info = tarfile.TarInfo("data.bin")
        payload = b"z" * 300_000
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    good = zstd.compress(buf.getvalue(), options={zstd.CompressionParameter.checksum_flag: 1})
    (folder / "extra.tar.zst").write_bytes(good)
    (folder / "cut.tar.zst").write_bytes(good[: len(good) // 2])
    rewrite_manifest(folder)
    deep, _ = _verify(folder, level="deep")
    assert deep.problems == ["cut.tar.zst: corrupt archive: truncated zstd stream"]
    extra = next(check for check in deep.files if check.path == "extra.tar.zst")
    assert extra.details["members"] == 1 and extra.details["member_bytes"] == 300_000


def test_dump_that_fails_to_restore_is_named_with_its_sql_error(
    script_backup: Path, tmp_path: Path, scratch_prefix: str
) -> None:
    folder = copy_backup(script_backup, tmp_path)
    dump = folder / _dump_name(folder)
    sql = dump.read_bytes()
    dump.write_bytes(sql.replace(b"CREATE TABLE public.clients", b"CREATE TABLEAU public.clients"))
    rewrite_manifest(folder)
    deep, _ = _verify(folder, level="deep", restore_test_url=SERVER_URL, scratch_prefix=scratch_prefix)
    assert deep.problems == [f'{dump.name}: restore-test failed: ERROR:  syntax error at or near "TABLEAU"']
    # Deep without a restore-test cannot see it: the file is a complete pg_dump file.
    assert _verify(folder, level="deep")[0].ok


def test_demo_dump_is_a_problem_unless_allowed(tmp_path: Path, scratch_prefix: str) -> None:
    unreachable = str(free_port())
    folder = run_reference_script(tmp_path, ["beauty_audit"], pg_port=unreachable)
    deep, _ = _verify(folder, level="deep", restore_test_url=SERVER_URL, scratch_prefix=scratch_prefix)
    assert len(deep.problems) == 1
    assert deep.problems[0].startswith("beauty_audit.sql: labelled demo dump, not real data (DEMO DUMP:")
    # It is SQL that restores: the restore-test itself passes.
    assert deep.databases[0].ok
    assert deep.databases[0].tables == {"public.demo_appointments": 2, "public.demo_clients": 2}
    allowed, _ = _verify(folder, level="deep", demo_dumps_ok=True)
    assert allowed.ok


def test_custom_format_dump_is_listed_read_and_restore_tested(
    script_backup: Path, tmp_path: Path, source_db: str, scratch_prefix: str
) -> None:
    folder = copy_backup(script_backup, tmp_path)
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
            str(folder / "copy.dump"),
            source_db,
        ],
        check=True,
    )
    data = (folder / "copy.dump").read_bytes()
    (folder / "cut.dump").write_bytes(data[: len(data) - 300])
    rewrite_manifest(folder)
    plain, _ = _verify(folder, level="deep")
    assert len(plain.problems) == 1
    assert plain.problems[0].startswith("cut.dump: pg_restore could not read it to the end")
    copy = next(check for check in plain.files if check.path == "copy.dump")
    assert copy.details["format"] == "custom" and copy.details["database"] == source_db
    assert copy.details["table_data_entries"] == 4
    tested, _ = _verify(folder, level="deep", restore_test_url=SERVER_URL, scratch_prefix=scratch_prefix)
    results = {result.dump: result for result in tested.databases}
    assert results["copy.dump"].ok and results["copy.dump"].tables == SOURCE_ROWS
    assert not results["cut.dump"].ok


def test_progress_rises_to_100(script_backup: Path) -> None:
    seen: list[int] = []
    _verify(script_backup, level="deep", on_progress=lambda percent, _message: seen.append(percent))
    assert seen == sorted(seen) and seen[-1] == 100


def test_cancel_during_restore_test_raises_and_leaves_no_scratch_database(
    tmp_path: Path, scratch_prefix: str
) -> None:
    name = unique_name("bsvc_verify_big_")
    make_source_database(name, extra_mb=6)
    try:
        folder = run_reference_script(tmp_path, [name])
    finally:
        drop_database(name)
    calls = 0
    at_cancel: list[str] = []

    def stop() -> bool:
        nonlocal calls
        calls += 1
        if calls == 8:  # a few 1 MiB chunks into the dump
            at_cancel.extend(databases_like(scratch_prefix))
        return calls >= 8

    with pytest.raises(Cancelled):
        _verify(
            folder, level="deep", restore_test_url=SERVER_URL, scratch_prefix=scratch_prefix, should_stop=stop
        )
    assert len(at_cancel) == 1, "the cancel should have come in the middle of the restore-test"
    assert databases_like(scratch_prefix) == []


def test_unreachable_restore_server_is_reported_without_its_password(
    script_backup: Path, scratch_prefix: str
) -> None:
    url = f"postgresql://postgres:Sup3r-Secret@127.0.0.1:{free_port()}/postgres"
    deep, _ = _verify(script_backup, level="deep", restore_test_url=url, scratch_prefix=scratch_prefix)
    assert not deep.ok
    text = repr(deep.problems) + repr([r.to_document() for r in deep.databases])
    assert "Sup3r-Secret" not in text
    assert "postgresql://postgres:****@127.0.0.1" in text


def test_gzipped_plain_dump_is_checked_and_restore_tested_through_gzip(
    script_backup: Path, tmp_path: Path, source_db: str, scratch_prefix: str
) -> None:
    folder = copy_backup(script_backup, tmp_path)
    dump = folder / f"{source_db}.sql"
    packed = gzip.compress(dump.read_bytes())
    dump.unlink()
    (folder / "nightly.sql.gz").write_bytes(packed)
    (folder / "cut.sql.gz").write_bytes(packed[: len(packed) // 2])
    rewrite_manifest(folder)
    deep, _ = _verify(folder, level="deep", restore_test_url=SERVER_URL, scratch_prefix=scratch_prefix)
    results = {result.dump: result for result in deep.databases}
    assert results["nightly.sql.gz"].ok and results["nightly.sql.gz"].tables == SOURCE_ROWS
    assert "cut.sql.gz: corrupt dump: truncated gzip stream" in deep.problems
    assert not results["cut.sql.gz"].ok
