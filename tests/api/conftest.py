"""A real HTTP receiver on loopback for the endpoints that notify."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.notifications.loopback import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()
