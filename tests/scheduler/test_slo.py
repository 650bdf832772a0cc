"""The SLO controller on scripted latencies and times: when it cuts the admission limit,
by how much, when it raises it again, and how long it lets a plan run.

No engine and no clock: each test hands the controller the admissions, completions and
times a scripted load would produce, and checks the knobs it returns.
"""

from __future__ import annotations

import math

import pytest

from scheduler import SloConfig, SloController

TARGET = 1.0
"""Seconds: round numbers, so every threshold below is easy to check by hand
(aim 0.8 s, raise below 0.6 s)."""


def controller(live_limit: int = 100, steps: int = 32, **config: float) -> SloController:
    return SloController(
        SloConfig(TARGET, **config), live_limit=live_limit, max_steps_per_plan=steps
    )


def complete(c: SloController, latencies: list[float], *, at: float) -> None:
    """Requests that finish at ``at`` having taken ``latencies``."""
    for lat in latencies:
        c.finished(at - lat, at)


def test_under_the_target_and_not_binding_nothing_changes() -> None:
    c = controller()
    for live in range(1, 31):
        c.admitted(live)
    # 300 completions in the last 2 s at 0.2 s each: 150/s, so Little's 30 live.
    complete(c, [0.2] * 300, at=5.0)
    d = c.update(5.0, live=30)
    assert (d.live_limit, d.max_steps_per_plan, d.changes) == (100, 32, ())
    assert d.p99_s == pytest.approx(0.2)
    assert d.samples == 300
    # Well under the target but never full: no reason to raise a limit nobody reaches.
    c2 = controller(live_limit=50)
    c2.max_live_limit = 100
    complete(c2, [0.1] * 50, at=5.0)
    assert c2.update(5.0, live=10).live_limit == 50


def test_over_the_aim_it_cuts_from_the_live_count_in_proportion() -> None:
    c = controller(live_limit=1024)
    c.admitted(40)
    # p99 1.0 s against an aim of 0.8: the limit goes from the 40 live (not from the
    # configured 1024, which never bound) by 0.8 / 1.0. (200 completions in the last 2 s:
    # Little's law allows 100/s x 0.8 s x 0.75 / 1.0 = 60, more.)
    complete(c, [0.5] * 100 + [1.0] * 100, at=10.0)
    d = c.update(10.0, live=40)
    assert d.live_limit == 32
    assert c.live_limit == 32
    assert len(d.changes) == 1
    assert "live limit 1024 -> 32" in d.changes[0]
    # The cut is at most in half, however far over.
    c = controller(live_limit=1024)
    complete(c, [5.0] * 30, at=10.0)
    assert c.update(10.0, live=40).live_limit == 20


def test_a_limit_is_judged_only_by_the_requests_admitted_under_it() -> None:
    c = controller()
    complete(c, [1.0] * 200, at=10.0)
    assert c.update(10.0, live=40).live_limit == 32
    # The slow requests admitted before the cut are still in the window, but they say
    # nothing about the new limit: no second cut.
    complete(c, [1.2] * 30, at=10.5)  # admitted at 9.3, before the cut
    d = c.update(10.5, live=32)
    assert d.live_limit == 32
    assert d.changes == ()
    # Requests admitted after it, over the aim but within the target, with the limit not
    # reached: they break no promise, and refusing others for them would start refusals.
    # No cut (a p99 of 30 latencies is their largest, which noise alone puts there).
    c.update(11.0, live=20)
    complete(c, [0.9] * 30, at=11.9)  # admitted at 11.0
    d = c.update(11.9, live=20)
    assert (d.live_limit, d.changes) == (32, ())
    assert d.p99_s == pytest.approx(0.9)
    # Reached, refusing few (1 of 21: bursts), the same: nothing to cut for.
    for live in range(13, 33):
        c.admitted(live)
    c.rejected()
    assert c.update(12.15, live=32).live_limit == 32
    # Refusing many (the limit is what holds the load back), admission steers to the aim.
    for _ in range(10):
        c.rejected()
    assert c.update(12.4, live=32).live_limit < 32


