"""The in-process realtime tests run on the in-memory channel layer, also when REDIS_URL is set.

Each of them runs on an event loop of its own, while Channels keeps one layer object per process, and
channels_redis binds its receive lock and connection pools to the loop that first reads: a blocking
read left from one test's loop hangs the close of the next (seen as teardown timeouts on the
PostgreSQL + Redis pass). Production has one loop per process. The Redis paths are tested where they
matter: the tests marked `redis` bring a Redis layer of their own, and test_socketio_client.py runs two
real `serve` processes fanning out through Redis."""

from __future__ import annotations

import pytest
from channels.layers import channel_layers

IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}}


@pytest.fixture(autouse=True)
def in_memory_channel_layer(request, settings):
    if request.node.get_closest_marker("redis") is None and request.node.get_closest_marker("slow") is None:
        settings.CHANNEL_LAYERS = IN_MEMORY
    channel_layers.backends.clear()  # after the switch (the shared conftest cleared it before)
    yield
