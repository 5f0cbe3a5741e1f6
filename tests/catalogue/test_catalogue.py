"""Tests for backups.catalogue against a real, deliberately hostile backup root (no Django)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backups.catalogue import removal, scan, tarstream
from backups.catalogue.latest import read_latest, set_latest
from backups.catalogue.paths import (
    ID_PATTERN,
    LATEST_LINK,
    SERVICE_DIR,
    BackupNotFound,
    CatalogueError,
    backup_dir,
    check_backup,
    disk_usage,
    is_valid_id,
    member_opener,
    open_backup,
    open_member,
)
from backups.catalogue.removal import delete_backup, purge_leftovers
from backups.catalogue.scan import FolderStat, list_folders, scan_backup
from backups.catalogue.sidecar import read_metadata, write_metadata
from backups.catalogue.tarstream import TarChanged, iter_tar_chunks, plan_tar

OLD = "backup-20240101_120000"
NEW = "backup-20240102_120000"
EVIL_LINK = "backup-20990101_000000"
FILE_LIKE_BACKUP = "backup-20240103_000000"
SECRET = b"top secret outside the root\n"


@dataclass
class Env:
    root: Path
    outside: Path
    secret: Path


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def env(tmp_path: Path) -> Env:
    outside = tmp_path / "outside"
    secret = _write(outside / "secret.txt", SECRET)
    root = tmp_path / "root"
    root.mkdir()

    _write(root / OLD / "configs" / "app.env", b"A=1\n")
    _write(root / OLD / "system-info" / "uname.txt", b"Linux\n" * 10)
    _write(root / OLD / "system-info" / "deep" / "nested" / "x.bin", os.urandom(3000))
    _write(root / OLD / "top.txt", b"")

    _write(root / NEW / "configs" / "app.env", b"B=2\n" * 100)
    _write(root / NEW / "system-info" / "df.txt", b"/dev/sda 100%\n")
    # Hostile content inside a real backup: links out of the root, special files.
    os.symlink(secret, root / NEW / "configs" / "secret-link")
    os.symlink("../../../outside/secret.txt", root / NEW / "system-info" / "rel-secret-link")
    os.symlink(outside, root / NEW / "outside-dir-link")
    os.mkfifo(root / NEW / "system-info" / "fifo")
    os.mknod(root / NEW / "sock", stat.S_IFSOCK | 0o600)

    os.symlink(NEW, root / LATEST_LINK)
    os.symlink("../outside", root / EVIL_LINK)
    _write(root / FILE_LIKE_BACKUP, b"not a folder")
    os.mkfifo(root / "backup-20240104_000000")
    os.mknod(root / "backup-20240105_000000", stat.S_IFSOCK | 0o600)
    (root / SERVICE_DIR).mkdir()
    (root / ".hidden-backup").mkdir()
    return Env(root=root, outside=outside, secret=secret)


def _assert_outside_intact(env: Env) -> None:
    assert env.secret.read_bytes() == SECRET
    assert sorted(p.name for p in env.outside.iterdir()) == ["secret.txt"]


def _real_files(folder: Path) -> dict[str, bytes]:
    """Regular files below folder, found with lstat only (the oracle for scan/tar)."""
    found: dict[str, bytes] = {}
    for dirpath, _dirnames, filenames in os.walk(folder):  # os.walk does not descend into dir symlinks
        for name in filenames:
            path = Path(dirpath) / name
            if stat.S_ISREG(os.lstat(path).st_mode):
                found[path.relative_to(folder).as_posix()] = path.read_bytes()
    return found


# ------------------------------------------------------------------------------------------ ids

BAD_IDS = [
    "",
    ".",
    "..",
    "...",
    "../outside",
    "..backup",
    "backup..1",
    "/etc",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "a%2Fb",
    "%2e%2e",
    "x\x00y",
    "\x00",
    "latest",
    LATEST_LINK,
    SERVICE_DIR,
    ".deleting-backup-1-abc",
    ".hidden",
    "-rf",
    "_x",
    "backup 1",
    "backup-1\n",
    "\nbackup-1",
    "backup-1/",
    "b" * 201,
    "b" * 5000,
    "bäckup",
    "backup-１",  # fullwidth digit
    "backup\u202e1",
    "backup-1\udcff",
]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_invalid_ids_rejected(bad: str) -> None:
    assert not is_valid_id(bad)
    assert ID_PATTERN.match(bad) is None


@pytest.mark.parametrize(
    "good", ["backup-20240101_120000", "a", "A9", "b" * 200, "x.y+z@host-1_2", "latest2", "Latest", "1"]
)
def test_valid_ids(good: str) -> None:
    assert is_valid_id(good)


def test_non_string_ids_are_invalid() -> None:
    assert not is_valid_id(b"backup-1")  # type: ignore[arg-type]
    assert not is_valid_id(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", BAD_IDS + [EVIL_LINK, FILE_LIKE_BACKUP, "backup-20240104_000000", "nope"])
def test_check_and_open_backup_refuse(env: Env, bad: str) -> None:
    for check in (check_backup, open_backup):
        with pytest.raises(BackupNotFound) as info:
            check(env.root, bad)
        assert str(info.value) == "backup not found"
        assert str(env.root) not in str(info.value)


def test_open_backup_gives_the_real_folder(env: Env) -> None:
    assert check_backup(env.root, OLD).st_ino == os.lstat(env.root / OLD).st_ino
    with backup_dir(env.root, OLD) as fd:
        assert os.fstat(fd).st_ino == os.lstat(env.root / OLD).st_ino
        assert sorted(os.listdir(fd)) == ["configs", "system-info", "top.txt"]


def test_socket_is_not_a_backup(env: Env) -> None:
    with pytest.raises(BackupNotFound):
        check_backup(env.root, "backup-20240105_000000")


def test_root_that_is_a_symlink_is_accepted(env: Env, tmp_path: Path) -> None:
    link_root = tmp_path / "root-link"
    os.symlink(env.root, link_root)
    check_backup(link_root, OLD)
    with open_member(link_root, OLD, "configs/app.env") as member:
        assert member.file.read() == b"A=1\n"
    assert [f.name for f in list_folders(link_root)] == [OLD, NEW]


# -------------------------------------------------------------------------------------- listing


def test_list_folders_only_real_backups(env: Env) -> None:
    folders = list_folders(env.root)
    assert [f.name for f in folders] == [OLD, NEW]
    assert all(isinstance(f, FolderStat) for f in folders)
    assert folders[0].mtime_ns == os.lstat(env.root / OLD).st_mtime_ns


def test_list_folders_missing_root(tmp_path: Path) -> None:
    assert list_folders(tmp_path / "nope") == []
    _write(tmp_path / "file", b"x")
    assert list_folders(tmp_path / "file") == []


def test_list_folders_skips_our_temporary_names(env: Env) -> None:
    (env.root / ".deleting-backup-x-123").mkdir()
    os.symlink(OLD, env.root / ".latest.tmp-abc")
    assert [f.name for f in list_folders(env.root)] == [OLD, NEW]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_list_folders_unreadable_root_is_an_error(env: Env) -> None:
    env.root.chmod(0)
    try:
        with pytest.raises(CatalogueError):
            list_folders(env.root)
    finally:
        env.root.chmod(0o755)


def test_list_folders_is_cheap(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real_scandir = os.scandir

    def counting_scandir(path: object = ".") -> object:
        calls.append(path)
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(scan.os, "scandir", counting_scandir)
    list_folders(env.root)
    assert len(calls) == 1 + 2  # the root, then one per backup folder (no recursion)


def _age(path: Path) -> None:
    """Give a directory an old mtime so the next change is visible even with coarse timestamps."""
    os.utime(path, ns=(1_000_000_000, 1_000_000_000), follow_symlinks=False)


def _signatures(root: Path) -> dict[str, str]:
    return {f.name: f.signature for f in list_folders(root)}


def test_signature_stable_when_nothing_changes(env: Env) -> None:
    first = _signatures(env.root)
    (env.root / OLD / "configs" / "app.env").read_bytes()  # reading changes nothing
    assert _signatures(env.root) == first
    assert all(len(sig) <= 80 for sig in first.values())


def test_signature_notices_file_added_in_subfolder(env: Env) -> None:
    _age(env.root / OLD / "configs")
    before = _signatures(env.root)
    _write(env.root / OLD / "configs" / "new.env", b"C=3\n")
    after = _signatures(env.root)
    assert after[OLD] != before[OLD]
    assert after[NEW] == before[NEW]


def test_signature_notices_top_level_change(env: Env) -> None:
    _age(env.root / OLD)
    before = _signatures(env.root)
    _write(env.root / OLD / "another.txt", b"x")
    assert _signatures(env.root)[OLD] != before[OLD]


def test_signature_notices_folder_replaced(env: Env) -> None:
    before = _signatures(env.root)
    os.rename(env.root / OLD, env.root / "old-gone")
    (env.root / OLD).mkdir()
    os.utime(env.root / OLD, ns=(os.lstat(env.root / "old-gone").st_mtime_ns,) * 2)
    assert _signatures(env.root)[OLD] != before[OLD]  # the inode differs


# ----------------------------------------------------------------------------------------- scan


def test_scan_lists_regular_files_only(env: Env) -> None:
    scanned = scan_backup(env.root, NEW)
    expected = _real_files(env.root / NEW)
    assert [f.path for f in scanned.files] == sorted(expected)
    assert [f.path for f in scanned.files] == ["configs/app.env", "system-info/df.txt"]
    assert scanned.size_bytes == sum(len(v) for v in expected.values())
    assert {f.path: f.size_bytes for f in scanned.files} == {k: len(v) for k, v in expected.items()}


def test_scan_nested_sizes_and_fields(env: Env) -> None:
    scanned = scan_backup(env.root, OLD)
    expected = _real_files(env.root / OLD)
    assert [f.path for f in scanned.files] == sorted(expected)
    assert "system-info/deep/nested/x.bin" in expected
    assert scanned.size_bytes == sum(len(v) for v in expected.values()) == 4 + 60 + 3000
    assert scanned.name == OLD
    assert scanned.signature == _signatures(env.root)[OLD]
    for entry in scanned.files:
        assert entry.mtime == os.lstat(env.root / OLD / entry.path).st_mtime
        assert scanned.newest_mtime >= entry.mtime
    assert scanned.newest_mtime >= os.lstat(env.root / OLD).st_mtime


def test_scan_newest_mtime_tracks_growth(env: Env) -> None:
    future = time.time() + 3600
    _write(env.root / OLD / "configs" / "late.env", b"x")
    os.utime(env.root / OLD / "configs" / "late.env", (future, future))
    assert scan_backup(env.root, OLD).newest_mtime == pytest.approx(future)


@pytest.mark.parametrize("bad", BAD_IDS + [EVIL_LINK, FILE_LIKE_BACKUP])
def test_scan_refuses_bad_ids(env: Env, bad: str) -> None:
    with pytest.raises(BackupNotFound):
        scan_backup(env.root, bad)


def test_scan_non_utf8_name(env: Env) -> None:
    raw = os.fsencode(env.root / OLD) + b"/caf\xe9.txt"
    with open(raw, "wb") as fh:
        fh.write(b"abc")
    scanned = scan_backup(env.root, OLD)
    names = [f.path for f in scanned.files]
    assert os.fsdecode(b"caf\xe9.txt") in names  # surrogate-escaped str


@pytest.fixture
def local_tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # POSIX TZ: "XYZ-3" means UTC+3 (no tzdata needed).
    monkeypatch.setenv("TZ", "XYZ-3")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_created_at_from_name_in_local_time(env: Env, local_tz: None) -> None:
    created = scan_backup(env.root, OLD).created_at
    assert created == datetime(2024, 1, 1, 9, 0, 0, tzinfo=UTC)
    assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0


@pytest.mark.parametrize("name", ["manual-export", "backup-20241340_000000", "backup-20240101_120000x"])
def test_created_at_falls_back_to_mtime(env: Env, local_tz: None, name: str) -> None:
    folder = env.root / name
    folder.mkdir()
    os.utime(folder, (1_700_000_000.5, 1_700_000_000.5))
    created = scan_backup(env.root, name).created_at
    assert created == datetime.fromtimestamp(1_700_000_000.5, tz=UTC)
    assert created.tzinfo is not None


# --------------------------------------------------------------------------------------- latest


def _relink(root: Path, target: str | Path) -> None:
    (root / LATEST_LINK).unlink(missing_ok=True)
    os.symlink(target, root / LATEST_LINK)


def test_read_latest_relative(env: Env) -> None:
    assert read_latest(env.root) == NEW


@pytest.mark.parametrize("target", [OLD, f"./{OLD}", f"{OLD}/", f"./{OLD}/."])
def test_read_latest_relative_variants(env: Env, target: str) -> None:
    _relink(env.root, target)
    assert read_latest(env.root) == OLD


def test_read_latest_absolute(env: Env, tmp_path: Path) -> None:
    _relink(env.root, env.root / OLD)
    assert read_latest(env.root) == OLD
    # Root configured through a symlink; the link holds the real absolute path.
    link_root = tmp_path / "root-link"
    os.symlink(env.root, link_root)
    assert read_latest(link_root) == OLD


@pytest.mark.parametrize(
    "target",
    [
        "backup-20991231_000000",  # dangling
        EVIL_LINK,  # a symlink pointing outside
        "../outside",
        "../outside/secret.txt",
        f"../root/{OLD}",
        FILE_LIKE_BACKUP,  # a file
        "backup-20240104_000000",  # a fifo
        SERVICE_DIR,
        ".",
        "/etc",
        f"{OLD}/configs",
        LATEST_LINK,  # self loop
    ],
)
def test_read_latest_refuses(env: Env, target: str) -> None:
    _relink(env.root, target)
    assert read_latest(env.root) is None


def test_read_latest_refuses_absolute_outside(env: Env) -> None:
    _relink(env.root, env.outside)
    assert read_latest(env.root) is None
    _relink(env.root, env.root / EVIL_LINK)
    assert read_latest(env.root) is None


def test_read_latest_missing_or_not_a_link(env: Env) -> None:
    (env.root / LATEST_LINK).unlink()
    assert read_latest(env.root) is None
    (env.root / LATEST_LINK).mkdir()
    assert read_latest(env.root) is None
    assert read_latest(env.root / "missing-root") is None


def test_set_latest_repoints_atomically(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    seen_during_replace: list[str] = []
    real_replace = os.replace

    def checking_replace(src: object, dst: object, **kwargs: object) -> None:
        # At the moment of the swap the old link must still be there: no window without `latest`.
        seen_during_replace.append(os.readlink(env.root / LATEST_LINK))
        real_replace(src, dst, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scan.os, "replace", checking_replace)
    set_latest(env.root, OLD)
    assert seen_during_replace == [NEW]
    assert os.readlink(env.root / LATEST_LINK) == OLD  # relative, like the script's
    assert read_latest(env.root) == OLD
    assert not [p for p in os.listdir(env.root) if p.startswith(".latest.tmp-")]


def test_set_latest_creates_and_removes(env: Env) -> None:
    set_latest(env.root, None)
    assert not os.path.lexists(env.root / LATEST_LINK)
    set_latest(env.root, None)  # idempotent
    set_latest(env.root, NEW)
    assert os.readlink(env.root / LATEST_LINK) == NEW


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_set_latest_refuses_non_symlink(env: Env, kind: str) -> None:
    latest = env.root / LATEST_LINK
    latest.unlink()
    if kind == "dir":
        _write(latest / "keep.txt", b"keep")
    else:
        _write(latest, b"keep")
    for target in (OLD, None):
        with pytest.raises(CatalogueError):
            set_latest(env.root, target)
    assert (latest / "keep.txt" if kind == "dir" else latest).read_bytes() == b"keep"
    assert not [p for p in os.listdir(env.root) if p.startswith(".latest.tmp-")]


@pytest.mark.parametrize("bad", ["../outside", EVIL_LINK, FILE_LIKE_BACKUP, "nope", "latest", ""])
def test_set_latest_refuses_bad_target(env: Env, bad: str) -> None:
    with pytest.raises(BackupNotFound):
        set_latest(env.root, bad)
    assert os.readlink(env.root / LATEST_LINK) == NEW


# --------------------------------------------------------------------------------------- delete


def test_delete_removes_folder_and_metadata(env: Env) -> None:
    write_metadata(env.root, NEW, {"type": "manual"})
    write_metadata(env.root, OLD, {"type": "scheduled"})
    delete_backup(env.root, NEW)
    assert not os.path.lexists(env.root / NEW)
    assert [f.name for f in list_folders(env.root)] == [OLD]
    assert read_metadata(env.root, NEW) == {}
    assert read_metadata(env.root, OLD) == {"type": "scheduled"}
    assert not [p for p in os.listdir(env.root) if p.startswith(".deleting-")]
    # The backup contained symlinks to the outside secret and the outside folder: not followed.
    _assert_outside_intact(env)


def test_delete_without_metadata(env: Env) -> None:
    delete_backup(env.root, OLD)
    assert not os.path.lexists(env.root / OLD)
    with pytest.raises(BackupNotFound):
        delete_backup(env.root, OLD)


@pytest.mark.parametrize("bad", BAD_IDS + [EVIL_LINK, FILE_LIKE_BACKUP, "backup-20240104_000000"])
def test_delete_refuses(env: Env, bad: str) -> None:
    with pytest.raises(BackupNotFound):
        delete_backup(env.root, bad)
    assert os.path.islink(env.root / EVIL_LINK)
    assert (env.root / FILE_LIKE_BACKUP).read_bytes() == b"not a folder"
    assert [f.name for f in list_folders(env.root)] == [OLD, NEW]
    _assert_outside_intact(env)


def test_delete_does_not_follow_symlinked_service_dir(env: Env) -> None:
    (env.root / SERVICE_DIR).rmdir()
    os.symlink(env.outside, env.root / SERVICE_DIR)
    _write(env.outside / f"{OLD}.json", b"{}")
    delete_backup(env.root, OLD)
    assert (env.outside / f"{OLD}.json").exists()
    assert env.secret.read_bytes() == SECRET


def test_interrupted_delete_is_purged(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(root_fd: int, name: str) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(removal, "remove_tree_at", crash)
    delete_backup(env.root, NEW)  # logically deleted; physical removal failed
    monkeypatch.undo()
    leftovers = [p for p in os.listdir(env.root) if p.startswith(".deleting-")]
    assert len(leftovers) == 1 and leftovers[0].startswith(f".deleting-{NEW}-")
    assert [f.name for f in list_folders(env.root)] == [OLD]

    os.symlink(OLD, env.root / ".latest.tmp-deadbeef")
    os.symlink(env.outside, env.root / ".deleting-evil-1")  # a link: unlinked, never followed
    (env.root / SERVICE_DIR / f".{OLD}.json.tmp-1234").write_text("{")
    removed = purge_leftovers(env.root)
    assert sorted(removed) == sorted(
        [leftovers[0], ".latest.tmp-deadbeef", ".deleting-evil-1", f"{SERVICE_DIR}/.{OLD}.json.tmp-1234"]
    )
    assert not [p for p in os.listdir(env.root) if p.startswith((".deleting-", ".latest.tmp-"))]
    assert [f.name for f in list_folders(env.root)] == [OLD]
    assert os.readlink(env.root / LATEST_LINK) == NEW
    _assert_outside_intact(env)
    assert purge_leftovers(env.root) == []
    assert purge_leftovers(env.root / "missing") == []


def test_delete_removes_a_tree_deeper_than_path_max_and_follows_no_link(env: Env, monkeypatch) -> None:
    monkeypatch.setattr(removal, "MAX_OPEN_DIRS", 8)  # the deep part is cut off and removed as a piece

    def links(fd: int) -> None:
        os.symlink(env.outside, "link-out", dir_fd=fd)
        os.symlink(env.secret, "secret-link", dir_fd=fd)

    _deep_tree(env.root / OLD, levels=30, width=200, at_bottom=links)
    delete_backup(env.root, OLD)
    assert not os.path.lexists(env.root / OLD)
    assert not [p for p in os.listdir(env.root) if p.startswith(".deleting-")]
    _assert_outside_intact(env)


# ------------------------------------------------------------------------------------- metadata


def test_metadata_roundtrip(env: Env) -> None:
    assert read_metadata(env.root, OLD) == {}
    stamp = datetime(2024, 1, 1, tzinfo=UTC)
    write_metadata(env.root, OLD, {"type": "manual", "description": "é ✓", "run": 7, "at": stamp})
    assert read_metadata(env.root, OLD) == {
        "type": "manual",
        "description": "é ✓",
        "run": 7,
        "at": str(stamp),
    }
    write_metadata(env.root, OLD, {"type": "scheduled"})
    assert read_metadata(env.root, OLD) == {"type": "scheduled"}
    assert sorted(os.listdir(env.root / SERVICE_DIR)) == [f"{OLD}.json"]


def test_metadata_creates_service_dir(tmp_path: Path) -> None:
    write_metadata(tmp_path, "backup-1", {"a": 1})
    assert (tmp_path / SERVICE_DIR / "backup-1.json").is_file()
    assert list_folders(tmp_path) == []


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe", b"", b'"str"'])
def test_metadata_invalid_is_empty(env: Env, content: bytes) -> None:
    _write(env.root / SERVICE_DIR / f"{OLD}.json", content)
    assert read_metadata(env.root, OLD) == {}


def test_metadata_special_files_are_empty(env: Env) -> None:
    os.mkfifo(env.root / SERVICE_DIR / f"{OLD}.json")  # must not block
    assert read_metadata(env.root, OLD) == {}
    os.symlink(env.secret, env.root / SERVICE_DIR / f"{NEW}.json")
    assert read_metadata(env.root, NEW) == {}


@pytest.mark.parametrize("bad", ["../outside", "/etc/passwd", "a/b", "", "latest", "x\x00y"])
def test_metadata_bad_ids(env: Env, bad: str) -> None:
    with pytest.raises(BackupNotFound):
        write_metadata(env.root, bad, {"a": 1})
    with pytest.raises(BackupNotFound):
        read_metadata(env.root, bad)


def test_metadata_refuses_symlinked_service_dir(env: Env) -> None:
    (env.root / SERVICE_DIR).rmdir()
    os.symlink(env.outside, env.root / SERVICE_DIR)
    _write(env.outside / f"{OLD}.json", b'{"leak": true}')
    with pytest.raises(CatalogueError):
        write_metadata(env.root, NEW, {"a": 1})
    assert read_metadata(env.root, OLD) == {}
    assert sorted(p.name for p in env.outside.iterdir()) == [f"{OLD}.json", "secret.txt"]


# ----------------------------------------------------------------------------------------- disk


def test_disk_usage(env: Env) -> None:
    total, free = disk_usage(env.root)
    assert total > 0 and 0 <= free <= total
    assert disk_usage(env.root / "not" / "yet" / "created") == pytest.approx((total, free), rel=0.01)


# ------------------------------------------------------------------------------------------ tar


def _stream(plan: tarstream.TarPlan, chunk_size: int = 1 << 20) -> tuple[bytes, list[bytes]]:
    chunks = list(iter_tar_chunks(plan, chunk_size))
    assert all(chunks)
    assert all(len(c) <= chunk_size for c in chunks)
    return b"".join(chunks), chunks


def _extract(data: bytes) -> tuple[list[tarfile.TarInfo], dict[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        infos = tar.getmembers()
        contents = {}
        for info in infos:
            if info.isfile():
                handle = tar.extractfile(info)
                assert handle is not None
                contents[info.name] = handle.read()
    return infos, contents


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("backup_id", [OLD, NEW])
def test_tar_roundtrip(env: Env, backup_id: str) -> None:
    plan = plan_tar(env.root, backup_id)
    data, _ = _stream(plan)
    assert len(data) == plan.content_length
    infos, contents = _extract(data)
    folder = env.root / backup_id
    expected = _real_files(folder)
    assert {name: _sha(v) for name, v in contents.items()} == {
        f"{backup_id}/{rel}": _sha(v) for rel, v in expected.items()
    }
    assert infos[0].name == backup_id and infos[0].isdir()
    for info in infos:
        assert info.name == backup_id or info.name.startswith(f"{backup_id}/")
        assert info.isdir() or info.isfile()  # no symlinks, fifos, sockets
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
        rel = info.name[len(backup_id) + 1 :]
        st = os.lstat(folder / rel) if rel else os.lstat(folder)
        assert info.mode == stat.S_IMODE(st.st_mode) & 0o777
        assert info.mtime == int(st.st_mtime)
    dirs = {i.name for i in infos if i.isdir()}
    expected_dirs = {backup_id} | {
        f"{backup_id}/{Path(d).relative_to(folder).as_posix()}"
        for d, _, _ in os.walk(folder)
        if Path(d) != folder
    }
    assert dirs == expected_dirs
    assert plan.files == scan_backup(env.root, backup_id).files
    assert SECRET not in data


def test_tar_small_chunks(env: Env) -> None:
    big, _ = _stream(plan_tar(env.root, OLD))
    for size in (1, 7, 512, 4096):
        data, chunks = _stream(plan_tar(env.root, OLD), size)
        assert data == big
        assert all(len(c) == size for c in chunks[:-1])
    with pytest.raises(ValueError):
        next(iter_tar_chunks(plan_tar(env.root, OLD), 0))


def test_tar_long_names(env: Env) -> None:
    folder = env.root / OLD
    deep = folder / ("d" * 120) / ("e" * 120)
    long_name = "f" * 200 + ".txt"
    _write(deep / long_name, b"long")
    _write(folder / "ünïcødé ✓.txt", b"unicode")
    plan = plan_tar(env.root, OLD)
    data, _ = _stream(plan)
    assert len(data) == plan.content_length
    _, contents = _extract(data)
    rel = f"{'d' * 120}/{'e' * 120}/{long_name}"
    assert len(f"{OLD}/{rel}".encode()) > 255
    assert contents[f"{OLD}/{rel}"] == b"long"
    assert contents[f"{OLD}/ünïcødé ✓.txt"] == b"unicode"


def test_tar_non_utf8_name(env: Env) -> None:
    raw = os.fsencode(env.root / OLD) + b"/caf\xe9.txt"
    with open(raw, "wb") as fh:
        fh.write(b"abc")
    plan = plan_tar(env.root, OLD)
    data, _ = _stream(plan)
    assert len(data) == plan.content_length
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
        names = tar.getnames()
    odd = os.fsdecode(b"caf\xe9.txt")
    assert f"{OLD}/{odd}" in names


def test_tar_big_file_spans_chunks(env: Env) -> None:
    payload = os.urandom(3 * 4096 + 123)
    _write(env.root / OLD / "big.bin", payload)
    plan = plan_tar(env.root, OLD)
    data, chunks = _stream(plan, 4096)
    assert len(data) == plan.content_length
    assert _extract(data)[1][f"{OLD}/big.bin"] == payload


def _stream_until_refused(plan: tarstream.TarPlan, chunk_size: int = 256) -> bytes:
    """What the stream sent before it refused to go on (it must refuse)."""
    sent = bytearray()
    with pytest.raises(TarChanged):
        for chunk in iter_tar_chunks(plan, chunk_size):
            sent += chunk
    assert len(sent) < plan.content_length
    return bytes(sent)


def test_tar_file_truncated_after_planning_ends_the_stream_instead_of_padding(env: Env) -> None:
    target = env.root / OLD / "system-info" / "uname.txt"
    plan = plan_tar(env.root, OLD)
    target.write_bytes(b"Lin")
    sent = _stream_until_refused(plan)
    assert b"Lin" + b"\0" * 57 not in sent


def test_tar_file_grew_or_was_rewritten_after_planning_ends_the_stream(env: Env) -> None:
    target = env.root / OLD / "configs" / "app.env"
    plan = plan_tar(env.root, OLD)
    with open(target, "ab") as fh:
        fh.write(b"MORE=1\n" * 1000)
    _stream_until_refused(plan)
    plan = plan_tar(env.root, OLD)
    target.write_bytes(b"B" * target.stat().st_size)  # same size, new content
    os.utime(target, ns=(1, 1))
    _stream_until_refused(plan)


def test_tar_file_changed_while_it_is_read_ends_the_stream(env: Env) -> None:
    target = _write(env.root / OLD / "big.bin", b"x" * 10_000)
    plan = plan_tar(env.root, OLD)
    sent = bytearray()
    with pytest.raises(TarChanged):
        for chunk in iter_tar_chunks(plan, 1024):
            sent += chunk
            if b"x" * 1024 in sent and target.stat().st_size == 10_000:
                with open(target, "r+b") as fh:
                    fh.truncate(5000)
    assert len(sent) < plan.content_length


def test_tar_file_vanished_or_swapped_after_planning(env: Env) -> None:
    folder = env.root / OLD
    plan = plan_tar(env.root, OLD)
    (folder / "configs" / "app.env").unlink()
    os.symlink(env.secret, folder / "configs" / "app.env")  # swapped for a link to the secret
    # A whole directory swapped for a link to the outside: same relative names behind it.
    os.rename(folder / "system-info", env.root.parent / "moved-away")
    _write(env.outside / "uname.txt", b"outside uname!" * 10)
    os.symlink(env.outside, folder / "system-info")
    sent = _stream_until_refused(plan)
    assert SECRET not in sent and b"outside uname!" not in sent


def test_tar_file_replaced_by_other_file_after_planning(env: Env) -> None:
    target = env.root / OLD / "configs" / "app.env"
    plan = plan_tar(env.root, OLD)
    # Same size, different inode (created while the old one still exists, so it cannot be reused).
    _write(target.with_name("tmp"), b"NEW!")
    os.replace(target.with_name("tmp"), target)
    assert b"NEW!" not in _stream_until_refused(plan)


def test_tar_file_replaced_by_fifo_does_not_block(env: Env) -> None:
    target = env.root / OLD / "configs" / "app.env"
    plan = plan_tar(env.root, OLD)
    target.unlink()
    os.mkfifo(target)
    _stream_until_refused(plan)


def test_tar_many_tiny_files_few_chunks(env: Env) -> None:
    folder = env.root / OLD / "many"
    folder.mkdir()
    base = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(10_000):
            fd = os.open(f"f{i:05d}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=base)
            os.write(fd, b"x" * (i % 7))
            os.close(fd)
    finally:
        os.close(base)
    plan = plan_tar(env.root, OLD)
    assert len(plan.files) > 10_000
    count = 0
    total = 0
    for chunk in iter_tar_chunks(plan):
        count += 1
        total += len(chunk)
    assert total == plan.content_length
    assert count < 2_000
    assert count <= plan.content_length // (1 << 20) + 1


@pytest.mark.parametrize("bad", BAD_IDS + [EVIL_LINK, FILE_LIKE_BACKUP])
def test_plan_tar_refuses(env: Env, bad: str) -> None:
    with pytest.raises(BackupNotFound):
        plan_tar(env.root, bad)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_tar_generator_close_releases_files(env: Env) -> None:
    _write(env.root / OLD / "big.bin", os.urandom(10_000))
    before = _open_fds()
    plan = plan_tar(env.root, OLD)
    gen = iter_tar_chunks(plan, 1024)
    for _ in range(5):
        next(gen)
    assert _open_fds() > before
    gen.close()  # client went away: no exception, the open file and the folder closed by the finally
    assert _open_fds() == before
    plan_tar(env.root, OLD).close()  # a plan never streamed holds nothing once closed
    assert _open_fds() == before


# -------------------------------------------------------------------------------- open_member


@pytest.fixture(params=["openat2", "component walk"])
def opener(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    from backups.catalogue import paths

    if request.param == "openat2":
        if not paths.OPENAT2.enabled:
            pytest.skip("no openat2 on this kernel or architecture")
    else:
        monkeypatch.setattr(paths.OPENAT2, "enabled", False)
    return request.param


def test_open_member_ok(env: Env, opener: str) -> None:
    with open_member(env.root, OLD, "configs/app.env") as member:
        assert stat.S_ISREG(member.stat.st_mode) and member.stat.st_size == 4
        assert member.file.read() == b"A=1\n"
    with open_member(env.root, OLD, "system-info/deep/nested/x.bin") as member:
        assert member.stat.st_size == 3000 and len(member.file.read()) == 3000


def test_member_opener_reads_files_of_one_backup(env: Env) -> None:
    with member_opener(env.root, OLD) as open_file:
        with open_file("configs/app.env") as fh:
            assert fh.read() == b"A=1\n"
        with open_file("system-info/deep/nested/x.bin") as fh:
            assert len(fh.read()) == 3000
        with pytest.raises(BackupNotFound):
            open_file("../" + NEW + "/configs/app.env")


@pytest.mark.parametrize(
    "rel",
    [
        "",
        "../x",
        "..",
        ".",
        "./configs/app.env",
        "/etc/passwd",
        "//etc/passwd",
        "configs/../../x",
        "configs/../configs/app.env",
        "configs//app.env",
        "configs/app.env/",
        "configs/./app.env",
        "configs\\app.env",
        "..\\..\\x",
        "configs/app.env\x00",
        "configs%2Fapp.env",
        "configs",  # a directory
        "system-info/deep",
        "missing.txt",
        "configs/app.env/x",
        "x" * 5000,
        "x" * 40_000,
    ],
)
def test_open_member_refuses(env: Env, rel: str, opener: str) -> None:
    with pytest.raises(BackupNotFound) as info:
        open_member(env.root, OLD, rel)
    assert str(info.value) == "file not found"


@pytest.mark.parametrize(
    "rel",
    [
        "configs/secret-link",
        "system-info/rel-secret-link",
        "outside-dir-link/secret.txt",
        "system-info/fifo",
        "sock",
    ],
)
def test_open_member_refuses_links_and_specials(env: Env, rel: str, opener: str) -> None:
    with pytest.raises(BackupNotFound) as info:
        open_member(env.root, NEW, rel)
    assert str(info.value) == "file not found"


def test_open_member_bad_backup(env: Env) -> None:
    for bad in (EVIL_LINK, "../outside", "latest", FILE_LIKE_BACKUP):
        with pytest.raises(BackupNotFound) as info:
            open_member(env.root, bad, "secret.txt")
        assert str(info.value) == "backup not found"


def test_an_open_member_keeps_reading_the_file_found_inside(env: Env, opener: str) -> None:
    with open_member(env.root, OLD, "configs/app.env") as member:
        os.rename(env.root / OLD / "configs", env.root.parent / "configs-away")
        _write(env.outside / "app.env", b"outside")
        os.symlink(env.outside, env.root / OLD / "configs")
        assert member.file.read() == b"A=1\n"
    with pytest.raises(BackupNotFound):
        open_member(env.root, OLD, "configs/app.env")


def test_walk_does_not_follow_directories_swapped_mid_walk(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # Outside tree shaped like the backup, so a followed link would yield plausible names.
    _write(env.outside / "deep" / "nested" / "stolen.txt", SECRET)
    _write(env.outside / "stolen-top.txt", SECRET)
    folder = env.root / OLD
    inodes = {os.lstat(folder).st_ino: "top", os.lstat(folder / "system-info").st_ino: "system-info"}
    real_list_fd = scan._list_fd

    def swapping_list_fd(fd: int) -> list[tuple[str, os.stat_result]]:
        entries = real_list_fd(fd)
        which = inodes.get(os.fstat(fd).st_ino)
        if which == "system-info":
            # After system-info was listed (deep/ seen as a real dir), swap system-info for a link to the
            # outside: deep/ is opened from the descriptor of the real system-info, wherever it moved.
            os.rename(folder / "system-info", env.root.parent / "si-away")
            os.symlink(env.outside, folder / "system-info")
        if which == "top":
            # After the top level was listed, swap configs/ itself for a link: O_NOFOLLOW refuses it.
            os.rename(folder / "configs", env.root.parent / "configs-away")
            os.symlink(env.outside, folder / "configs")
        return entries

    monkeypatch.setattr(scan, "_list_fd", swapping_list_fd)
    scanned = scan_backup(env.root, OLD)
    paths = [f.path for f in scanned.files]
    assert not any("stolen" in p for p in paths)
    assert "configs/app.env" not in paths
    assert "system-info/uname.txt" in paths and "top.txt" in paths
    assert sorted(p.name for p in env.outside.iterdir()) == ["deep", "secret.txt", "stolen-top.txt"]


def _deep_tree(folder: Path, levels: int, width: int, at_bottom: Callable[[int], None] | None = None) -> None:
    """A chain of `levels` directories of `width`-character names below `folder`, built from
    descriptors (its full path is longer than PATH_MAX), with a file at every level; `at_bottom` gets
    the deepest directory's descriptor."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(levels):
            name = f"{level:03d}" + "d" * (width - 3)
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            out = os.open("data.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(out, f"level {level}\n".encode())
            os.close(out)
        if at_bottom is not None:
            at_bottom(fd)
    finally:
        os.close(fd)


def _deep_rel(levels: int, width: int) -> str:
    return "/".join(f"{level:03d}" + "d" * (width - 3) for level in range(levels))


def test_a_tree_deeper_than_path_max_is_listed_opened_and_archived(env: Env) -> None:
    _deep_tree(env.root / OLD, levels=30, width=200)
    rel = _deep_rel(30, 200) + "/data.txt"
    assert len(rel) > 4096
    before = _open_fds()
    scanned = scan_backup(env.root, OLD)
    assert scanned.problems == ()
    assert rel in [f.path for f in scanned.files]
    assert len([f for f in scanned.files if f.path.endswith("data.txt")]) == 30
    with open_member(env.root, OLD, rel) as member:
        assert member.file.read() == b"level 29\n"
    plan = plan_tar(env.root, OLD)
    data = b"".join(iter_tar_chunks(plan))
    assert len(data) == plan.content_length
    assert _extract(data)[1][f"{OLD}/{rel}"] == b"level 29\n"
    assert _open_fds() == before


def test_a_tree_branching_deeper_than_the_walk_holds_is_reported_not_fatal(env: Env, monkeypatch) -> None:
    monkeypatch.setattr(scan, "MAX_OPEN_DIRS", 4)
    current = env.root / OLD / "system-info"
    for level in range(8):  # the chain goes on in the first of two subfolders: every parent stays open
        _write(current / f"z-side{level}" / "f.txt", b"x")
        current = current / f"a-down{level}"
    _write(current / "bottom.txt", b"bottom")
    scanned = scan_backup(env.root, OLD)
    assert scanned.problems and all("nested too deep" in p for p in scanned.problems)
    assert "configs/app.env" in [f.path for f in scanned.files]
    with pytest.raises(CatalogueError):
        plan_tar(env.root, OLD)  # an archive that silently misses files is refused up front


UNREADABLE_SCAN = """
import json, sys
from pathlib import Path
from backups.catalogue import scan
print(json.dumps([[f.name, list(scan.scan_backup(Path(sys.argv[1]), f.name).problems),
                   [e.path for e in scan.scan_backup(Path(sys.argv[1]), f.name).files]]
                  for f in scan.list_folders(Path(sys.argv[1]))]))
"""


def _without_dac_capabilities() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so
    even root is refused a folder it does not own (the test suite runs as root here)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_an_unreadable_subfolder_is_listed_with_a_problem_and_the_others_are_unaffected(env: Env) -> None:
    import json
    import subprocess
    import sys

    root = env.root
    _write(root / OLD / "secret" / "key.pem", b"key")
    locked = _write(root / "backup-20240106_000000" / "x.txt", b"x").parent
    for folder in (root / OLD / "secret", locked):
        os.chown(folder, 65534, 65534) if os.geteuid() == 0 else None
        folder.chmod(0o700 if os.geteuid() == 0 else 0)
    project = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            [sys.executable, "-c", UNREADABLE_SCAN, str(root)],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=_without_dac_capabilities if os.geteuid() == 0 else None,
        )
    finally:
        for folder in (root / OLD / "secret", locked):
            folder.chmod(0o755)
    assert done.returncode == 0, done.stderr
    found = {name: (problems, files) for name, problems, files in json.loads(done.stdout)}
    assert found[NEW][0] == []
    problems, files = found[OLD]
    assert "configs/app.env" in files and "top.txt" in files and "secret/key.pem" not in files
    assert problems == ["secret: not readable (permission denied)"]
    problems, files = found["backup-20240106_000000"]
    assert files == [] and problems == ["the folder is not readable (permission denied)"]


