"""The sustainable-load search on simulated load points: a point meets the SLO exactly
when its rate is at most a hidden capacity. No server, no timing."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchmaker.bench.sweep import MAX_BRACKET_STEPS, find_sustainable, num_requests


def search(
    capacity: float, start: float, *, bisections: int = 3, retries: int = 0
) -> tuple[float, list[float]]:
    """The search's answer, and every rate it tried, in order."""
    tried: list[float] = []

    async def point(rate: float) -> bool:
        tried.append(rate)
        return rate <= capacity

    found = asyncio.run(find_sustainable(point, start, bisections=bisections, retries=retries))
    return found, tried


def test_doubles_to_bracket_then_bisects() -> None:
    found, tried = search(100.0, 10.0)
    assert tried[:5] == [10.0, 20.0, 40.0, 80.0, 160.0]  # the grid every mode shares
    assert len(tried) == 5 + 3
    assert 80.0 <= found <= 100.0
    assert found in tried


def test_halves_when_the_start_is_too_fast() -> None:
    found, tried = search(3.0, 10.0, bisections=0)
    assert tried == [10.0, 5.0, 2.5]
    assert found == 2.5


def test_gives_up_below_an_eighth_of_the_start() -> None:
    found, tried = search(0.0, 10.0)
    assert found == 0.0
    assert tried == [10.0, 5.0, 2.5, 1.25, 0.625]


def test_a_mode_that_never_misses_stops_after_the_bracket_bound() -> None:
    found, tried = search(math.inf, 1.0)
    assert len(tried) == MAX_BRACKET_STEPS  # no bisection without an upper bound
    assert found == 2.0 ** (MAX_BRACKET_STEPS - 1)


def test_a_retried_miss_counts_as_a_pass_when_the_retry_passes() -> None:
    attempts: list[float] = []

    async def flaky(rate: float) -> bool:
        attempts.append(rate)
        return rate <= 4 or (rate == 8 and attempts.count(8) == 2)  # 8 passes on its retry

    found = asyncio.run(find_sustainable(flaky, 1.0, bisections=0, retries=1))
    assert found == 8.0
    assert attempts == [1, 2, 4, 8, 8, 16, 16]


def test_start_must_be_positive() -> None:
    with pytest.raises(ValueError, match="start"):
        asyncio.run(find_sustainable(lambda _: asyncio.sleep(0, True), 0.0, bisections=1))


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.floats(0.5, 1000.0),
    start=st.floats(1.0, 100.0),
    bisections=st.integers(0, 5),
)
def test_finds_a_passing_rate_within_the_bisection_precision(
    capacity: float, start: float, bisections: int
) -> None:
    found, tried = search(capacity, start, bisections=bisections)
    assert found <= capacity  # only a rate that passed is reported
    if capacity >= start / 8:  # within the bracket's reach: bracketed, then bisected
        assert found >= capacity / 2 ** (1 / 2**bisections) * (1 - 1e-9)
    assert len(tried) <= MAX_BRACKET_STEPS + bisections


def test_num_requests_spans_the_seconds_within_bounds() -> None:
    assert num_requests(10.0, most=400, fewest=150, seconds=12.0) == 150
    assert num_requests(20.0, most=400, fewest=150, seconds=12.0) == 240
    assert num_requests(1000.0, most=400, fewest=150, seconds=12.0) == 400
