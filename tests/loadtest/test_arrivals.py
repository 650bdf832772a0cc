"""Arrival schedules: the rates the scenarios promise, and users that keep to them."""

from __future__ import annotations

import random

import pytest

from loadtest.arrivals import (
    LATE_TOLERANCE_S,
    ConstantRate,
    OnOffRate,
    Pacer,
    RateSchedule,
    default_num_users,
)


def integral(schedule: RateSchedule, t0: float, t1: float, dt: float = 0.001) -> float:
    """Expected arrivals in [t0, t1] by a Riemann sum: an independent check of ``advance``."""
    n = round((t1 - t0) / dt)
    return sum(schedule.rate_at(t0 + (i + 0.5) * dt) for i in range(n)) * dt


def test_constant_rate_advances_linearly() -> None:
    s = ConstantRate(4.0)
    assert s.advance(1.0, 2.0) == pytest.approx(1.5)
    assert s.mean_rate == s.peak_rate == s.rate_at(123.0) == 4.0


def test_on_off_offers_the_mean_over_the_run_and_alternates() -> None:
    s = OnOffRate.draw(10.0, burst_ratio=8.0, mean_period_s=5.0, horizon_s=60.0, seed=3)
    assert s.cycle_s == pytest.approx(60.0)  # the last period is cut at the run's end
    assert s.mean_rate == pytest.approx(10.0)
    assert s.high == pytest.approx(8.0 * s.low)
    assert s.peak_rate == s.high
    starts = [0.0, *s.ends[:-1]]
    rates = [s.rate_at((a + b) / 2) for a, b in zip(starts, s.ends, strict=True)]
    assert rates[::2] == [s.high] * len(rates[::2])
    assert rates[1::2] == [s.low] * len(rates[1::2])
    assert len(rates) > 4  # several bursts in a minute at 5 s periods


def test_on_off_is_reproducible_by_seed() -> None:
    a = OnOffRate.draw(5.0, horizon_s=100.0, seed=1)
    assert a == OnOffRate.draw(5.0, horizon_s=100.0, seed=1)
    assert a != OnOffRate.draw(5.0, horizon_s=100.0, seed=2)


@pytest.mark.parametrize(("t", "work"), [(0.0, 3.0), (7.3, 0.5), (11.0, 40.0), (55.0, 1234.5)])
def test_on_off_advance_integrates_the_rate(t: float, work: float) -> None:
    s = OnOffRate.draw(2.0, burst_ratio=4.0, mean_period_s=3.0, horizon_s=30.0, seed=7)
    u = s.advance(t, work)
    assert u >= t
    if u - t < 200:  # the Riemann sum is the slow part; the repeat past the horizon is checked too
        assert integral(s, t, u) == pytest.approx(work, rel=1e-2)
    else:
        assert u - t == pytest.approx(work / s.mean_rate, rel=0.05)


def test_on_off_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="burst_ratio"):
        OnOffRate.draw(1.0, burst_ratio=0.5)


def test_poisson_users_together_send_at_the_rate() -> None:
    """Users that answer at once: their merged sends are the schedule's arrivals."""
    schedule = ConstantRate(20.0)
    users = [Pacer(schedule, random.Random(i), poisson=True) for i in range(10)]
    sends = []
    for pacer in users:
        now = 0.0
        for _ in range(2000):  # bounded: about 1000 s of one user's sends
            now += pacer.wait(now, len(users))
            if now > 500.0:
                break
            sends.append(now)
    assert len(sends) / 500.0 == pytest.approx(20.0, rel=0.05)
    assert all(p.num_late == 0 for p in users)


def test_constant_arrivals_are_evenly_spaced() -> None:
    pacer = Pacer(ConstantRate(4.0), random.Random(0), poisson=False)
    now = pacer.wait(0.0, 2)  # the first send: a random phase within one gap
    assert 0.0 <= now < 0.5
    gaps = []
    for _ in range(5):
        gap = pacer.wait(now, 2)
        gaps.append(gap)
        now += gap
    assert gaps == pytest.approx([0.5] * 5)


def test_a_user_behind_schedule_sends_at_once_without_catching_up() -> None:
    pacer = Pacer(ConstantRate(10.0), random.Random(0), poisson=False)
    first = pacer.wait(0.0, 1)
    assert pacer.wait(first + 5.0, 1) == 0.0  # 5 s late: now, not 50 sends in a row
    assert pacer.num_late == 1
    assert pacer.wait(first + 5.0, 1) == pytest.approx(0.1)
    # Overdue by less than the tolerance is on time.
    pacer.wait(first + 5.1 + LATE_TOLERANCE_S / 2, 1)
    assert pacer.num_late == 1


@pytest.mark.parametrize(("rate", "users"), [(0.2, 1), (10.0, 10), (15.3, 16), (1e6, 1000)])
def test_default_users(rate: float, users: int) -> None:
    assert default_num_users(rate) == users