def test_opens_below_a_folder_swapped_for_a_symlink_never_read_outside(env: Env, opener: str) -> None:
    """A thread keeps renaming configs/ away, putting a symlink to an outside folder in its place, and
    undoing it; opens of configs/<name> must find the real file or nothing, never the outside one."""
    import threading

    outside_copy = env.outside / "app.env"
    _write(outside_copy, SECRET)
    folder = env.root / OLD
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.rename(folder / "configs", folder / "configs-real")
            os.symlink(env.outside, folder / "configs")
            time.sleep(0.0002)
            os.unlink(folder / "configs")
            os.rename(folder / "configs-real", folder / "configs")
            time.sleep(0.0002)

    swapper = threading.Thread(target=swap)
    swapper.start()
    found = refused = 0
    try:
        for _ in range(2000):
            try:
                with open_member(env.root, OLD, "configs/app.env") as member:
                    assert member.file.read() == b"A=1\n"
                    found += 1
            except BackupNotFound:
                refused += 1
    finally:
        stop.set()
        swapper.join()
    assert found and refused  # the race was real: both outcomes happened, and never the outside file


def test_created_at_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    # mtimes some filesystems allow but datetime cannot represent: epoch rather than a crash.
    assert scan.folder_created_at("x", 1e20) == datetime.fromtimestamp(0, tz=UTC)
    # A name-time that overflows once converted to UTC (local zone west of UTC): the folder mtime.
    monkeypatch.setenv("TZ", "XYZ+5")
    time.tzset()
    try:
        assert scan.folder_created_at("backup-99991231_235959", 86400.0) == datetime(1970, 1, 2, tzinfo=UTC)
        assert scan.folder_created_at("backup-20240101_000000", 0.0) == datetime(2024, 1, 1, 5, tzinfo=UTC)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_dir_chain_holds_few_descriptors_and_goes_back_up_safely(env: Env) -> None:
    from backups.catalogue.paths import DirChain

    _deep_tree(env.root / OLD / "chain", levels=40, width=50)
    names = [f"{level:03d}" + "d" * 47 for level in range(40)]
    before = _open_fds()
    with backup_dir(env.root, OLD) as fd:
        chain = DirChain(fd, max_open=4)
        try:
            for depth in (40, 10, 39, 1, 40, 0, 25):
                parts = ["chain", *names[:depth]]
                leaf = chain.dir_fd(parts)
                assert "data.txt" in os.listdir(leaf) or depth == 0
                assert _open_fds() <= before + 1 + 4
            assert chain.dir_fd(["system-info"]) and "uname.txt" in os.listdir(chain.dir_fd(["system-info"]))
        finally:
            chain.close()
    assert _open_fds() == before


def test_tar_streams_while_a_folder_is_swapped_for_a_symlink_never_read_outside(env: Env) -> None:
    """The same swap race against the tar: each stream is a whole archive of the real files, or stops
    with TarChanged; never a byte of the outside file."""
    import threading

    _write(env.outside / "app.env", SECRET * 10)
    folder = env.root / OLD
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.rename(folder / "configs", folder / "configs-real")
            os.symlink(env.outside, folder / "configs")
            time.sleep(0.0002)
            os.unlink(folder / "configs")
            os.rename(folder / "configs-real", folder / "configs")
            time.sleep(0.0002)

    swapper = threading.Thread(target=swap)
    swapper.start()
    outcomes = {"whole": 0, "stopped": 0}
    try:
        for _ in range(300):
            sent = bytearray()
            try:
                plan = plan_tar(env.root, OLD)
                for chunk in iter_tar_chunks(plan, 4096):
                    sent += chunk
                assert len(sent) == plan.content_length
                outcomes["whole"] += 1
            except TarChanged:
                outcomes["stopped"] += 1
            assert SECRET not in sent
    finally:
        stop.set()
        swapper.join()
    assert outcomes["whole"] and outcomes["stopped"], outcomes