def test_a_cut_on_completions_needs_more_at_the_target_than_a_held_p99_shows() -> None:
    """Without a crowd ahead, a cut needs more latencies at or over the target than 1% of
    them would be by chance (``cut_alpha``): of 100, five; of 20, three."""
    c = controller()
    complete(c, [0.1] * 96 + [1.5] * 4, at=10.0)
    d = c.update(10.0, live=5)
    assert (d.live_limit, d.changes) == (100, ())
    assert d.p99_s > TARGET  # the sample p99 is over the target, yet 4 of 100 is chance
    complete(c, [1.5], at=10.0)
    assert c.update(10.0, live=5).live_limit < 100  # 5 of 101 is not
    c = controller()
    complete(c, [0.1] * 18 + [1.0] * 2, at=10.0)
    assert c.update(10.0, live=1).live_limit == 100
    complete(c, [1.0], at=10.0)
    assert c.update(10.0, live=1).live_limit < 100


def test_a_late_live_request_cuts_before_anything_completes() -> None:
    """A step up in load shows first as requests that have been live too long."""
    c = controller()
    c.admitted(60)
    # Nothing has completed; one request admitted at t=0 is live at t=1.5, past the target:
    # its latency will be at least 1.5 s.
    d = c.update(1.5, live_arrivals=[0.0] + [1.4] * 59)
    assert d.live_limit == 30  # at most half of the 60 live
    assert d.samples == 1
    # A request past the aim but not yet the target, alone, is not trusted.
    c = controller()
    assert c.update(1.5, live_arrivals=[0.6], live=60).live_limit == 100


def test_a_step_up_in_load_shows_in_the_live_count_before_the_p99() -> None:
    """Little's law: 40 live for the last 2 s, draining at 50/s, is 0.8 s each on average,
    and a p99 at 4/3 of the mean is 1.07 s ahead, though what completed so far took 0.5 s."""
    c = controller(live_limit=1024)
    for t in (8.0, 8.5, 9.0, 9.5):
        assert c.update(t, live=40).changes == ()  # 40 live throughout, nothing completed
    complete(c, [0.25] * 50 + [0.5] * 50, at=10.0)
    d = c.update(10.0, live=40)
    assert d.p99_s == pytest.approx(0.5)
    # No costs known: by the ratio (0.8 / 1.07 of 40) and Little's (50/s x 0.8 s x
    # 0.375 / 0.5): both 30.
    assert d.live_limit == 30
    assert "1067 ms ahead with 40 live at 50/s" in d.changes[0]
    # Without the crowd (Little's 18.75 live over the 2 s), nothing is ahead: no cut.
    c = controller(live_limit=1024)
    for t in (8.0, 8.5, 9.0, 9.5):
        c.update(t, live=19)
    complete(c, [0.25] * 50 + [0.5] * 50, at=10.0)
    assert c.update(10.0, live=19).changes == ()


def test_with_step_costs_it_cuts_to_the_live_count_predicted_to_meet_the_aim() -> None:
    c = controller()
    c.admitted(40)
    complete(c, [1.0] * 200, at=10.0)  # 100/s at 1 s: served at 40 live (all there were)
    # A step takes 10 ms + 1 ms a live request: 50 ms at 40. The aim (0.8 s) needs steps
    # of 40 ms: 30 live on average, so a limit of 30 + 2 x sqrt(30) for the bursts.
    d = c.update(10.0, live=40, step_cost=lambda n: 0.01 + 0.001 * n)
    assert d.live_limit == 30 + 11
    assert "by step costs, from 40 live" in d.changes[0]
    # In a crowd the device is saturated and latency grows with the live count, not the
    # step time: Little's law, not the costs. 100 live for the last 2 s; 100/s completing
    # at 0.4 s is Little's 40: a crowd of 2.5, so 1.0 s ahead. At the aim (0.8 s, the
    # p99 equal to the mean here) the device serves 100/s x 0.8 s = 80 live.
    c = controller(live_limit=1024)
    for t in (8.0, 8.5, 9.0, 9.5):
        c.update(t, live=100)
    complete(c, [0.4] * 200, at=10.0)
    d = c.update(10.0, live=100, step_cost=lambda n: 0.01 + 0.001 * n)
    assert d.live_limit == 80
    assert "by Little's law, 100/s completing" in d.changes[0]
    assert "1000 ms ahead with 100 live" in d.changes[0]


def test_when_the_latency_is_the_requests_own_length_it_does_not_cut() -> None:
    """Steps cost about the same at any batch: a p99 over the aim comes from long requests,
    and refusing others would not shorten them."""
    c = controller()
    complete(c, [1.0] * 200, at=10.0)
    flat = {"step_cost": lambda n: 0.05 + 0.0001 * n}
    d = c.update(10.0, live=40, **flat)
    assert d.live_limit == 100
    assert len(d.changes) == 1
    assert "kept at 100" in d.changes[0]
    assert "out of reach by admission" in c.out_of_reach
    # Said once, not at every update.
    complete(c, [1.0] * 200, at=10.5)
    assert c.update(10.5, live=40, **flat).changes == ()
    # Back under the aim: the note clears.
    complete(c, [0.1] * 2000, at=20.0)
    c.update(20.0, live=40, **flat)
    assert c.out_of_reach == ""


