"""Step-cost profiles: the grid's interpolation, and the JSON the simulator reads.

A profile is measured once and read by processes that load no model, so what is pinned
is that a cost comes out as the docstring of ``batchmaker/sim/profile.py`` says (exact at
grid points, bilinear between, never falling beyond), and that a malformed file is
refused with its field named.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from sim_factories import CELL, chain_profile, flat_grid

from batchmaker.sim.profile import CostGrid, ProfileError, StepProfile
from scheduler import StepPlan


def test_grid_points_are_exact():
    grid = CostGrid((1, 4), (1, 8), ((0.001, 0.004), (0.002, 0.010)))
    assert grid.cost(1, 1) == pytest.approx(0.001)
    assert grid.cost(4, 8) == pytest.approx(0.010)


def test_between_grid_points_bilinear():
    grid = CostGrid((1, 5), (1, 9), ((0.001, 0.005), (0.003, 0.011)))
    assert grid.cost(3, 1) == pytest.approx(0.002)
    assert grid.cost(1, 5) == pytest.approx(0.003)
    # Middle of the cell: the mean of its four corners.
    assert grid.cost(3, 5) == pytest.approx((0.001 + 0.005 + 0.003 + 0.011) / 4)


def test_beyond_the_grid_proportional_in_rows_and_rising_in_steps():
    grid = CostGrid((1, 2), (1, 2), ((0.001, 0.0015), (0.002, 0.003)))
    assert grid.cost(8, 1) == pytest.approx(0.008)  # 4 x the largest batch
    assert grid.cost(2, 4) == pytest.approx(0.003 + 2 * 0.001)  # the last segment goes on
    falling = CostGrid((1,), (1, 4), ((0.004, 0.003),))
    assert falling.cost(1, 16) == pytest.approx(0.003)  # never cheaper than the longest


@pytest.mark.parametrize(
    ("rows", "steps", "seconds", "field"),
    [
        ((), (1,), (), "rows"),
        ((2, 1), (1,), ((0.1,), (0.1,)), "rows"),
        ((1,), (0,), ((0.1,),), "steps"),
        ((1, 2), (1,), ((0.1,),), "seconds"),
        ((1,), (1,), ((-0.1,),), "seconds"),
        ((1,), (1,), ((float("nan"),),), "seconds"),
    ],
)
def test_a_bad_grid_names_its_field(rows, steps, seconds, field):
    with pytest.raises(ProfileError, match=field):
        CostGrid(rows, steps, seconds)


def test_a_profile_round_trips_through_json(tmp_path):
    profile = chain_profile(flat_grid(0.002), meta={"measured": "2026-12-03"})
    path = tmp_path / "p.json"
    profile.save(path)
    again = StepProfile.load(path)
    assert again == profile


def _plan(steps: list[int], *, pad_to_longest: bool = False) -> StepPlan:
    n = len(steps)
    return StepPlan(
        cell_type=CELL,
        requests=[None] * n,
        nodes=[0] * n,
        emits=[True] * n,
        inputs=np.zeros((n, max(steps)), dtype=np.int64),
        read_slots=np.zeros((n, 1), dtype=np.int64),
        write_slots=np.zeros(n, dtype=np.int64),
        num_steps=max(steps),
        steps=np.array(steps, dtype=np.int64),
        pad_to_longest=pad_to_longest,
    )


def test_rows_that_end_early_drop_out_of_a_plans_cost():
    """A grid of a fixed cost per plan plus a cost per row-step: a ragged plan costs the
    fixed cost once and its rows' own steps, not every row for the longest run."""
    rows, steps = (1, 2, 4, 8), (1, 2, 4, 8)
    fixed, per_row_step = 0.001, 0.0001
    grid = CostGrid(
        rows, steps, tuple(tuple(fixed + per_row_step * n * k for k in steps) for n in rows)
    )
    profile = chain_profile(grid)
    ragged = [8, 8, 2, 1]  # 19 row-steps
    assert grid.ragged_cost(ragged) == pytest.approx(fixed + per_row_step * 19)
    assert profile.cost(_plan(ragged)) == pytest.approx(fixed + per_row_step * 19)
    # Every row running every step, and a plan padded to its longest row, cost the grid's.
    assert grid.ragged_cost([4, 4, 4]) == pytest.approx(grid.cost(3, 4))
    assert profile.cost(_plan(ragged, pad_to_longest=True)) == pytest.approx(grid.cost(4, 8))
    assert grid.ragged_cost(ragged) < grid.cost(4, 8)


