"""A throwaway source database and the reference script's real backup of it, made once per session;
tests that damage a backup work on their own copy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.verification.backup_fixtures import (
    databases_like,
    drop_database,
    make_source_database,
    run_reference_script,
    unique_name,
)


@pytest.fixture(scope="session")
def source_db() -> Iterator[str]:
    name = unique_name("bsvc_verify_src_")
    make_source_database(name)
    yield name
    drop_database(name)


@pytest.fixture(scope="session")
def script_backup(source_db: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the reference script wrote, with a real pg_dump of source_db. Read-only for tests."""
    return run_reference_script(tmp_path_factory.mktemp("script"), [source_db])


@pytest.fixture
def scratch_prefix() -> Iterator[str]:
    """A prefix of this test's own: scratch databases with it must all be gone at the end."""
    prefix = unique_name("bsvc_vt_") + "_"
    yield prefix
    left = databases_like(prefix)
    for name in left:
        drop_database(name)
    assert not left, f"scratch databases left behind: {left}"