def test_fewer_samples_than_the_minimum_decide_nothing() -> None:
    c = controller(min_samples=20)
    complete(c, [3.0] * 19, at=10.0)
    d = c.update(10.0, live=50)
    assert d.live_limit == 100
    assert d.p99_s > TARGET  # measured, reported, not acted on


def test_little_s_law_cuts_to_what_the_completion_rate_serves_within_the_aim() -> None:
    c = controller(live_limit=1024)
    c.admitted(100)
    # 40 completions in the last 2 s (20/s), mean 1.0 s, p99 1.0, and 100 live: a crowd
    # of 5. At the aim (0.8 s) the device serves 20/s x 0.8 s = 16 live; the cut is
    # bounded at a quarter of the 100 live.
    complete(c, [1.0] * 40, at=10.0)
    assert c.update(10.0, live=100).live_limit == 25
    c = controller(live_limit=1024)
    c.admitted(20)
    complete(c, [1.0] * 40, at=10.0)
    # 20 live: Little's 16 is within the half bound (10) and under the ratio's 16.
    assert c.update(10.0, live=20).live_limit == 16


def test_it_raises_a_binding_limit_only_once_the_target_has_passed_since_the_change() -> None:
    c = controller()
    complete(c, [1.0] * 200, at=10.0)
    assert c.update(10.0, live=40).live_limit == 32
    # Fast requests admitted after the cut, and the limit binds (rejections), but the
    # longest requests admitted under it may not have finished yet: wait a target.
    c.admitted(32)
    c.rejected()
    complete(c, [0.1] * 30, at=10.5)
    assert c.update(10.5, live=32).live_limit == 32
    c.rejected()
    complete(c, [0.2] * 30, at=11.0)
    d = c.update(11.0, live=32)
    assert d.live_limit == 36  # + 10%, rounded up
    assert "live limit 32 -> 36" in d.changes[0]
    assert "1 rejected" in d.changes[0]


def _cut_to_32_then_serve(refused: int, latency: float) -> SloController:
    """A limit cut to 32 at t=10, then 1.5 s of requests under it: 100 admitted (the limit
    reached once), ``refused`` refused, and 30 completed in ``latency``."""
    c = controller()
    complete(c, [1.0] * 200, at=10.0)
    assert c.update(10.0, live=40).live_limit == 32
    for _ in range(99):
        c.admitted(20)
    c.admitted(32)
    for _ in range(refused):
        c.rejected()
    complete(c, [latency] * 30, at=11.5)
    return c


def test_a_binding_limit_that_refused_few_is_raised_from_under_the_aim() -> None:
    """Bursts of a load that mostly fits: 2 refused of 102 in the last 2 s, p99 0.7 s, over
    ``raise_below`` (0.6 s) but under the aim (0.8 s): a tenth more. After an overload
    or a burst, a limit raised only under ``raise_below`` kept refusing 3-5% of a half load
    whose p99 sat in that band."""
    d = _cut_to_32_then_serve(2, 0.7).update(11.5, live=20)
    assert d.live_limit == 36
    assert "under 800 ms" in d.changes[0]
    assert "2.0% over the last 2 s" in d.changes[0]
    # Refusing many (a load the limit is holding back), the same p99 keeps it...
    d = _cut_to_32_then_serve(20, 0.7).update(11.5, live=20)
    assert (d.live_limit, d.changes) == (32, ())
    # ...and well under the target, it goes up by a tenth only, whatever the step costs
    # predict: they do not see the queue an overload keeps at the limit.
    c = _cut_to_32_then_serve(20, 0.3)
    assert c.update(11.5, live=20, step_cost=lambda n: 0.01).live_limit == 36
    c = _cut_to_32_then_serve(2, 0.3)
    assert c.update(11.5, live=20, step_cost=lambda n: 0.01).live_limit == 48  # by half


