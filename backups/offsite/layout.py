"""Where things live in the bucket, and the manifest document that describes one backup.

Under the configured prefix (keys below are relative to it):

    objects/<sha256>.age        one file's content, age-encrypted (plain: objects/<sha256>)
    backups/<id>.objects        the object keys the backup references, one per line (always plain text)
    backups/<id>.json.age       the manifest, age-encrypted (plain: backups/<id>.json)
    service/config.json.age     the service's config document (always encrypted)
    service/audit.jsonl.age     the audit log export, JSON lines (always encrypted)
    README.txt                  how to decrypt all this with `age`, for whoever finds the bucket

A file is stored once under the sha256 of its plaintext: a later backup holding the same bytes
references the same object. The encrypted and the plain name differ, so an object stored before
encryption was turned on never stands in for an encrypted one.

The `.objects` index exists because the manifest is encrypted and the service never holds the private
key: garbage collection must know which objects are still referenced without decrypting anything. It
holds nothing the store cannot already see (object names are content hashes; which ones one backup
uploaded shows in the store's own logs). It is written before the first object and the manifest after
the last, so an index alone marks an unfinished copy (its objects are kept) and a manifest means the
copy is complete.

What the store learns without a key: object names (the sha256 of each file's plaintext, so it could
confirm a guess of a file's exact content), sizes, counts and times. Never content, paths or metadata.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backups.offsite.errors import IntegrityError

OBJECTS = "objects/"
BACKUPS = "backups/"
SERVICE = "service/"
README_KEY = "README.txt"
AGE_SUFFIX = ".age"
MANIFEST_SUFFIX = ".json"
INDEX_SUFFIX = ".objects"

MANIFEST_FORMAT = "backup-service-offsite-manifest"
MANIFEST_VERSION = 1
MANIFEST_MAX_BYTES = 64 << 20

SERVICE_CONFIG = "config.json"
SERVICE_AUDIT = "audit.jsonl"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,199}")


def check_backup_id(backup_id: str) -> str:
    if not _ID.fullmatch(backup_id) or ".." in backup_id:
        raise IntegrityError("not a backup id (letters, digits and . _ + @ -, no '..')")
    return backup_id


def check_rel_path(path: str) -> str:
    """A file path inside a backup: relative, '/'-separated, no empty, '.' or '..' component."""
    if not isinstance(path, str) or not path or "\0" in path or "\\" in path or path.startswith("/"):
        raise IntegrityError("a file path in a backup must be relative and '/'-separated")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise IntegrityError("a file path in a backup must not hold empty, '.' or '..' components")
    return path


def object_key(sha256: str, *, encrypted: bool) -> str:
    if not _SHA256.fullmatch(sha256):
        raise IntegrityError("an object name must be a lowercase sha256")
    return f"{OBJECTS}{sha256}{AGE_SUFFIX if encrypted else ''}"


def manifest_key(backup_id: str, *, encrypted: bool) -> str:
    return f"{BACKUPS}{check_backup_id(backup_id)}{MANIFEST_SUFFIX}{AGE_SUFFIX if encrypted else ''}"


def index_key(backup_id: str) -> str:
    return f"{BACKUPS}{check_backup_id(backup_id)}{INDEX_SUFFIX}"


def service_key(name: str) -> str:
    if name not in (SERVICE_CONFIG, SERVICE_AUDIT):
        raise ValueError(f"unknown service document {name!r}")
    return f"{SERVICE}{name}{AGE_SUFFIX}"


def parse_backups_key(rel: str) -> tuple[str, str, bool] | None:
    """`backups/<id>.json[.age]` → (id, "manifest", encrypted); `backups/<id>.objects` → (id, "index",
    False); anything else None."""
    if not rel.startswith(BACKUPS):
        return None
    name = rel[len(BACKUPS) :]
    for suffix, kind, encrypted in (
        (MANIFEST_SUFFIX + AGE_SUFFIX, "manifest", True),
        (MANIFEST_SUFFIX, "manifest", False),
        (INDEX_SUFFIX, "index", False),
    ):
        if name.endswith(suffix):
            backup_id = name[: -len(suffix)]
            if _ID.fullmatch(backup_id) and ".." not in backup_id:
                return backup_id, kind, encrypted
            return None
    return None


def parse_object_key(rel: str) -> tuple[str, bool] | None:
    """`objects/<sha256>[.age]` → (sha256, encrypted); anything else None."""
    if not rel.startswith(OBJECTS):
        return None
    name = rel[len(OBJECTS) :]
    encrypted = name.endswith(AGE_SUFFIX)
    digest = name[: -len(AGE_SUFFIX)] if encrypted else name
    return (digest, encrypted) if _SHA256.fullmatch(digest) else None


def render_index(object_keys: Sequence[str]) -> bytes:
    return "".join(f"{key}\n" for key in sorted(set(object_keys))).encode()


def parse_index(data: bytes) -> set[str]:
    """The object keys an index names; lines that are not object keys are ignored (never deleted)."""
    keys = set()
    for line in data.decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if parse_object_key(line) is not None:
            keys.add(line)
    return keys


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    sha256: str
    object: str  # the object's key, relative to the prefix

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "object": self.object}


@dataclass(frozen=True)
class Manifest:
    """One backup's copy: its files (path, size, sha256, object) and the caller's metadata (type,
    description, created_at, ...: whatever the catalogue needs to rebuild its row)."""

    backup_id: str
    files: tuple[ManifestFile, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    encrypted: bool = False
    recipients: tuple[str, ...] = ()
    uploaded_at: str = ""

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.files)

    @property
    def object_keys(self) -> list[str]:
        return sorted({item.object for item in self.files})

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "backup_id": self.backup_id,
            "uploaded_at": self.uploaded_at,
            "encrypted": self.encrypted,
            "recipients": list(self.recipients),
            "total_bytes": self.total_bytes,
            "metadata": dict(self.metadata),
            "files": [item.as_dict() for item in self.files],
        }

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), indent=1, sort_keys=True, ensure_ascii=False).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise IntegrityError("the manifest is not JSON") from None
        if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
            raise IntegrityError("not a backup manifest of this service")
        if document.get("version") != MANIFEST_VERSION:
            raise IntegrityError(f"manifest version {document.get('version')!r} is not supported")
        try:
            files = tuple(
                ManifestFile(
                    path=check_rel_path(item["path"]),
                    size=_non_negative(item["size"]),
                    sha256=str(item["sha256"]),
                    object=str(item["object"]),
                )
                for item in document["files"]
            )
            manifest = cls(
                backup_id=check_backup_id(str(document["backup_id"])),
                files=files,
                metadata=dict(document.get("metadata") or {}),
                encrypted=bool(document.get("encrypted")),
                recipients=tuple(str(value) for value in document.get("recipients") or ()),
                uploaded_at=str(document.get("uploaded_at") or ""),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise IntegrityError("the manifest misses or mistypes a field") from None
        for item in files:
            if parse_object_key(item.object) != (item.sha256, manifest.encrypted):
                raise IntegrityError(f"the manifest names a bad object for {item.path}")
        return manifest


def _non_negative(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("not a size")
    return value


README_TEXT = """\
Off-site copies written by the backup service
=============================================

