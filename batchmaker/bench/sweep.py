"""The search for a mode's sustainable load: the highest offered rate whose load point
meets the latency SLO.

Bracketed by doubling (or halving) from a start rate, then bisected geometrically.
Every mode of one benchmark starts from the same rate, so the bracketing rates form a
grid the modes share (what latency-against-load plots draw), and only the bisection
rates are a mode's own. The number of load points is bounded: at most
``MAX_BRACKET_STEPS`` to bracket, then ``bisections``, each tried up to ``1 + retries``
times.

Pure: no torch, no sockets, no event loop of its own. What a load point is (an
in-process replay, a replay over gRPC, a simulated one in a test) is the caller's
``Point``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

Point = Callable[[float], Awaitable[bool]]
"""Runs one load point at a rate (requests/s) and says whether it met the SLO."""

MAX_BRACKET_STEPS = 12
"""Most doublings or halvings while bracketing: 2^12 x the start rate at the top."""


async def find_sustainable(
    point: Point, start: float, *, bisections: int, retries: int = 0
) -> float:
    """The highest rate found to meet the SLO; 0.0 when none did.

    ``retries``: a point that misses is run again up to this many times before it
    counts as a miss, since on a shared machine a burst of someone else's work can
    fail a point on its own. The last attempt decides.
    """
    if start <= 0:
        raise ValueError(f"start must be > 0, got {start}")

    async def meets(rate: float) -> bool:
        for _ in range(1 + retries):
            if await point(rate):
                return True
        return False

    rate = start
    lo, hi = 0.0, math.inf
    for _ in range(MAX_BRACKET_STEPS):
        if await meets(rate):
            lo = rate
            if hi < math.inf:
                break
            rate *= 2
        else:
            hi = rate
            # Below 1/16 of the start a load point takes minutes and the mode is far
            # from useful: report 0 rather than halve on (a machine slowed down since
            # the idle run can otherwise miss its own idle SLO at any rate).
            if lo > 0 or rate < start / 8:
                break
            rate /= 2
    for _ in range(bisections if lo > 0 and hi < math.inf else 0):
        rate = math.sqrt(lo * hi)
        if await meets(rate):
            lo = rate
        else:
            hi = rate
    return lo


def num_requests(rate: float, *, most: int, fewest: int, seconds: float) -> int:
    """Requests in a load point at ``rate``: enough to span ``seconds`` of arrivals, but
    at least ``fewest`` (a p99 needs a sample) and at most ``most`` (the trace's size)."""
    return int(min(most, max(fewest, rate * seconds)))