def test_a_limit_that_refused_many_holds_the_live_count_with_no_room_for_bursts() -> None:
    """The step-cost fit leaves room for a steady load's bursts above its mean (two
    standard deviations); a limit that refuses many holds the live count at itself, and
    that room only kept it over the aim at 150% of capacity in the simulator."""
    # 10 ms + 2 ms a live request: 90 ms at 40. A p99 of 1.6 s at the aim (0.8 s) needs
    # steps of 45 ms: 17 live, and 17 + 2 x sqrt(17) for the bursts; the cut is at most
    # by half (to 20).
    costs = {"step_cost": lambda n: 0.01 + 0.002 * n}
    for refused, want in ((0, 17 + 9), (50, 20)):
        c = controller(live_limit=40)
        c.admitted(40)
        for _ in range(refused):
            c.rejected()
        complete(c, [1.6] * 200, at=10.0)
        assert c.update(10.0, live=40, **costs).live_limit == want, refused


def test_it_never_raises_past_the_configured_limit_nor_cuts_below_one() -> None:
    c = controller(live_limit=10)
    c.live_limit = 10
    c.admitted(10)
    c.rejected()
    complete(c, [0.1] * 30, at=5.0)
    assert c.update(5.0, live=10).live_limit == 10
    c = controller(live_limit=2)
    complete(c, [10.0] * 30, at=20.0)
    assert c.update(20.0, live=1).live_limit == 1
    complete(c, [10.0] * 30, at=40.0)
    assert c.update(40.0, live=1).live_limit == 1


def test_old_completions_leave_the_window() -> None:
    c = controller(window_s=10.0)
    complete(c, [3.0] * 30, at=5.0)  # admitted at 2.0
    d = c.update(20.0, live=5)
    assert math.isnan(d.p99_s)
    assert d.samples == 0
    assert d.live_limit == 100


def told_runs(c: SloController, run: int, *, at: float, n: int = 50) -> None:
    """``n`` quick completions at ``at`` whose longest run was ``run`` steps."""
    for _ in range(n):
        c.finished(at - 0.1, at, run)


def test_plan_length_is_the_one_the_longest_requests_finish_soonest_with() -> None:
    """A request of S steps waits for the plan in progress, then runs S / K plans:
    ``C(K) * (1 + ceil(S / K))``. With a plan's fixed cost, long plans win; with none,
    every step costs the same in any plan, and only the wait grows with K."""
    c = controller(steps=32)
    told_runs(c, 64, at=1.0)  # S = 64, capped at 32
    fixed_cost = lambda k: 0.02 + 0.001 * k  # noqa: E731
    # 32 steps: 52 ms x (1 + 1) = 104 ms, the least of all: kept.
    assert c.update(1.0, live=4, plan_cost=fixed_cost).changes == ()
    d = c.update(2.0, live=4, plan_cost=lambda k: 0.01 * k)
    # 1 step: 10 ms x 33 = 330 ms, against 320 ms x 2 = 640 ms at 32.
    assert d.max_steps_per_plan == 1
    assert d.changes == (
        "steps per plan 32 -> 1: a request of 32 steps (the p99 of the runs) predicted "
        "330 ms, against 640 ms at 32 steps",
    )
    # And back, once the fixed cost makes long plans cheaper again.
    assert c.update(3.0, live=4, plan_cost=fixed_cost).max_steps_per_plan == 32


def test_plan_length_candidates_stop_at_the_longest_run() -> None:
    """Past the p99 run every cap is the same to the requests: the candidates are the
    powers of two below it and the run itself (10 here, with a cap of 32)."""
    c = controller(steps=32)
    told_runs(c, 10, at=1.0)
    asked: list[int] = []

    def cost(k: int) -> float:
        asked.append(k)
        return 0.01 * k

    d = c.update(1.0, live=4, plan_cost=cost)
    assert sorted(set(asked)) == [1, 2, 4, 8, 10]
    assert d.max_steps_per_plan == 1  # 110 ms, against 200 ms at 10


def test_plan_length_changes_only_for_a_clear_gain() -> None:
    c = controller(steps=32)
    told_runs(c, 32, at=1.0)
    costs = {1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0, 16: 0.0633, 32: 0.1}
    # 16 steps: 63.3 ms x 3 = 190 ms, 5% under 200 ms at 32: within the noise, kept.
    assert c.update(1.0, live=4, plan_cost=costs.__getitem__).changes == ()
    costs[16] = 0.059  # 177 ms: more than 10% under
    assert c.update(2.0, live=4, plan_cost=costs.__getitem__).max_steps_per_plan == 16


