"""Step-cost profiles: the grid's interpolation, and the JSON the simulator reads.

A profile is measured once and read by processes that load no model, so what is pinned
is that a cost comes out as the docstring of ``batchmaker/sim/profile.py`` says (exact at
grid points, bilinear between, never falling beyond), and that a malformed file is
refused with its field named.
"""

from __future__ import annotations

import json

import pytest
from sim_factories import chain_profile, flat_grid

from batchmaker.sim.profile import CostGrid, ProfileError, StepProfile


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
