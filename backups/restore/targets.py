"""The places a restore may write, named in the environment (RESTORE_TARGETS for databases,
RESTORE_DIRECTORIES for files): a request names one, never a URL or a path, and nothing here ever
answers with a URL, a path or a password."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

DATABASE = "database"
FILES = "files"
KINDS = (DATABASE, FILES)
# What an archive member is (contents.Member.type), for the API's documents.
MEMBER_TYPES = ("file", "dir", "symlink", "hardlink", "char", "block", "fifo", "sparse", "other")


@dataclass(frozen=True)
class Target:
    name: str
    kind: str

    def to_document(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind}


def targets() -> list[Target]:
    """Every named target, databases first, each kind by name. A name may be both a database and a
    files target (`staging` for both is the usual set-up)."""
    return [Target(name, DATABASE) for name in sorted(settings.RESTORE_TARGETS)] + [
        Target(name, FILES) for name in sorted(settings.RESTORE_DIRECTORIES)
    ]


def kinds_of(name: str) -> list[str]:
    return [target.kind for target in targets() if target.name == name]


def database_url(name: str) -> str | None:
    """The target's URL (a secret: for the job's environment and the request-time check only)."""
    return settings.RESTORE_TARGETS.get(name)


def directory(name: str) -> Path | None:
    value = settings.RESTORE_DIRECTORIES.get(name)
    return Path(value) if value else None
