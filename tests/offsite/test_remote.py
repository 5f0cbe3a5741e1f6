"""Reading copies back, with and without the key; remote retention and garbage collection; rebuilding
the service from the bucket alone."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backups.offsite import (
    IdentityError,
    IntegrityError,
    RecipientError,
    StoreSettings,
    delete_backup,
    download_file,
    fetch_manifest,
    fetch_service_document,
    garbage_collect,
    iter_files,
    list_backups,
    plan_export,
    rebuild,
    upload_audit_export,
    upload_backup,
    upload_config,
)
from backups.offsite.crypto import encrypt_bytes
from backups.offsite.remote import RemoteNotFound
from backups.offsite.store import Store
from tests.offsite.conftest import PART, Folder, Identity
from tests.offsite.helpers import keys_under


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload(store: StoreSettings, folder: Folder, backup_id: str, tmp_path: Path, **kwargs: Any):
    kwargs.setdefault("metadata", {"type": "full", "created_at": "2026-12-01T03:00:00+00:00"})
    return upload_backup(
        store, backup_id, folder.listing, folder.open, state_dir=tmp_path / "state", part_size=PART, **kwargs
    )


def age_decrypt(key_file: Path, path: Path) -> bytes:
    done = subprocess.run(["age", "-d", "-i", str(key_file), str(path)], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def test_downloaded_object_and_manifest_decrypt_with_debian_age(
    store: StoreSettings, s3: Store, make_folder, tmp_path: Path, identity: Identity
) -> None:
    folder = make_folder("backup-1", {"dump.sql.gz": 6 * PART + 77, "app.env": b"A=1\n"})
    upload(store, folder, "backup-1", tmp_path, recipients=[identity.recipient])
    download = tmp_path / "download"
    download.mkdir()
    for rel, _ in folder.listing:
        target = download / f"{sha(folder.read(rel))}.age"
        s3.client.download_file(s3.bucket, s3.settings.key(f"objects/{target.name}"), str(target))
        assert age_decrypt(identity.key_file, target) == folder.read(rel)
    manifest_file = download / "backup-1.json.age"
    manifest_file.write_bytes(s3.get_bytes(s3.settings.key("backups/backup-1.json.age"), 1 << 20))
    manifest = json.loads(age_decrypt(identity.key_file, manifest_file))
    assert manifest["backup_id"] == "backup-1"
    assert manifest["metadata"]["type"] == "full"
    assert {(f["path"], f["sha256"]) for f in manifest["files"]} == {
        (rel, sha(folder.read(rel))) for rel, _ in folder.listing
    }


def test_files_read_back_as_plaintext_streams_and_a_swapped_object_is_caught(
    store: StoreSettings, s3: Store, make_folder, tmp_path: Path, identity: Identity
) -> None:
    folder = make_folder("backup-2", {"a/one": 3 * PART, "two": b"second file\n"})
    upload(store, folder, "backup-2", tmp_path, recipients=[identity.recipient])
    manifest = fetch_manifest(store, "backup-2", [identity.identity])
    got = {item.path: stream.read() for item, stream in iter_files(store, manifest, [identity.identity])}
    assert got == {"a/one": folder.read("a/one"), "two": b"second file\n"}
    one = next(item for item in manifest.files if item.path == "a/one")
    restored = io.BytesIO()
    assert download_file(store, one, restored, [identity.identity]) == 3 * PART
    assert restored.getvalue() == folder.read("a/one")

    # Someone with the public key replaces an object with other content: the name no longer matches.
    two = next(item for item in manifest.files if item.path == "two")
    s3.put(s3.settings.key(two.object), encrypt_bytes(b"forged file\n", [identity.identity.to_public()]))
    with pytest.raises(IntegrityError, match="two does not match its sha256"):
        for _item, stream in iter_files(store, manifest, [identity.identity]):
            stream.read()
    with pytest.raises(IdentityError, match="age identity is needed"):
        fetch_manifest(store, "backup-2")


def test_without_identity_the_copy_is_served_as_stored_with_a_readme_that_works(
    store: StoreSettings, make_folder, tmp_path: Path, identity: Identity
) -> None:
    folder = make_folder("backup-3", {"db/dump.sql.gz": PART + 9, "configs/app.env": b"A=1\n"})
    upload(store, folder, "backup-3", tmp_path, recipients=[identity.recipient])
    members = plan_export(store, "backup-3")
    names = [member.name for member in members]
    assert names[:2] == ["README.txt", "backup-3.json.age"]
    assert sorted(names[2:]) == sorted(f"objects/{sha(folder.read(rel))}.age" for rel, _ in folder.listing)

    export = tmp_path / "export"
    for member in members:
        path = export / member.name
        path.parent.mkdir(parents=True, exist_ok=True)
        with member.open() as source:
            data = source.read()
        assert len(data) == member.size
        path.write_bytes(data)
    readme = (export / "README.txt").read_text()
    assert "age -d -i key.txt" in readme
    # Follow the README literally: its restore commands, with the key beside them.
    (export / "key.txt").write_bytes(identity.key_file.read_bytes())
    commands = [line.strip() for line in readme.split("To restore into ./restored:")[1].strip().splitlines()]
    done = subprocess.run(
        ["sh", "-ec", "\n".join(commands)],
        cwd=export,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout.decode()
    for rel, _ in folder.listing:
        assert (export / "restored" / rel).read_bytes() == folder.read(rel)


def test_retention_removes_a_copy_and_gc_deletes_only_unreferenced_objects(
    store: StoreSettings, s3: Store, make_folder, tmp_path: Path, identity: Identity
) -> None:
    shared = b"shared between both backups\n"
    first = make_folder("backup-1", {"only-first": b"first\n", "shared": shared})
    second = make_folder("backup-2", {"only-second": b"second\n", "shared": shared})
    upload(store, first, "backup-1", tmp_path, recipients=[identity.recipient])
    upload(store, second, "backup-2", tmp_path, recipients=[identity.recipient])
    stale = s3.client.create_multipart_upload(Bucket=s3.bucket, Key=s3.settings.key("objects/" + "0" * 64))

    assert delete_backup(store, "backup-1") is True
    assert [b.backup_id for b in list_backups(store)] == ["backup-2"]
    assert delete_backup(store, "backup-1") is False

    # Objects just written are too young to judge (an upload elsewhere may be about to name them).
    young = garbage_collect(store)
    assert (young.deleted_objects, young.aborted_uploads) == (0, 0)

    result = garbage_collect(store, grace=timedelta(0), stale_uploads=timedelta(0))
    objects = set(keys_under(s3, "objects/"))
    assert objects == {f"objects/{sha(shared)}.age", f"objects/{sha(b'second' + bytes([10]))}.age"}
    assert (result.deleted_objects, result.referenced_objects, result.aborted_uploads) == (1, 2, 1)
    assert stale["UploadId"] not in {u["UploadId"] for u in s3.multipart_uploads()}
    manifest = fetch_manifest(store, "backup-2", [identity.identity])
    files = iter_files(store, manifest, [identity.identity])
    assert {item.path: f.read() for item, f in files} == {"only-second": b"second\n", "shared": shared}


def test_gc_deletes_nothing_when_a_copys_references_cannot_be_read(
    store: StoreSettings, s3: Store, make_folder, tmp_path: Path, identity: Identity
) -> None:
    for name, content in (("backup-1", b"a\n"), ("backup-2", b"b\n")):
        upload(store, make_folder(name, {"f": content}), name, tmp_path, recipients=[identity.recipient])
    delete_backup(store, "backup-2")
    s3.delete(s3.settings.key("backups/backup-1.objects"))  # an encrypted manifest alone: unreadable here

    result = garbage_collect(store, grace=timedelta(0))
    assert result.deleted_objects == 0 and len(keys_under(s3, "objects/")) == 2
    assert result.problems and result.problems[0].startswith("backup-1: cannot read which objects it uses")
    # With the identity the manifest is readable, and only backup-2's object goes.
    result = garbage_collect(store, grace=timedelta(0), identities=[identity.identity])
    assert result.deleted_objects == 1
    assert set(keys_under(s3, "objects/")) == {f"objects/{sha(b'a' + bytes([10]))}.age"}


def test_service_is_rebuilt_from_the_bucket_alone(
    store: StoreSettings, s3: Store, make_folder, tmp_path: Path, identity: Identity
) -> None:
    recipients = [identity.recipient]
    for number, day in ((1, "2026-11-30"), (2, "2026-12-01")):
        files: dict[str, bytes | int] = {"dump.gz": f"dump {number}\n".encode(), "big": PART + number}
        metadata = {"type": "full", "created_at": f"{day}T03:00:00+00:00", "description": f"night {number}"}
        upload(
            store,
            make_folder(f"backup-{number}", files),
            f"backup-{number}",
            tmp_path,
            recipients=recipients,
            metadata=metadata,
        )
    interrupted = make_folder("backup-3", {"dump.gz": b"never finished\n"})
    index = f"objects/{sha(interrupted.read('dump.gz'))}.age\n".encode()
    s3.put(s3.settings.key("backups/backup-3.objects"), index)
    config = {"enabled": True, "schedule": "0 3 * * *", "offsite": {"enabled": True, "bucket": store.bucket}}
    upload_config(store, config, recipients, state_dir=tmp_path / "state")
    at = datetime(2026, 12, 1, tzinfo=UTC)
    audit = [{"id": n, "action": "backup.create", "at": at} for n in range(2000)]
    upload_audit_export(store, audit, recipients, state_dir=tmp_path / "state")
    s3.delete(s3.settings.key(f"objects/{sha(b'dump 2' + bytes([10]))}.age"))  # a lost object

    with pytest.raises(IdentityError):
        rebuild(store)
    found = rebuild(store, [identity.identity])
    assert [(m.backup_id, m.metadata["description"]) for m in found.backups] == [
        ("backup-1", "night 1"),
        ("backup-2", "night 2"),
    ]
    assert found.incomplete == ("backup-3",)
    assert found.missing_objects == {"backup-2": ("dump.gz",)}
    assert found.config == config
    assert found.audit_export and found.problems == ()
    lines = io.BytesIO()
    fetch_service_document(store, "audit.jsonl", [identity.identity], lines)
    events = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert len(events) == 2000 and events[1999] == {
        "id": 1999,
        "action": "backup.create",
        "at": "2026-12-01 00:00:00+00:00",
    }
    assert set(keys_under(s3, "service/")) == {"service/config.json.age", "service/audit.jsonl.age"}


def test_service_documents_are_never_stored_in_clear(store: StoreSettings, s3: Store, tmp_path: Path) -> None:
    with pytest.raises(RecipientError, match="only stored encrypted"):
        upload_config(store, {"enabled": True}, [], state_dir=tmp_path)
    assert keys_under(s3) == {}
    with pytest.raises(RemoteNotFound):
        fetch_manifest(store, "backup-1")
