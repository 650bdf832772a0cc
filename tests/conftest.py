"""Fixtures every test tier shares. Kept small; tier helpers live beside their tests."""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def torch_cpu_threads() -> None:
    """torch's CPU threads, set once for the test process as every command that starts a
    server sets them for its own (``set_cpu_threads``): all cores but one. Only when some
    collected test imported torch: the torch-free tiers must not pull it in."""
    if "torch" in sys.modules:
        from batchmaker.config import EngineConfig
        from batchmaker.runtime.torch_executor import set_cpu_threads

        set_cpu_threads(EngineConfig())


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


@pytest.fixture(autouse=True)
def thawed_heap() -> Iterator[None]:
    """Engines freeze the heap when they start (``EngineConfig.freeze_heap``): right for a
    server, but in the test process it would keep every earlier test's cyclic garbage
    for good. Each test starts and ends thawed."""
    gc.unfreeze()
    yield
    gc.unfreeze()
