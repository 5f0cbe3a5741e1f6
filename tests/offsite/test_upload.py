"""Uploading backups to a real S3 server (SeaweedFS): layout, dedup, resume after a kill, refusals."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import traceback
from pathlib import Path
from typing import Any

import pytest

from backups.offsite import (
    Cancelled,
    IntegrityError,
    Manifest,
    OffsiteError,
    StoreRefused,
    StoreSettings,
    fetch_manifest,
    list_backups,
    open_remote_file,
    pending_uploads,
    upload_backup,
)
from backups.offsite.crypto import decrypt_bytes
from backups.offsite.store import Store
from tests.offsite.conftest import PART, Folder, Identity
from tests.offsite.helpers import keys_under, spawn_upload


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload(store: StoreSettings, folder: Folder, backup_id: str, tmp_path: Path, **kwargs: Any):
    kwargs.setdefault("metadata", {"type": "full"})
    kwargs.setdefault("state_dir", tmp_path / "state")
    kwargs.setdefault("part_size", PART)
    return upload_backup(store, backup_id, folder.listing, folder.open, **kwargs)


def test_plain_backup_is_stored_as_objects_by_sha256_an_index_and_a_manifest(
    store: StoreSettings, s3: Store, make_folder, tmp_path: Path
) -> None:
    folder = make_folder("backup-1", {"database.sql.gz": 12 << 20, "configs/app.env": b"A=1\n", "empty": b""})
    progress: list[tuple[int, str]] = []
    result = upload(
        store,
        folder,
        "backup-1",
        tmp_path,
        metadata={"type": "full", "description": "nightly"},
        on_progress=lambda percent, message: progress.append((percent, message)),
    )

    keys = keys_under(s3)
    expected_objects = {f"objects/{sha(folder.read(rel))}" for rel, _ in folder.listing}
    assert {key for key in keys if key.startswith("objects/")} == expected_objects
    assert set(keys) == expected_objects | {"backups/backup-1.objects", "backups/backup-1.json", "README.txt"}
    for rel, size in folder.listing:
        head = s3.head(s3.settings.key(f"objects/{sha(folder.read(rel))}"))
        assert head is not None and head["ContentLength"] == size
        assert head["Metadata"]["sha256"] == sha(folder.read(rel))

    manifest = Manifest.from_json(s3.get_bytes(s3.settings.key("backups/backup-1.json"), 1 << 20))
    assert manifest.metadata == {"type": "full", "description": "nightly"}
    assert [(f.path, f.size, f.sha256) for f in manifest.files] == [
        (rel, size, sha(folder.read(rel))) for rel, size in folder.listing
    ]
    index = s3.get_bytes(s3.settings.key("backups/backup-1.objects"), 1 << 20).decode().split()
    assert set(index) == expected_objects
    assert (result.total_bytes, result.uploaded_bytes > 12 << 20, result.skipped_bytes) == (
        (12 << 20) + 4,
        True,
        0,
    )
    assert result.objects_uploaded == 3
    assert progress[-1] == (100, "off-site copy complete: 3 files")
    assert [p for p, _ in progress] == sorted(p for p, _ in progress)
    assert list(Path(tmp_path / "state").iterdir()) == []  # nothing staged is left behind


def test_second_backup_with_unchanged_files_sends_only_the_changed_one(
    store: StoreSettings, s3: Store, make_folder, tmp_path: Path, identity: Identity
) -> None:
    same_big, same_small = os.urandom(11 << 20), b"unchanged config\n"
    first = make_folder("backup-1", {"dump.gz": same_big, "app.env": same_small, "log": b"monday\n"})
    second = make_folder("backup-2", {"dump.gz": same_big, "app.env": same_small, "log": b"tuesday\n"})
    upload(store, first, "backup-1", tmp_path, recipients=[identity.recipient])

    # Mark the stored objects: an object sent again would lose the mark.
    for key in keys_under(s3, "objects/"):
        full = s3.settings.key(key)
        head = s3.head(full)
        assert head is not None
        s3.client.copy_object(
            Bucket=s3.bucket,
            Key=full,
            CopySource={"Bucket": s3.bucket, "Key": full},
            Metadata={**head["Metadata"], "mark": "first"},
            MetadataDirective="REPLACE",
        )

    result = upload(store, second, "backup-2", tmp_path, recipients=[identity.recipient])

    assert result.skipped_bytes == len(same_big) + len(same_small)
    assert (result.objects_skipped, result.objects_uploaded) == (2, 1)
    assert result.uploaded_bytes < 4096  # one small object, the index and the manifest
    objects = keys_under(s3, "objects/")
    assert len(objects) == 4  # big, config, two logs
    marks = {key: (s3.head(s3.settings.key(key)) or {})["Metadata"].get("mark") for key in objects}
    assert marks[f"objects/{sha(same_big)}.age"] == "first"
    assert marks[f"objects/{sha(same_small)}.age"] == "first"
    assert marks[f"objects/{sha(b'tuesday' + bytes([10]))}.age"] is None


def test_encrypted_copy_objects_and_manifest_decrypt_with_the_identity(
    store: StoreSettings, s3: Store, make_folder, tmp_path: Path, identity: Identity
) -> None:
    folder = make_folder("backup-7", {"big.tar.gz": (7 << 20) + 5, "small": b"tiny"})
    result = upload(store, folder, "backup-7", tmp_path, recipients=[identity.recipient])
    assert result.manifest_key == s3.settings.key("backups/backup-7.json.age")
    keys = keys_under(s3)
    assert "backups/backup-7.json" not in keys and "backups/backup-7.json.age" in keys
    for rel, _ in folder.listing:
        stored = s3.get_bytes(s3.settings.key(f"objects/{sha(folder.read(rel))}.age"), 64 << 20)
        assert stored.startswith(b"age-encryption.org/v1\n")
        assert folder.read(rel) not in stored
        assert decrypt_bytes(stored, [identity.identity]) == folder.read(rel)
    manifest = fetch_manifest(store, "backup-7", [identity.identity])
    assert manifest.encrypted and manifest.recipients == (identity.recipient,)
    assert {f.path for f in manifest.files} == {"big.tar.gz", "small"}


def test_objects_encrypted_for_other_recipients_are_sent_again(
    store: StoreSettings, make_folder, tmp_path: Path, identity: Identity
) -> None:
    from pyrage import x25519

    folder = make_folder("backup-1", {"dump": b"same bytes\n"})
    upload(store, folder, "backup-1", tmp_path, recipients=[identity.recipient])
    rotated = x25519.Identity.generate()
    result = upload(store, folder, "backup-2", tmp_path, recipients=[str(rotated.to_public())])
    assert (result.objects_uploaded, result.skipped_bytes) == (1, 0)
    item = fetch_manifest(store, "backup-2", [rotated]).files[0]
    with open_remote_file(store, item, [rotated]) as stream:
        assert stream.read() == b"same bytes\n"


@pytest.mark.slow
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_upload_killed_half_way_resumes_in_a_new_process_with_the_parts_already_sent(
    encrypted: bool, store: StoreSettings, s3: Store, make_folder, tmp_path: Path, identity: Identity
) -> None:
    folder = make_folder("backup-9", {"dump.gz": 8 * PART + 1234, "small.txt": b"hello\n"})
    state_dir = tmp_path / "state"
    job = {
        "store": {
            "endpoint": store.endpoint,
            "bucket": store.bucket,
            "prefix": store.prefix,
            "access_key_id": store.access_key_id,
            "secret_access_key": store.secret_access_key,
        },
        "backup_id": "backup-9",
        "folder": str(folder.path),
        "listing": folder.listing,
        "state_dir": str(state_dir),
        "part_size": PART,
        "pause": 0.4,
        "recipients": [identity.recipient] if encrypted else [],
    }
    object_key = s3.settings.key(f"objects/{sha(folder.read('dump.gz'))}" + (".age" if encrypted else ""))

    child = spawn_upload(job, tmp_path / "child.log")
    try:
        parts = _wait_for_parts(s3, object_key, at_least=3, process=child)
        if encrypted:  # the staging file is complete and marked: from here on it can be resumed
            _wait_for(lambda: any(state_dir.glob("*.complete")), child)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)
    assert child.returncode == -signal.SIGKILL
    assert parts >= 3

    # Killed: no manifest, an unfinished copy, an unfinished multipart upload recorded locally.
    assert [(b.backup_id, b.complete) for b in list_backups(store)] == [("backup-9", False)]
    assert [p.key for p in pending_uploads(state_dir)] == [object_key]
    held = sum(int(p["Size"]) for p in s3.parts(object_key, pending_uploads(state_dir)[0].upload_id).values())

    second = spawn_upload({**job, "pause": 0}, tmp_path / "child.log")
    output, _ = second.communicate(timeout=120)
    assert second.returncode == 0, (tmp_path / "child.log").read_text()[-3000:]
    result = json.loads(output.decode().strip().splitlines()[-1])

    assert result["resumed_bytes"] >= held >= 3 * PART
    size = folder.listing[0][1]
    assert result["uploaded_bytes"] < size - 2 * PART  # fewer bytes sent the second time
    assert not list(s3.multipart_uploads())
    assert list(state_dir.iterdir()) == []
    manifest = fetch_manifest(store, "backup-9", [identity.identity])
    for item in manifest.files:
        with open_remote_file(store, item, [identity.identity]) as stream:
            assert stream.read() == folder.read(item.path)


def _wait_for_parts(s3: Store, key: str, *, at_least: int, process, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the upload ended before it could be killed"
        for upload in s3.multipart_uploads():
            if upload["Key"] == key:
                count = len(s3.parts(key, upload["UploadId"]))
                if count >= at_least:
                    return count
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} parts after {timeout} s")


def _wait_for(condition, process, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)


def test_cancelled_upload_keeps_its_parts_and_the_next_attempt_reuses_them(
    store: StoreSettings, s3: Store, make_folder, tmp_path: Path, identity: Identity
) -> None:
    folder = make_folder("backup-3", {"dump.gz": 6 * PART})
    checks = 0

    def stop_after_some_parts() -> bool:
        # Once the staging file is complete (before that, a cancel discards the parts: see upload.py).
        nonlocal checks
        checks += 1
        return checks > 4 and any((tmp_path / "state").glob("*.complete"))

    with pytest.raises(Cancelled):
        upload(
            store,
            folder,
            "backup-3",
            tmp_path,
            recipients=[identity.recipient],
            concurrency=1,
            should_stop=stop_after_some_parts,
        )
    assert len(pending_uploads(tmp_path / "state")) == 1
    result = upload(store, folder, "backup-3", tmp_path, recipients=[identity.recipient], concurrency=1)
    assert result.resumed_bytes >= PART
    with open_remote_file(store, result.manifest.files[0], [identity.identity]) as stream:
        assert sha(stream.read()) == sha(folder.read("dump.gz"))


def test_store_refusing_writes_is_a_clear_error_and_leaves_no_copy(
    read_only_store: StoreSettings, s3: Store, make_folder, tmp_path: Path
) -> None:
    folder = make_folder("backup-4", {"dump.gz": b"x" * 1000})
    with pytest.raises(StoreRefused) as caught:
        upload(read_only_store, folder, "backup-4", tmp_path)
    error = caught.value
    assert error.code == "AccessDenied"
    assert str(error).startswith(f"PutObject s3://{s3.bucket}/{s3.settings.root}")
    assert "refused by the store: AccessDenied" in str(error)
    assert keys_under(s3) == {}
    _assert_no_secret(error, read_only_store)


@pytest.mark.parametrize("failure", ["wrong-secret", "unknown-key", "unreachable"])
def test_no_credential_appears_in_any_error(
    failure: str, store: StoreSettings, make_folder, tmp_path: Path
) -> None:
    from dataclasses import replace

    settings = {
        "wrong-secret": replace(store, secret_access_key="s3cr3t-" + os.urandom(8).hex()),
        "unknown-key": replace(
            store,
            access_key_id="AKIAUNKNOWN" + os.urandom(4).hex().upper(),
            secret_access_key="s3cr3t-" + os.urandom(8).hex(),
        ),
        "unreachable": replace(
            store,
            endpoint="http://u:pw-" + os.urandom(4).hex() + "@127.0.0.1:9",
            max_attempts=1,
            connect_timeout=1,
        ),
    }[failure]
    folder = make_folder("backup-5", {"dump.gz": b"y" * 100})
    with pytest.raises(OffsiteError) as caught:
        upload(settings, folder, "backup-5", tmp_path)
    _assert_no_secret(caught.value, settings)
    if failure != "unreachable":
        assert isinstance(caught.value, StoreRefused)
    else:
        assert "cannot reach the store at http://u:****@127.0.0.1:9" in str(caught.value)


def _assert_no_secret(error: BaseException, settings: StoreSettings) -> None:
    shown = "".join(traceback.format_exception(error)) + repr(error) + str(getattr(error, "__dict__", ""))
    assert settings.secret_access_key not in shown
    assert settings.access_key_id not in shown
    from urllib.parse import urlsplit

    password = urlsplit(settings.endpoint).password
    assert not password or password not in shown


def test_a_file_that_does_not_match_its_hash_is_refused_and_never_stored(
    store: StoreSettings, s3: Store, make_folder, tmp_path: Path
) -> None:
    folder = make_folder("backup-6", {"big": 2 * PART + 10, "small": b"abc"})
    wrong = {rel: sha(b"something else " + rel.encode()) for rel, _ in folder.listing}
    for rel in ("small", "big"):  # one single-request object, one multipart
        with pytest.raises(IntegrityError, match=f"{rel} changed while it was uploaded"):
            upload(store, folder, "backup-6", tmp_path, hashes={rel: wrong[rel]})
    stored = keys_under(s3, "objects/")
    assert not {f"objects/{digest}" for digest in wrong.values()} & set(stored)
    for key in stored:  # what did get stored (the other file, on the first try) is what its name says
        assert f"objects/{sha(s3.get_bytes(s3.settings.key(key), 64 << 20))}" == key
    assert not list(s3.multipart_uploads())
    assert "backups/backup-6.json" not in keys_under(s3)


def test_a_listing_that_leaves_the_folder_is_refused(
    store: StoreSettings, make_folder, tmp_path: Path
) -> None:
    folder = make_folder("backup-8", {"a": b"1"})
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../b", "a//b"):
        with pytest.raises(IntegrityError):
            upload_backup(store, "backup-8", [(bad, 1)], folder.open, metadata={}, state_dir=tmp_path)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_file_rewritten_between_hashing_and_upload_is_refused(
    encrypted: bool, store: StoreSettings, s3: Store, make_folder, tmp_path: Path, identity: Identity
) -> None:
    folder = make_folder("backup-10", {"dump.gz": 2 * PART + 1})
    opened: list[str] = []

    def rewriting_opener(rel: str):
        opened.append(rel)
        if len(opened) == 2:  # the upload's open, after the hashing one: same size, other bytes
            (folder.path / rel).write_bytes(os.urandom(2 * PART + 1))
        return folder.open(rel)

    with pytest.raises(IntegrityError, match="dump.gz changed while it was uploaded"):
        upload_backup(
            store,
            "backup-10",
            folder.listing,
            rewriting_opener,
            metadata={},
            state_dir=tmp_path / "state",
            part_size=PART,
            recipients=[identity.recipient] if encrypted else [],
        )
    assert opened == ["dump.gz", "dump.gz"]
    assert keys_under(s3, "objects/") == {}
    assert not list(s3.multipart_uploads())


def test_files_the_opener_gives_as_plain_streams_are_encrypted_through_a_pipe(
    store: StoreSettings, make_folder, tmp_path: Path, identity: Identity
) -> None:
    import io

    folder = make_folder("backup-11", {"dump.gz": 3 * PART + 17})
    streamed = upload_backup(
        store,
        "backup-11",
        folder.listing,
        lambda rel: io.BytesIO(folder.read(rel)),
        metadata={},
        state_dir=tmp_path / "state",
        part_size=PART,
        recipients=[identity.recipient],
    )
    item = streamed.manifest.files[0]
    with open_remote_file(store, item, [identity.identity]) as stream:
        assert stream.read() == folder.read("dump.gz")


def test_a_vanished_file_is_an_error_that_does_not_show_its_full_path(
    store: StoreSettings, make_folder, tmp_path: Path
) -> None:
    folder = make_folder("backup-12", {"dump.gz": b"z" * 100})
    (folder.path / "dump.gz").unlink()
    with pytest.raises(OffsiteError) as caught:
        upload_backup(
            store,
            "backup-12",
            [("dump.gz", 100)],
            folder.open,
            metadata={},
            state_dir=tmp_path / "state",
            part_size=PART,
        )
    assert str(caught.value) == "cannot read dump.gz: No such file or directory"
    assert str(tmp_path) not in "".join(traceback.format_exception(caught.value))
