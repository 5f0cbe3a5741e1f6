"""Real parts for the verification and restore tests: a throwaway PostgreSQL database with known
content, the reference script's real backup of it, and a plain opener over a backup folder.

No Django here; tests/restore imports it too.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from tests.servers import REFERENCE_SCRIPT, make_sources

PG_HOST = "127.0.0.1"
PG_PORT = "5432"
SERVER_URL = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"

# What the source database holds (inserted by make_source_database, counted back by the tests).
SOURCE_ROWS = {"public.clients": 120, "public.appointments": 345, "audit.events": 17, "public.empty_table": 0}


def db_url(name: str) -> str:
    return f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"


def psql(sql: str, database: str = "postgres") -> str:
    done = subprocess.run(
        [
            "psql",
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            PG_HOST,
            "-p",
            PG_PORT,
            "-U",
            "postgres",
            "-d",
            database,
            "-c",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql failed: {done.stderr}")
    return done.stdout


def unique_name(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


def create_database(name: str) -> None:
    psql(f'CREATE DATABASE "{name}" TEMPLATE template0')


def drop_database(name: str) -> None:
    psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def databases_like(prefix: str) -> list[str]:
    out = psql(f"SELECT datname FROM pg_database WHERE starts_with(datname, '{prefix}') ORDER BY 1")
    return [line for line in out.splitlines() if line]


def make_source_database(name: str, *, extra_mb: int = 0) -> None:
    """A database with two schemas, a foreign key, an empty table and (optionally) `extra_mb` of bulk rows."""
    create_database(name)
    psql(
        """
        CREATE TABLE clients (id integer PRIMARY KEY, name text NOT NULL, note text);
        INSERT INTO clients SELECT g, 'client ' || g, repeat('x', g % 7) FROM generate_series(1, 120) g;
        CREATE TABLE appointments (id serial PRIMARY KEY, client_id integer REFERENCES clients (id),
                                   starts_at timestamptz NOT NULL, service text);
        INSERT INTO appointments (client_id, starts_at, service)
            SELECT 1 + g % 120, '2025-01-01'::timestamptz + g * interval '1 hour', E'tab\\there'
            FROM generate_series(1, 345) g;
        CREATE SCHEMA audit;
        CREATE TABLE audit.events (at timestamptz DEFAULT now(), what text);
        INSERT INTO audit.events (what) SELECT 'event ' || g FROM generate_series(1, 17) g;
        CREATE TABLE empty_table (id bigint);
        CREATE INDEX appointments_client ON appointments (client_id);
        """,
        name,
    )
    if extra_mb:
        psql(
            f"""CREATE TABLE bulk (id bigint, payload text);
                INSERT INTO bulk SELECT g, md5(g::text) || repeat('y', 990)
                FROM generate_series(1, {extra_mb * 1024}) g;""",
            name,
        )


def run_reference_script(tmp: Path, databases: list[str], *, pg_port: str = PG_PORT) -> Path:
    """The reference script's real run (its real pg_dump) into tmp/backups; returns the new folder."""
    make_sources(tmp)
    env = dict(os.environ)
    env.update(
        {
            "BACKUP_ROOT": str(tmp / "backups"),
            "BACKUP_SCRIPT_LOG": str(tmp / "script.log"),
            "BACKUP_PG_DATABASES": " ".join(databases),
            "BACKUP_PG_HOST": PG_HOST,
            "BACKUP_PG_PORT": pg_port,
            "BACKUP_PG_USER": "postgres",
            "BACKUP_APP_DIR": str(tmp / "src" / "app"),
            "BACKUP_UPLOADS_DIR": str(tmp / "src" / "uploads"),
            "BACKUP_CONFIGS_DIR": str(tmp / "src" / "configs"),
            "BACKUP_SSL_DIR": str(tmp / "src" / "ssl"),
            "BACKUP_NGINX_DIR": str(tmp / "src" / "nginx"),
            "LC_ALL": "C",
        }
    )
    done = subprocess.run(
        ["bash", str(REFERENCE_SCRIPT)], env=env, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"reference script failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return (tmp / "backups" / "latest").resolve()


def listing(folder: Path) -> list[tuple[str, int]]:
    return sorted(
        (str(path.relative_to(folder)), path.stat().st_size) for path in folder.rglob("*") if path.is_file()
    )


class Opener:
    """`open_file(rel_path)` over a folder, recording every open and the bytes read through each."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.opened: list[str] = []
        self.bytes_read: dict[str, int] = {}

    def __call__(self, rel_path: str) -> BinaryIO:
        path = self.folder / rel_path
        if not path.resolve().is_relative_to(self.folder.resolve()):
            raise PermissionError("outside the folder")
        self.opened.append(rel_path)
        handle = open(path, "rb", buffering=0)  # noqa: SIM115 - handed to the caller
        return _Counting(handle, rel_path, self.bytes_read)


class _Counting:
    def __init__(self, handle: BinaryIO, name: str, counts: dict[str, int]) -> None:
        self._handle = handle
        self._name = name
        self._counts = counts

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._counts[self._name] = self._counts.get(self._name, 0) + len(data)
        return data

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> _Counting:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rewrite_manifest(folder: Path) -> None:
    """MANIFEST.sha256 rewritten by sha256sum the way the script writes it, so only a deep check can
    tell a damaged file (the manifest then vouches for the damage)."""
    files = sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and path.name != "MANIFEST.sha256"
    )
    done = subprocess.run(["sha256sum", "--", *files], cwd=folder, capture_output=True, check=True)
    (folder / "MANIFEST.sha256").write_bytes(done.stdout)


def copy_backup(folder: Path, dest: Path) -> Path:
    target = dest / folder.name
    shutil.copytree(folder, target, symlinks=True)
    return target


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry below root (not following links): kind, size, content digest for files."""
    snapshot: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                snapshot[rel] = ("link", 0, os.readlink(path))
            elif path.is_dir():
                snapshot[rel] = ("dir", 0, "")
            else:
                snapshot[rel] = ("file", st.st_size, sha256_of(path))
    return snapshot


OpenFile = Callable[[str], BinaryIO]
