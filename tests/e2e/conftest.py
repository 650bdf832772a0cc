"""The shared server of the e2e tier: one per module, torn down with it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from live_server import LiveServer

from batchmaker.client import Client


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    """A started server with ``e2e_models()``, its steps never gated."""
    with LiveServer() as server:
        yield server


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Client:
    return live.client()