def test_a_ragged_plan_costs_its_staircase_times_the_measured_factor():
    """Rows that end apart run on a kernel that can drop rows, not always the one that
    ran the grid: the staircase times the factor measured at the plan's rows and longest
    run (bilinear between points, the edge's beyond them); a plan whose rows all end
    together pays no factor."""
    rows, steps = (1, 2, 4, 8), (1, 2, 4, 8)
    fixed, per_row_step = 0.001, 0.0001
    seconds = tuple(tuple(fixed + per_row_step * n * k for k in steps) for n in rows)
    factors = (
        (1.0, 1.0, 1.0, 1.0),
        (1.0, 1.1, 1.2, 1.3),
        (1.0, 1.2, 1.4, 1.6),
        (1.0, 1.3, 1.6, 1.9),
    )
    grid = CostGrid(rows, steps, seconds, factors)
    staircase = fixed + per_row_step * 19
    assert grid.ragged_cost([8, 8, 2, 1]) == pytest.approx(1.6 * staircase)  # 4 rows, 8 steps
    assert grid.ragged_cost([4, 1]) == pytest.approx(1.2 * (fixed + per_row_step * 5))
    assert grid.ragged_factor(3, 6) == pytest.approx((1.2 + 1.3 + 1.4 + 1.6) / 4)
    assert grid.ragged_factor(64, 100) == pytest.approx(1.9)
    assert grid.ragged_cost([4, 4, 4]) == pytest.approx(grid.cost(3, 4))
    assert CostGrid(rows, steps, seconds).ragged_factor(4, 8) == 1.0  # not measured
    scaled = grid.scaled(2.0)
    assert scaled.ragged == factors, "a factor is a ratio: the machine's speed leaves it"
    assert scaled.ragged_cost([8, 8, 2, 1]) == pytest.approx(2 * 1.6 * staircase)
    profile = chain_profile(grid)
    assert StepProfile.from_json(json.loads(json.dumps(profile.to_json()))) == profile
    assert profile.cost(_plan([8, 8, 2, 1])) == pytest.approx(1.6 * staircase)
    with pytest.raises(ProfileError, match="ragged"):
        CostGrid(rows, steps, seconds, factors[:3])
    # A measured grid that dips (noise): running further never costs less.
    dipping = CostGrid((1, 2), (1, 2, 4), ((1e-5, 2e-5, 3e-5), (4e-5, 5e-5, 3e-5)))
    # Three rows for one step (1.5 x two rows'), then two rows from step 1 to 4: -1e-5.
    assert dipping.ragged_cost([4, 4, 1]) == pytest.approx(1.5 * 4e-5)


def test_the_host_factor_multiplies_every_plan():
    """A served engine's plans take ``host`` times the grid's (its event loop beside
    them); a profile from before it was measured reads as 1."""
    grid = CostGrid((1, 4), (1, 8), ((0.001, 0.004), (0.002, 0.010)))
    base = chain_profile(grid)
    served = chain_profile(grid, host=1.1)
    for plan in (_plan([8, 8, 2, 1]), _plan([3]), _plan([8, 8], pad_to_longest=True)):
        assert served.cost(plan) == pytest.approx(1.1 * base.cost(plan))
    assert served.scaled(2.0).cost(_plan([3])) == pytest.approx(2.2 * base.cost(_plan([3])))
    assert StepProfile.from_json(served.to_json()) == served
    old = served.to_json()
    del old["host"]
    assert StepProfile.from_json(old).host == 1.0
    with pytest.raises(ProfileError, match="host"):
        chain_profile(grid, host=0.0)


def test_the_host_factor_follows_the_load_it_was_measured_at():
    """``host_by_load``: the factor at each load measured (cell-steps served per second),
    linear between, the nearest point's outside; the saturated one (``host``, the last
    load measured, the overload) where the load is not given."""
    grid = CostGrid((1, 4), (1, 8), ((0.001, 0.004), (0.002, 0.010)))
    base = chain_profile(grid)
    loaded = base.with_host([(100.0, 0.9), (1000.0, 1.3)])
    assert loaded.host_by_load == ((100.0, 0.9), (1000.0, 1.3))
    assert loaded.host == 1.3
    # An overload that read fewer cell-steps a second than the light load (a noisy
    # machine, a tiny model whose host work dominates): its factor is still saturation's.
    noisy = base.with_host([(1000.0, 0.9), (100.0, 1.3)])
    assert noisy.host_by_load == ((100.0, 1.3), (1000.0, 0.9))
    assert noisy.host == 1.3
    plan = _plan([3])
    for steps_per_s, factor in [
        (0.0, 0.9),
        (100.0, 0.9),
        (550.0, 1.1),
        (1000.0, 1.3),
        (5000.0, 1.3),
        (None, 1.3),
    ]:
        assert loaded.cost(plan, steps_per_s) == pytest.approx(factor * base.cost(plan))
    assert StepProfile.from_json(json.loads(json.dumps(loaded.to_json()))) == loaded
    older = loaded.to_json()
    del older["host_by_load"]
    assert StepProfile.from_json(older).host_by_load == ()
    with pytest.raises(ProfileError, match="ascend"):
        dataclasses.replace(loaded, host_by_load=((1000.0, 1.3), (100.0, 0.9)))
    with pytest.raises(ProfileError, match="host_by_load"):
        dataclasses.replace(loaded, host_by_load=((100.0, 0.0),))


