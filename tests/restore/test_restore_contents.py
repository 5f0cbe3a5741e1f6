"""What a backup holds: dumps and archives from the listing, an archive's members paged by streaming."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from backups.restore.contents import archive_members, backup_contents
from tests.verification.backup_fixtures import PG_HOST, PG_PORT, Opener, listing, run_reference_script


def test_script_backup_contents_lists_its_dump_and_archives(script_backup: Path, source_db: str) -> None:
    contents = backup_contents(listing(script_backup), Opener(script_backup))
    document = contents.to_document()
    assert document["dumps"] == [
        {
            "path": f"{source_db}.sql",
            "size_bytes": (script_backup / f"{source_db}.sql").stat().st_size,
            "format": "plain",
            "database": source_db,
            "demo": False,
        }
    ]
    assert [a["path"] for a in document["archives"]] == [
        "beauty-platform.tar.gz",
        "images-uploads.tar.gz",
        "nginx-configs.tar.gz",
        "ssl-certs.tar.gz",
    ]


def test_sniffing_finds_custom_format_and_its_database_and_demo_dumps(tmp_path: Path, source_db: str) -> None:
    folder = run_reference_script(tmp_path, ["beauty_audit"], pg_port="1")
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
            str(folder / "nightly.sql"),
            source_db,
        ],
        check=True,
    )
    (folder / "configs" / "schema.sql").write_text("-- not a dump of the backup\n")
    by_name = backup_contents(listing(folder), Opener(folder)).to_document()["dumps"]
    assert [(d["path"], d["format"], d["database"], d["demo"]) for d in by_name] == [
        ("beauty_audit.sql", "plain", "beauty_audit", True),
        ("nightly.sql", "custom", source_db, False),
    ]
    # Without an opener, the name decides.
    assert [d.format for d in backup_contents(listing(folder)).dumps] == ["plain", "plain"]


@pytest.fixture
def many_members() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as archive:
        for index in range(25):
            data = os.urandom(200_000)
            info = tarfile.TarInfo(f"uploads/{index:02d}.bin")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("uploads/latest")
        link.type, link.linkname = tarfile.SYMTYPE, "24.bin"
        archive.addfile(link)
    return buf.getvalue()


def test_archive_members_are_paged(many_members: bytes) -> None:
    first = archive_members(io.BytesIO(many_members), "gzip", 0, 10)
    assert [m.path for m in first.members] == [f"uploads/{i:02d}.bin" for i in range(10)]
    assert first.has_more and first.total is None and first.error is None
    assert first.members[0].to_document() == {"path": "uploads/00.bin", "size_bytes": 200_000, "type": "file"}
    last = archive_members(io.BytesIO(many_members), "gzip", 20, 10, with_total=True)
    assert [m.path for m in last.members][-1] == "uploads/latest"
    assert last.members[-1].to_document() == {
        "path": "uploads/latest",
        "size_bytes": 0,
        "type": "symlink",
        "link_target": "24.bin",
    }
    assert not last.has_more and last.total == 26
    beyond = archive_members(io.BytesIO(many_members), "gzip", 40, 10, with_total=True)
    assert beyond.members == [] and beyond.total == 26 and not beyond.has_more


def test_first_page_stops_reading_early(many_members: bytes) -> None:
    source = io.BytesIO(many_members)
    archive_members(source, "gzip", 0, 3)
    assert source.tell() < len(many_members) // 2


def test_damaged_archive_gives_the_members_before_the_damage_and_the_error(many_members: bytes) -> None:
    page = archive_members(io.BytesIO(many_members[: len(many_members) // 2]), "gzip", 0, 100)
    assert 5 <= len(page.members) < 25
    assert page.error == "corrupt archive: truncated gzip stream"


def test_page_bounds_are_checked(many_members: bytes) -> None:
    with pytest.raises(ValueError):
        archive_members(io.BytesIO(many_members), "gzip", -1, 10)
    with pytest.raises(ValueError):
        archive_members(io.BytesIO(many_members), "gzip", 0, 0)