def test_plan_length_is_judged_on_measured_costs_only() -> None:
    c = controller(steps=32)
    told_runs(c, 32, at=1.0)
    linear = lambda k: 0.01 * k  # noqa: E731 - favours one step
    # The current length's cost not measured yet (None): kept, whatever the others say.
    assert c.update(1.0, live=4, plan_cost=lambda k: None if k == 32 else linear(k)).changes == ()
    # Lengths not measured are not candidates: only 32 and 16 are known here.
    d = c.update(2.0, live=4, plan_cost=lambda k: linear(k) if k >= 16 else None)
    assert d.max_steps_per_plan == 16  # 160 ms x 3 = 480 ms, against 640 ms at 32
    # Without runs (a caller that does not say them), the length is left alone.
    c2 = controller(steps=32)
    complete(c2, [0.1] * 50, at=1.0)
    assert c2.update(1.0, live=4, plan_cost=linear).max_steps_per_plan == 32


def test_a_live_count_sampled_at_its_peaks_is_not_a_crowd() -> None:
    """Little's law holds (50/s for 0.5 s each: 25 live), but the four samples a second
    of the live count caught a peak of 50: sampled, that reads a crowd of 2 and the p99
    of 0.5 s as 1.0 s ahead, over the aim; the time each request spent live reads 25."""

    def steady(c: SloController) -> None:
        for i in range(100):  # completions ending evenly over the last 2 s
            end = 8.0 + 2.0 * (i + 0.5) / 100
            c.finished(end - 0.5, end)

    live_arrivals = [9.5 + 0.5 * (i + 0.5) / 25 for i in range(25)]
    c = controller(live_limit=1024)
    steady(c)
    d = c.update(10.0, live=50, live_arrivals=live_arrivals)
    assert (d.live_limit, d.changes) == (1024, ())
    # Told only the sampled count, the controller sees the crowd (the case above, before
    # it was told the live requests' own times).
    c = controller(live_limit=1024)
    steady(c)
    assert c.update(10.0, live=50).live_limit < 50


def test_counts_for_the_metrics() -> None:
    c = controller()
    complete(c, [0.5, 1.5, 2.0], at=3.0)
    c.rejected()
    assert (c.num_finished, c.num_over, c.num_rejected) == (3, 2, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p99_s": 0.0}, "positive number"),
        ({"p99_s": float("nan")}, "positive number"),
        ({"p99_s": 1.0, "window_s": 0.0}, "window"),
        ({"p99_s": 1.0, "aim": 0.5, "raise_below": 0.6}, "raise_below < aim"),
        ({"p99_s": 1.0, "plan_margin": 1.0}, "plan_margin"),
        ({"p99_s": 1.0, "min_samples": 0}, "min_samples"),
        ({"p99_s": 1.0, "few_refused": 1.0}, "few_refused"),
        ({"p99_s": 1.0, "cut_alpha": 0.0}, "cut_alpha"),
    ],
)
def test_a_bad_config_is_refused_naming_the_field(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SloConfig(**kwargs)  # type: ignore[arg-type]


def test_reset_forgets_the_past_and_restores_the_configured_limits() -> None:
    c = controller(live_limit=64, steps=32)
    complete(c, [5.0] * 40, at=10.0)
    c.rejected()
    told_runs(c, 32, at=10.0)
    c.update(10.0, live=60, plan_cost=lambda k: 0.05 * k)
    assert (c.live_limit, c.max_steps_per_plan) == (30, 1)
    c.reset(20.0)
    assert (c.live_limit, c.max_steps_per_plan) == (64, 32)
    assert (c.num_finished, c.num_over, c.num_rejected, c.num_changes) == (0, 0, 0, 0)
    assert math.isnan(c.update(20.5, live=1).p99_s)


def test_no_look_ahead_from_a_rate_over_time_not_yet_served() -> None:
    """Half a second after the start, 100 completions are 200/s, not 50/s over the 2 s
    span: read as 50/s they would make 60 live look like a crowd of 4.8 and cut at once."""
    c = controller(live_limit=1024)
    complete(c, [0.25] * 100, at=0.5)
    d = c.update(0.5, live=60)
    assert d.live_limit == 1024
    assert d.changes == ()
    # Two seconds in, the same counts over the whole span are a real crowd: 60 live
    # against Little's 50/s x 0.25 s = 12.5, so 1.2 s ahead.
    c = controller(live_limit=1024)
    for t in (0.5, 1.0, 1.5):
        c.update(t, live=60)
    complete(c, [0.25] * 100, at=2.0)
    assert c.update(2.0, live=60).live_limit < 1024
