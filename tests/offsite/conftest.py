"""Fixtures for the off-site tests: one real S3 server (SeaweedFS) for the session, one bucket, a fresh
prefix per test, age identities, and backup folders in tmp_path with a plain opener over them."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import pytest
from pyrage import x25519

from backups.offsite import Store, StoreSettings
from tests.offsite.seaweed import SeaweedServer

BUCKET = "offsite-tests"
PART = 5 << 20  # S3's (and SeaweedFS's) smallest part: multipart behaviour on small files


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        admin = StoreSettings(
            endpoint=server.endpoint,
            bucket=BUCKET,
            access_key_id=server.admin.access_key_id,
            secret_access_key=server.admin.secret_access_key,
        )
        Store(admin).call("CreateBucket", Store(admin).client.create_bucket, Bucket=BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture
def store(s3_server: SeaweedServer, request: pytest.FixtureRequest) -> StoreSettings:
    """Admin settings under a prefix no other test uses."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:60]
    return StoreSettings(
        endpoint=s3_server.endpoint,
        bucket=BUCKET,
        prefix=f"t/{name}-{secrets.token_hex(3)}",
        access_key_id=s3_server.admin.access_key_id,
        secret_access_key=s3_server.admin.secret_access_key,
        max_attempts=2,
    )


@pytest.fixture
def read_only_store(store: StoreSettings, s3_server: SeaweedServer) -> StoreSettings:
    """The same place with the read-only identity: every write is refused (AccessDenied)."""
    return replace(
        store,
        access_key_id=s3_server.reader.access_key_id,
        secret_access_key=s3_server.reader.secret_access_key,
    )


@pytest.fixture
def s3(store: StoreSettings) -> Store:
    return Store(store)


@dataclass
class Identity:
    identity: x25519.Identity
    recipient: str
    key_file: Path


@pytest.fixture
def identity(tmp_path: Path) -> Identity:
    made = x25519.Identity.generate()
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"# created: test\n# public key: {made.to_public()}\n{made}\n")
    key_file.chmod(0o600)
    return Identity(made, str(made.to_public()), key_file)


@dataclass
class Folder:
    path: Path

    @property
    def listing(self) -> list[tuple[str, int]]:
        return sorted(
            (p.relative_to(self.path).as_posix(), p.stat().st_size)
            for p in self.path.rglob("*")
            if p.is_file()
        )

    def open(self, rel_path: str) -> BinaryIO:
        return open(self.path / rel_path, "rb")

    def read(self, rel_path: str) -> bytes:
        return (self.path / rel_path).read_bytes()


@pytest.fixture
def make_folder(tmp_path: Path) -> Callable[..., Folder]:
    """A backup folder from {rel_path: bytes | size}; a size gives that many random bytes."""

    def make(name: str, files: dict[str, bytes | int]) -> Folder:
        root = tmp_path / "backups" / name
        for rel, content in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(secrets.token_bytes(content) if isinstance(content, int) else content)
        root.mkdir(parents=True, exist_ok=True)
        return Folder(root)

    return make


# --- the service around the store (database, worker steps, events) ---------------------------------------


@dataclass
class Service:
    """Off-site copies configured on the test's prefix, with the worker whose steps the tests call."""

    store: StoreSettings
    identity: Identity
    worker: object
    root: Path


@pytest.fixture
def service(store: StoreSettings, identity: Identity, backup_root: Path, settings, tmp_path: Path):
    """Off-site copies enabled and encrypted for `identity`, the worker's steps ready to be called, and
    the reference script's sources (its demo dumps pass verification: no PostgreSQL database here)."""
    from backups.audit import Actor
    from backups.config.services import config_update
    from backups.worker.loop import Worker
    from tests.servers import make_sources

    settings.OFFSITE_ACCESS_KEY_ID = store.access_key_id
    settings.OFFSITE_SECRET_ACCESS_KEY = store.secret_access_key
    settings.OFFSITE_IDENTITY_PATH = None
    settings.OFFSITE_RETRY_SECONDS = 0
    settings.OFFSITE_UPLOAD_BYTES_PER_SECOND = 0
    settings.BACKUP_KILL_GRACE_SECONDS = 1
    settings.AUTOMATIC_JOBS_DELAY_SECONDS = 0
    settings.ALLOW_DEMO_DUMPS = True
    config_update(
        document={
            "offsite": {
                "enabled": True,
                "endpoint": store.endpoint,
                "bucket": store.bucket,
                "prefix": store.prefix,
            },
            "encryptionRecipients": [identity.recipient],
            "retention": {"daily": 0, "weekly": 0, "monthly": 0},
        },
        actor=Actor("tester"),
        partial=True,
    )
    make_sources(tmp_path)
    names = {
        "BACKUP_APP_DIR": "app",
        "BACKUP_UPLOADS_DIR": "uploads",
        "BACKUP_CONFIGS_DIR": "configs",
        "BACKUP_SSL_DIR": "ssl",
        "BACKUP_NGINX_DIR": "nginx",
    }
    for name, folder in names.items():
        os.environ[name] = str(tmp_path / "src" / folder)
    os.environ["BACKUP_PG_PORT"] = "1"
    worker = Worker(label="test")
    assert worker.hold_lease()
    try:
        yield Service(store, identity, worker, backup_root)
    finally:
        worker.release_lease()
        for name in (*names, "BACKUP_PG_PORT"):
            os.environ.pop(name, None)
