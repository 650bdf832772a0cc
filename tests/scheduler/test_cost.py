"""``PlanCosts``: what the scheduler believes a plan costs, from the plans it was told about.

The estimate is a guess the scheduler acts on, so what is pinned is its shape: exact at a
seen point, linear between, in proportion below the shortest (never a fixed cost made up),
rising along the last segment above the longest and never below it; running means that
move toward new observations; one table per cell type and power-of-two batch bucket.
"""

from __future__ import annotations

import pytest

from scheduler.cost import PlanCosts, pow2_bucket


@pytest.mark.parametrize(
    ("n", "bucket"), [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (64, 64), (65, 128)]
)
def test_pow2_bucket(n, bucket):
    assert pow2_bucket(n) == bucket


def costs_with(points: dict[int, float], rows: int = 64) -> PlanCosts:
    costs = PlanCosts()
    for steps, seconds in points.items():
        costs.observe("lstm", rows, steps, seconds)
    return costs


def test_nothing_seen_is_none():
    assert PlanCosts().estimate("lstm", 64, 4) is None


def test_seen_points_are_exact_and_between_them_linear():
    costs = costs_with({1: 0.003, 8: 0.010, 32: 0.034})
    assert costs.estimate("lstm", 64, 1) == pytest.approx(0.003)
    assert costs.estimate("lstm", 64, 8) == pytest.approx(0.010)
    assert costs.estimate("lstm", 64, 4) == pytest.approx(0.003 + 3 * 0.001)
    assert costs.estimate("lstm", 64, 20) == pytest.approx(0.010 + 12 * 0.001)


def test_below_the_shortest_seen_plan_the_cost_is_in_proportion():
    costs = costs_with({4: 0.008})
    assert costs.estimate("lstm", 64, 1) == pytest.approx(0.002)


def test_one_point_extrapolates_in_proportion():
    costs = costs_with({4: 0.008})
    assert costs.estimate("lstm", 64, 16) == pytest.approx(0.032)


def test_above_the_longest_seen_plan_the_last_segment_goes_on_but_never_falls():
    rising = costs_with({1: 0.003, 8: 0.010})
    assert rising.estimate("lstm", 64, 15) == pytest.approx(0.017)
    # A longer plan measured cheaper (a faster kernel took it): no negative cost ahead.
    falling = costs_with({4: 0.012, 16: 0.010})
    assert falling.estimate("lstm", 64, 32) == pytest.approx(0.010)


def test_without_guesses_only_lengths_within_those_seen_are_estimated():
    """The SLO controller compares lengths by their whole cost: below the shortest seen
    the proportional guess drops the fixed cost, past the longest the line is a guess."""
    costs = costs_with({4: 0.012, 16: 0.020})
    assert costs.estimate("lstm", 64, 2, guess=False) is None
    assert costs.estimate("lstm", 64, 3, guess=False) == pytest.approx(
        costs.estimate("lstm", 64, 3)
    )
    assert costs.estimate("lstm", 64, 8, guess=False) == pytest.approx(0.012 + 4 * 0.008 / 12)
    assert costs.estimate("lstm", 64, 16, guess=False) == pytest.approx(0.020)
    assert costs.estimate("lstm", 64, 17, guess=False) is None
    assert costs.estimate("lstm", 64, 17) is not None


def test_a_point_is_a_running_mean_that_moves_toward_new_plans():
    costs = costs_with({8: 0.010})
    for _ in range(50):
        costs.observe("lstm", 64, 8, 0.020)
    assert costs.estimate("lstm", 64, 8) == pytest.approx(0.020, rel=1e-3)
    ((steps, seconds, count),) = costs.table()["lstm"][64]
    assert (steps, count) == (8.0, 51)
    assert seconds == pytest.approx(0.020, rel=1e-3)


def test_plans_of_the_same_bucket_share_a_point_at_their_mean_length():
    costs = costs_with({5: 0.010})
    costs.observe("lstm", 64, 7, 0.014)
    ((steps, seconds, _),) = costs.table()["lstm"][64]
    assert 5.0 < steps < 7.0
    assert 0.010 < seconds < 0.014


def test_each_cell_type_and_batch_bucket_has_its_own_table():
    costs = PlanCosts()
    costs.observe("lstm", 64, 1, 0.003)
    costs.observe("lstm", 33, 1, 0.005)  # the same bucket as 64
    costs.observe("lstm", 8, 1, 0.001)
    costs.observe("gru", 64, 1, 0.002)
    assert costs.estimate("lstm", 50, 1) is not None
    assert costs.estimate("lstm", 16, 1) is None
    assert costs.estimate("lstm", 8, 1) == pytest.approx(0.001)
    assert costs.estimate("gru", 64, 1) == pytest.approx(0.002)
    costs.forget("lstm")
    assert costs.estimate("lstm", 64, 1) is None
    assert costs.estimate("gru", 64, 1) == pytest.approx(0.002)


@pytest.mark.parametrize(
    ("rows", "steps", "seconds"), [(0, 1, 0.1), (1, 0, 0.1), (1, 1, 0.0), (1, 1, float("nan"))]
)
def test_nonsense_is_ignored(rows, steps, seconds):
    costs = PlanCosts()
    costs.observe("lstm", rows, steps, seconds)
    assert costs.table() == {}