Everything here can be read back without the service, with the `age` tool (https://age-encryption.org,
Debian/Ubuntu: apt install age) and the private key matching the service's encryptionRecipients.

  backups/<id>.json.age     the manifest of backup <id>: its files' paths, sizes and sha256
  backups/<id>.objects      the object names that backup uses (plain text; no manifest = unfinished)
  objects/<sha256>.age      one file's content, named by the sha256 of its plaintext
  service/config.json.age   the service's configuration document
  service/audit.jsonl.age   the service's audit log, one JSON document per line

(Without encryption the same names lack the `.age` suffix and need no key.)

To restore backup <id> into ./restored, with the objects and the manifest downloaded beside you
(e.g. `aws s3 sync s3://<bucket>/<prefix>/ .`) and your private key in key.txt:

  age -d -i key.txt backups/<id>.json.age > manifest.json
  jq -r '.files[] | "\\(.sha256) \\(.path)"' manifest.json | while read -r sha path; do
    mkdir -p "restored/$(dirname "$path")"
    age -d -i key.txt "objects/$sha.age" > "restored/$path"
  done
  jq -r '.files[] | "\\(.sha256)  \\(.path)"' manifest.json | (cd restored && sha256sum -c)

Without jq, the same with python3:

  python3 -c 'import json,sys; [print(f["sha256"], f["path"]) for f in json.load(sys.stdin)["files"]]' \\
    < manifest.json | while read -r sha path; do ...; done
"""


def export_readme(backup_id: str, manifest: str, *, encrypted: bool) -> str:
    """The README of a download made of a backup's objects as the store holds them."""
    decrypt = "age -d -i key.txt" if encrypted else "cat"
    suffix = AGE_SUFFIX if encrypted else ""
    return f"""\
Backup {backup_id}, as stored off site
{"=" * (len(backup_id) + 25)}

{
        "Every file here is encrypted with age (https://age-encryption.org; Debian/Ubuntu: apt install age)."
        if encrypted
        else "The files here are not encrypted."
    }
{
        "You need the private key matching the service encryptionRecipients (saved as key.txt below)."
        if encrypted
        else ""
    }

  {manifest}   the list of the backup's files: path, size, sha256
  objects/<sha256>{suffix}   one file's content, named by the sha256 of its plaintext

To restore into ./restored:

  {decrypt} {manifest} > manifest.json
  jq -r '.files[] | "\\(.sha256) \\(.path)"' manifest.json | while read -r sha path; do
    mkdir -p "restored/$(dirname "$path")"
    {decrypt} "objects/$sha{suffix}" > "restored/$path"
  done
  jq -r '.files[] | "\\(.sha256)  \\(.path)"' manifest.json | (cd restored && sha256sum -c)
"""
