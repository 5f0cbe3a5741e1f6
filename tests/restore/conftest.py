"""The same real source database and reference-script backup as the verification tests, plus empty
target databases that are always dropped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.verification.backup_fixtures import (
    create_database,
    drop_database,
    make_source_database,
    run_reference_script,
    unique_name,
)


@pytest.fixture(scope="session")
def source_db() -> Iterator[str]:
    name = unique_name("bsvc_restore_src_")
    make_source_database(name)
    yield name
    drop_database(name)


@pytest.fixture(scope="session")
def script_backup(source_db: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_reference_script(tmp_path_factory.mktemp("script"), [source_db])


@pytest.fixture
def target_db() -> Iterator[Callable[[], str]]:
    """Makes empty target databases on demand; all are dropped afterwards."""
    made: list[str] = []

    def make() -> str:
        name = unique_name("bsvc_restore_tgt_")
        create_database(name)
        made.append(name)
        return name

    yield make
    for name in made:
        drop_database(name)