def test_the_plans_spread_is_multipliers_with_mean_one_and_round_trips():
    """``host_spread``: what the simulator draws each plan's multiplier from. Its mean
    must be 1, or it would move the host factor, which is measured apart."""
    base = chain_profile(CostGrid((1, 4), (1, 8), ((0.001, 0.004), (0.002, 0.010))))
    spread = base.with_host([(100.0, 1.1)], [0.5, 0.75, 1.0, 1.75])
    assert spread.host_spread == (0.5, 0.75, 1.0, 1.75)
    assert spread.host == 1.1
    assert StepProfile.from_json(json.loads(json.dumps(spread.to_json()))) == spread
    older = spread.to_json()
    del older["host_spread"]
    assert StepProfile.from_json(older).host_spread == ()
    for bad in ([0.5, 0.5], [2.0, 0.0], [1.0, float("inf")]):
        with pytest.raises(ProfileError, match="host_spread"):
            dataclasses.replace(base, host_spread=tuple(bad))


def test_a_scaled_profile_costs_every_plan_that_many_times_more():
    """``bench-sim`` scales a profile by the machine's drift since it was measured."""
    grid = CostGrid((1, 4), (1, 8), ((0.001, 0.004), (0.002, 0.010)))
    profile = chain_profile(grid, meta={"measured": "2026-12-03"})
    slower = profile.scaled(1.5)
    (name,) = slower.costs
    for rows, steps in [(1, 1), (3, 5), (4, 8), (16, 20)]:
        want = 1.5 * profile.costs[name].cost(rows, steps)
        assert slower.costs[name].cost(rows, steps) == pytest.approx(want)
    assert slower.meta == {"measured": "2026-12-03", "scaled": 1.5}
    assert slower.scaled(2.0).meta["scaled"] == pytest.approx(3.0)
    assert profile.costs[name] == grid, "the original is left as it was"
    assert StepProfile.from_json(slower.to_json()) == slower
    with pytest.raises(ValueError, match="positive"):
        profile.scaled(0.0)


def mutate(path, change):
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.pop("costs"), "costs"),
        (lambda d: d.update(version=99), "version"),
        (lambda d: d["costs"].pop("lstm"), "lstm"),
        (lambda d: d["costs"]["lstm"].update(seconds=[[1.0]]), "costs.lstm: seconds"),
        (lambda d: d["costs"]["lstm"].update(ragged=[[0.0]]), "costs.lstm: ragged"),
        (lambda d: d.update(host=-1), "host"),
        (lambda d: d.update(host_by_load=[[100.0]]), "host_by_load"),
        (lambda d: d.update(host_by_load=[[100.0, 1.0], [50.0, 1.1]]), "host_by_load"),
        (lambda d: d.update(host_spread="wide"), "host_spread"),
        (lambda d: d.update(host_spread=[1.0, 2.0]), "host_spread"),
        (lambda d: d["unfold"].update(family="graph"), "unfold.family"),
        (lambda d: d["unfold"].update(cell="gru"), "unfold"),
        (lambda d: d["cell_types"][0].update(pool="elsewhere"), "pool"),
        (lambda d: d["cell_types"][0].update(max_batch=0), "max_batch"),
    ],
)
def test_a_malformed_profile_names_the_field(tmp_path, change, field):
    path = tmp_path / "p.json"
    chain_profile(flat_grid(0.002)).save(path)
    mutate(path, change)
    with pytest.raises(ProfileError, match=field):
        StepProfile.load(path)


def test_a_file_that_is_not_json_says_so(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{not json")
    with pytest.raises(ProfileError, match="not JSON"):
        StepProfile.load(path)
