"""Fixtures every test tier shares. Kept small; tier helpers live beside their tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_leaked_worker_threads() -> Iterator[None]:
    """Every engine a test starts is shut down by its end: no device thread outlives it."""
    before = set(threading.enumerate())
    yield
    leaked = [
        t.name
        for t in threading.enumerate()
        if t not in before and t.name.startswith("batchmaker-") and t.is_alive()
    ]
    assert not leaked, f"engine worker threads still running after the test: {leaked}"
