"""When each Locust user sends: its share of one open-loop arrival process.

Closed-loop load (send, wait for the answer, send again) hides queueing
(docs/benchmarks.md, "How we measure"), so a user here keeps a *schedule* of send times
and sends on it whether or not its earlier requests have answered (the
locustfile streams each request in a greenlet of its own). The whole run's
arrivals follow a rate ``r(t)``, and each of ``N`` users sends a Poisson (or
evenly spaced) ``1/N`` share of them; superposed, the users' sends are a
Poisson process of rate ``r(t)``. A user that finds itself behind schedule
(its process was busy) sends at once and counts a late send, never a burst
of catch-ups.

``r(t)`` is constant (steady) or an on/off modulation (bursty): alternating
periods of exponential length with a high and a low rate, the two-state MMPP
of the BATCH paper's bursty traces and of ``batchmaker.bench.trace``. Pure Python:
the test suite checks these without Locust.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import Protocol

MAX_PERIODS = 100_000
"""On/off periods drawn at most; a schedule past its last period repeats from its first."""


LATE_TOLERANCE_S = 0.05
"""A send overdue by less is on time: timers wake a little late, and a Poisson gap can
be shorter than the time one send takes."""


class RateSchedule(Protocol):
    """An arrival rate over time (seconds since the test started)."""

    @property
    def mean_rate(self) -> float: ...

    @property
    def peak_rate(self) -> float: ...

    def rate_at(self, t: float) -> float: ...

    def advance(self, t: float, work: float) -> float:
        """The time ``u >= t`` at which the expected number of arrivals since ``t`` (the
        integral of the rate from ``t`` to ``u``) reaches ``work``."""
        ...


@dataclass(frozen=True)
class ConstantRate:
    """``rate`` requests/s, all the time: the steady scenarios."""

    rate: float

    @property
    def mean_rate(self) -> float:
        return self.rate

    @property
    def peak_rate(self) -> float:
        return self.rate

    def rate_at(self, t: float) -> float:
        return self.rate

    def advance(self, t: float, work: float) -> float:
        return t + work / self.rate


@dataclass(frozen=True)
class OnOffRate:
    """Alternating on (``high``) and off (``low``) periods from time 0, on first.

    ``ends[i]`` is when period ``i`` ends; even periods are on. Past ``ends[-1]``
    the pattern repeats, so a schedule drawn for the run's length serves any time.
    """

    high: float
    low: float
    ends: tuple[float, ...]

    @classmethod
    def draw(
        cls,
        mean_rate: float,
        *,
        burst_ratio: float = 8.0,
        mean_period_s: float = 5.0,
        horizon_s: float = 600.0,
        seed: int = 0,
    ) -> OnOffRate:
        """Periods of exponential length (mean ``mean_period_s``) covering ``horizon_s``,
        the last one cut at it.

        The rates are set from the periods actually drawn, so that the mean over the
        horizon (the run time) is exactly ``mean_rate``: a bursty run offers the same
        load as a steady one at the same ``--rate``, only unevenly.
        """
        if mean_rate <= 0 or burst_ratio < 1 or mean_period_s <= 0 or horizon_s <= 0:
            raise ValueError(
                f"need mean_rate > 0, burst_ratio >= 1, mean_period_s > 0, horizon_s > 0; "
                f"got {mean_rate}, {burst_ratio}, {mean_period_s}, {horizon_s}"
            )
        rng = random.Random(seed)
        ends: list[float] = []
        t = 0.0
        while t < horizon_s and len(ends) < MAX_PERIODS:
            t = min(horizon_s, t + rng.expovariate(1.0 / mean_period_s))
            ends.append(t)  # the last period ends at the horizon, so the run sees the mean
        starts = [0.0, *ends[:-1]]
        on = sum(e - s for i, (s, e) in enumerate(zip(starts, ends, strict=True)) if i % 2 == 0)
        off = t - on
        low = mean_rate * t / (burst_ratio * on + off)
        return cls(high=burst_ratio * low, low=low, ends=tuple(ends))

    @property
    def cycle_s(self) -> float:
        return self.ends[-1]

    @functools.cached_property
    def cycle_work(self) -> float:
        """Expected arrivals in one cycle of the pattern."""
        return sum(self._rate(i) * (self.ends[i] - self._start(i)) for i in range(len(self.ends)))

    @property
    def mean_rate(self) -> float:
        return self.cycle_work / self.cycle_s

    @property
    def peak_rate(self) -> float:
        return self.high

    def _rate(self, i: int) -> float:
        return self.high if i % 2 == 0 else self.low

    def _start(self, i: int) -> float:
        return 0.0 if i == 0 else self.ends[i - 1]

    def _period_at(self, t: float) -> tuple[int, float]:
        """The period holding ``t`` and the start of ``t``'s cycle."""
        cycles = math.floor(t / self.cycle_s)
        within = t - cycles * self.cycle_s
        lo, hi = 0, len(self.ends) - 1
        while lo < hi:  # bisection: O(log periods)
            mid = (lo + hi) // 2
            if self.ends[mid] <= within:
                lo = mid + 1
            else:
                hi = mid
        return lo, cycles * self.cycle_s

    def rate_at(self, t: float) -> float:
        return self._rate(self._period_at(t)[0])

    def advance(self, t: float, work: float) -> float:
        i, base = self._period_at(t)
        per_cycle = self.cycle_work
        if work > per_cycle:  # whole cycles at once: the walk below stays within two
            cycles = math.floor(work / per_cycle)
            base += cycles * self.cycle_s
            t += cycles * self.cycle_s
            work -= cycles * per_cycle
        for _ in range(2 * len(self.ends) + 1):
            end = base + self.ends[i]
            room = self._rate(i) * (end - t)
            if work <= room:
                return t + work / self._rate(i)
            work -= room
            t = end
            i += 1
            if i == len(self.ends):
                i, base = 0, base + self.cycle_s
        return t  # unreachable: the loop covers more than one cycle's work


