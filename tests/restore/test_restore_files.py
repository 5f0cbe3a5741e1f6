"""Extracting a backup's archive into a new staging folder: the script's real archives come back byte for
byte, hostile members are refused with nothing written outside, cancel and failure leave nothing."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest
from backports import zstd

from backups.restore.files import (
    ExtractionError,
    Limits,
    extract_archive,
    folder_name,
    plan_extraction,
    remove_partial_folders,
)
from tests.servers import PROJECT
from tests.verification.backup_fixtures import tree_snapshot

WHEN = datetime(2026, 3, 4, 5, 6, 7)


def _extract(archive: bytes, target: Path, compression: str = "gzip", **kwargs):
    return extract_archive(io.BytesIO(archive), compression, target, folder_name("backup-1", WHEN), **kwargs)


def _add(
    archive: tarfile.TarFile,
    name: str,
    *,
    data: bytes = b"",
    kind: bytes = tarfile.REGTYPE,
    link: str = "",
    size: int | None = None,
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o644
    info.mtime = 1_700_000_000
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    info.size = len(data) if size is None else size
    archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _hostile() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as archive:
        _add(archive, "./", kind=tarfile.DIRTYPE)
        _add(archive, "good.txt", data=b"good\n")
        _add(archive, "dir/sub/file.txt", data=b"nested\n")
        _add(archive, "../../outside.txt", data=b"slip\n")
        _add(archive, "../../etc/x", data=b"slip\n")
        _add(archive, "a/../../../outside2.txt", data=b"slip\n")
        _add(archive, "/tmp/absolute.txt", data=b"abs\n")
        _add(archive, "escape", kind=tarfile.SYMTYPE, link="../../..")
        _add(archive, "inner", kind=tarfile.SYMTYPE, link="dir/sub")
        _add(archive, "hard-out", kind=tarfile.LNKTYPE, link="/etc/passwd")
        _add(archive, "hard-up", kind=tarfile.LNKTYPE, link="../outside.txt")
        _add(archive, "hard-later", kind=tarfile.LNKTYPE, link="later.txt")
        _add(archive, "hard-good", kind=tarfile.LNKTYPE, link="good.txt")
        _add(archive, "null2", kind=tarfile.CHRTYPE)
        _add(archive, "disk", kind=tarfile.BLKTYPE)
        _add(archive, "pipe", kind=tarfile.FIFOTYPE)
        _add(archive, "huge.bin", data=b"h" * 5000)
        _add(archive, "good.txt", data=b"overwrite attempt\n")
        _add(archive, "good.txt/child", data=b"under a file\n")
        _add(archive, "later.txt", data=b"later\n")
    return buf.getvalue()


EXPECTED_REFUSALS = {
    "../../outside.txt": "'..' in path",
    "../../etc/x": "'..' in path",
    "a/../../../outside2.txt": "'..' in path",
    "/tmp/absolute.txt": "absolute path",
    "escape": "symlink (to '../../..') not restored",
    "inner": "symlink (to 'dir/sub') not restored",
    "hard-out": "hard link to '/etc/passwd', not a file restored here",
    "hard-up": "hard link to '../outside.txt', not a file restored here",
    "hard-later": "hard link to 'later.txt', not a file restored here",
    "null2": "device file",
    "disk": "device file",
    "pipe": "fifo",
    "huge.bin": "larger than the limit of 4096 bytes",
    "good.txt": "already exists (duplicate member)",
    "good.txt/child": "a parent of it is a file",
}


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """A parent tree around the restore directory, so "outside" has something to be compared with."""
    (tmp_path / "restore").mkdir()
    (tmp_path / "outside.txt").write_text("original\n")
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def test_script_archive_comes_back_byte_for_byte(script_backup: Path, world: Path) -> None:
    sources = script_backup.parent.parent / "src"
    archive = (script_backup / "beauty-platform.tar.gz").read_bytes()
    report = _extract(archive, world / "restore", size_bytes=len(archive))
    assert report.ok, report.error
    assert report.folder == "backup-1-20260304_050607"
    restored = world / "restore" / report.folder
    assert tree_snapshot(restored / "app") == tree_snapshot(sources / "app")
    assert report.files == 2 and report.refused == []
    # GNU tar keeps whole seconds.
    restored_mtime = (restored / "app" / "src" / "server.js").stat().st_mtime
    assert restored_mtime == int((sources / "app" / "src" / "server.js").stat().st_mtime)


def test_hostile_members_are_refused_and_nothing_is_written_outside(world: Path) -> None:
    before = tree_snapshot(world)
    report = _extract(_hostile(), world / "restore", limits=Limits(max_member_bytes=4096))
    assert report.ok, report.error
    refused = {refusal.path: refusal.reason for refusal in report.refused}
    assert refused == EXPECTED_REFUSALS
    after = tree_snapshot(world)
    new = {path: entry for path, entry in after.items() if path not in before}
    assert all(path.startswith("restore/backup-1-20260304_050607") for path in new)
    assert {path: entry for path, entry in after.items() if path in before} == before
    folder = world / "restore" / "backup-1-20260304_050607"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == [
        "dir",
        "dir/sub",
        "dir/sub/file.txt",
        "good.txt",
        "hard-good",
        "later.txt",
    ]
    assert (folder / "good.txt").read_text() == "good\n"
    assert (folder / "hard-good").stat().st_ino == (folder / "good.txt").stat().st_ino
    assert not any(p.is_symlink() for p in folder.rglob("*"))
    assert not Path("/tmp/absolute.txt").exists()
    assert (report.files, report.dirs, report.hardlinks, report.bytes) == (3, 2, 1, 18)


def test_dry_run_reports_the_same_and_changes_nothing(world: Path) -> None:
    before = tree_snapshot(world)
    plan = plan_extraction(io.BytesIO(_hostile()), "gzip", limits=Limits(max_member_bytes=4096))
    assert tree_snapshot(world) == before
    done = _extract(_hostile(), world / "restore", limits=Limits(max_member_bytes=4096))
    assert plan.dry_run and plan.ok
    keys = ("files", "dirs", "hardlinks", "bytes", "refused", "skipped")
    assert {key: getattr(plan, key) for key in keys} == {key: getattr(done, key) for key in keys}


def test_total_size_limit_refuses_members_past_it(world: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        for index in range(4):
            _add(archive, f"f{index}", data=b"x" * 100)
    report = _extract(buf.getvalue(), world / "restore", "none", limits=Limits(max_total_bytes=250))
    assert report.files == 2
    assert [r.path for r in report.refused] == ["f2", "f3"]
    assert all("total limit of 250" in r.reason for r in report.refused)


def test_prefixes_select_members(script_backup: Path, world: Path) -> None:
    archive = (script_backup / "beauty-platform.tar.gz").read_bytes()
    plan = plan_extraction(io.BytesIO(archive), "gzip", prefixes=["./app/src/"])
    assert (plan.files, plan.skipped) == (1, 2)  # "app" and "app/package.json" are outside the prefix
    report = _extract(archive, world / "restore", prefixes=["app/src"])
    folder = world / "restore" / report.folder
    restored = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    assert restored == ["app", "app/src", "app/src/server.js"]
    with pytest.raises(ValueError):
        plan_extraction(io.BytesIO(archive), "gzip", prefixes=["../etc"])


def test_existing_names_and_planted_symlinks_in_the_target_are_never_written_through(world: Path) -> None:
    target = world / "restore"
    (target / "backup-1-20260304_050607").symlink_to(world / "elsewhere")
    (target / "backup-1-20260304_050607.partial").symlink_to(world / "elsewhere")
    report = _extract(_hostile(), target)
    assert report.ok and report.folder == "backup-1-20260304_050607-2"
    assert list((world / "elsewhere").iterdir()) == []
    assert (target / "backup-1-20260304_050607").is_symlink()


def test_symlink_planted_during_extraction_cannot_redirect_a_write(world: Path) -> None:
    target = world / "restore"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        _add(archive, "first.bin", data=os.urandom(3 << 20))
        _add(archive, "dir2/file.txt", data=b"must not land elsewhere\n")
    calls = 0

    def plant() -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:  # after the first 1 MiB: an attacker with write access to the restore directory
            [partial] = [p for p in target.iterdir() if p.name.endswith(".partial")]
            (partial / "dir2").symlink_to(world / "elsewhere")
        return False

    report = _extract(buf.getvalue(), target, "none", should_stop=plant)
    assert not report.ok and report.error and report.error.startswith("write failed")
    assert list((world / "elsewhere").iterdir()) == []
    assert list(target.iterdir()) == []


def _big_archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as archive:
        for index in range(8):
            _add(archive, f"part{index}.bin", data=os.urandom(1 << 20))
    return buf.getvalue()


def test_cancel_half_way_removes_the_folder(world: Path) -> None:
    target = world / "restore"
    calls = 0
    written_at_cancel: list[int] = []

    def stop() -> bool:
        nonlocal calls
        calls += 1
        if calls == 5:
            written_at_cancel.append(sum(1 for p in target.rglob("*") if p.is_file()))
        return calls >= 5

    report = _extract(_big_archive(), target, should_stop=stop)
    assert report.cancelled and not report.ok and report.folder is None
    assert written_at_cancel and written_at_cancel[0] >= 2
    assert list(target.iterdir()) == []


def test_corrupt_archive_removes_the_folder(world: Path) -> None:
    data = _big_archive()
    report = _extract(data[: len(data) // 2], world / "restore")
    assert not report.ok and report.error == "corrupt archive: truncated gzip stream"
    assert list((world / "restore").iterdir()) == []


def test_zstd_archive_extracts(world: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        _add(archive, "z/data.txt", data=b"zstd member\n")
    report = _extract(zstd.compress(buf.getvalue()), world / "restore", "zstd")
    assert report.ok
    assert (world / "restore" / report.folder / "z" / "data.txt").read_text() == "zstd member\n"


def test_unusable_target_is_an_error(world: Path) -> None:
    with pytest.raises(ExtractionError):
        _extract(_hostile(), world / "missing")
    with pytest.raises(ValueError):
        folder_name("../x", WHEN)


CHILD = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime
    from backups.restore.files import extract_archive

    class Slow:
        def __init__(self, handle):
            self.handle = handle
        def read(self, size=-1):
            time.sleep(0.2)
            return self.handle.read(size)

    with open(sys.argv[1], "rb") as handle:
        extract_archive(Slow(handle), "gzip", sys.argv[2], "backup-9-20260101_000000")
    """
)


def test_killed_extraction_leaves_a_partial_folder_that_cleanup_finds(world: Path) -> None:
    (world / "big.tar.gz").write_bytes(_big_archive())
    target = world / "restore"
    (target / "kept-finished-restore").mkdir()
    args = [sys.executable, "-c", CHILD, str(world / "big.tar.gz"), str(target)]
    child = subprocess.Popen(args, cwd=PROJECT)
    partial = target / "backup-9-20260101_000000.partial"
    deadline = time.monotonic() + 30
    while not (partial.exists() and any(partial.iterdir())):
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    assert partial.is_dir()
    assert remove_partial_folders(target) == ["backup-9-20260101_000000.partial"]
    assert sorted(p.name for p in target.iterdir()) == ["kept-finished-restore"]
