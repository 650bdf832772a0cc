"""Clocks the scheduler reads time from.

The scheduler never calls ``time`` itself: the live engine hands it a monotonic
clock and the simulator and tests hand it a ``ManualClock``, so one scheduler
serves both.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A source of monotonic seconds."""

    def now(self) -> float: ...


class MonotonicClock:
    """Wall time for the live engine (``time.monotonic``)."""

    def now(self) -> float:
        return time.monotonic()


class ManualClock:
    """Time that moves only when told to: simulations and deterministic tests."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock cannot go back: advance({seconds})")
        self._now += seconds

    def set(self, t: float) -> None:
        if t < self._now:
            raise ValueError(f"a clock cannot go back: set({t}) < now {self._now}")
        self._now = t