class Pacer:
    """One user's send times: a ``1/num_users`` share of ``schedule``'s arrivals.

    Times are seconds since the test started (the schedule's clock).
    """

    def __init__(self, schedule: RateSchedule, rng: random.Random, *, poisson: bool) -> None:
        self._schedule = schedule
        self._rng = rng
        self._poisson = poisson
        self._due: float | None = None
        self.num_sent = 0
        self.num_late = 0
        """Sends found overdue by over ``LATE_TOLERANCE_S`` (the process was too busy to
        send on time)."""

    def _gap(self, num_users: int) -> float:
        """Expected arrivals of the whole process between two of this user's sends."""
        return num_users * (self._rng.expovariate(1.0) if self._poisson else 1.0)

    def wait(self, now: float, num_users: int) -> float:
        """Seconds from ``now`` to this user's next send (called after each send)."""
        num_users = max(1, num_users)
        if self._due is None:
            # The first send: a random phase, so users spawned together do not send together.
            work = self._gap(num_users) if self._poisson else num_users * self._rng.random()
            self._due = self._schedule.advance(now, work)
        else:
            self.num_sent += 1
            due = self._schedule.advance(self._due, self._gap(num_users))
            if due < now - LATE_TOLERANCE_S:
                self.num_late += 1
                due = now  # send at once, and the next gap starts now: no catch-up burst
            self._due = due
        return max(0.0, self._due - now)


def default_num_users(peak_rate: float, *, seconds_per_send: float = 1.0, cap: int = 1000) -> int:
    """One user per ``seconds_per_send`` requests/s at the peak rate (a user is an
    open loop, so the count only spreads the load over channels, as clients would)."""
    return max(1, min(cap, math.ceil(peak_rate * seconds_per_send)))
