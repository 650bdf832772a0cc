"""The simulator: the real scheduler on simulated time, checked by hand and against the
live device worker.

- Hand-computable cases: a request alone takes the sum of its plans' costs; requests
  that arrive together share plans; a full server rejects at once; replicas run in
  parallel; padded batching waits for its timeout; every family unfolds as the model does.
- Equivalence: the same requests through the real ``DeviceWorker`` thread, with an
  executor that advances a ``ManualClock`` by the profile's cost instead of computing,
  make the same plans, of the same rows, in the same order, at the same times.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sim_factories import (
    balanced_tree,
    chain_profile,
    chains,
    flat_grid,
    seq2seq_profile,
    tree_profile,
)

from batchmaker.runtime.executor import StepResult
from batchmaker.runtime.worker import DeviceWorker
from batchmaker.sim.profile import StepProfile
from batchmaker.sim.simulator import SimRequest, graph_of, requests_from_trace, simulate
from scheduler import ManualClock, SchedRequest, SchedulerConfig, StepPlan, make_scheduler

MS = 0.001


def one_step(**kw: object) -> SchedulerConfig:
    return SchedulerConfig(max_steps_per_plan=1, **kw)  # type: ignore[arg-type]


def test_a_request_alone_takes_the_sum_of_its_steps():
    profile = chain_profile(flat_grid(2 * MS))
    result = simulate(profile, chains([0.5], [10]), one_step())
    assert result.latency == pytest.approx([20 * MS])
    assert result.first_output[0] - 0.5 == pytest.approx(2 * MS)
    assert result.reasons == ["completed"]
    assert result.plans == {"lstm": 10}
    assert result.busy == pytest.approx([20 * MS])


def test_each_plan_costs_the_host_factor_at_its_replicas_recent_load():
    """A host factor of 1 up to 1,000 cell-steps served a second and 2 from 10,000: a
    request alone (one row's step every 2 ms: 500 a second) runs at the grid's cost, and
    a saturating load (64 rows' steps every 2 ms or so: over 10,000 a second) at twice
    it, so it serves half as many requests a second, but for the first fraction of a
    second (its window filling)."""
    base = chain_profile(flat_grid(2 * MS))
    loaded = base.with_host([(1000.0, 1.0), (10000.0, 2.0)])
    lone = chains([0.5], [10])
    assert simulate(loaded, lone, one_step()).latency == pytest.approx([20 * MS])
    # 2,000 requests a second for 6 s, past even the grid's 1,600 (the excess refused).
    crowd = chains([i / 2000 for i in range(12000)], [20] * 12000)
    full = simulate(base, crowd, one_step()).summary()["throughput_rps"]
    slow = simulate(loaded, crowd, one_step()).summary()["throughput_rps"]
    assert slow / full == pytest.approx(0.5, rel=0.05)


def test_each_plan_draws_a_multiplier_from_the_spread_seeded():
    """``host_spread``: each plan costs its charge times a multiplier drawn from it. A
    request alone of ten one-step plans, with multipliers 0.5 and 1.5: its latency is
    ten draws, between 10 and 30 ms, in steps of 2 ms; the same seed draws the same, and
    over many requests the mean stays the charge's (20 ms), so the spread widens the
    tail without moving the host factor. A saturating load serves as many a second."""
    base = chain_profile(flat_grid(2 * MS))
    spread = base.with_host([], [0.5, 1.5])
    lone = chains([0.5], [10])
    (one,) = simulate(spread, lone, one_step(), seed=1).latency
    slow = (one / MS - 10) / 2  # plans that drew 1.5
    assert slow == pytest.approx(round(slow))
    assert 0 <= round(slow) <= 10
    assert simulate(spread, lone, one_step(), seed=1).latency == pytest.approx([one])
    apart = chains([i * 0.1 for i in range(400)], [10] * 400)  # never two at once
    lat = simulate(spread, apart, one_step(), seed=2).latency
    assert len(set(np.round(lat / MS).tolist())) > 5
    assert lat.mean() == pytest.approx(20 * MS, rel=0.03)
    assert np.percentile(lat, 99) > np.percentile(simulate(base, apart, one_step()).latency, 99)
    crowd = chains([i / 2000 for i in range(6000)], [20] * 6000)
    full = simulate(base, crowd, one_step()).summary()["throughput_rps"]
    drawn = simulate(spread, crowd, one_step(), seed=3).summary()["throughput_rps"]
    assert drawn / full == pytest.approx(1.0, rel=0.03)


def test_a_multi_step_plan_costs_what_the_grid_says_for_its_length():
    profile = chain_profile(flat_grid(2 * MS, per_step=0.5 * MS))
    result = simulate(profile, chains([0.0], [10]), SchedulerConfig(max_steps_per_plan=32))
    # One plan of 10 steps: between the grid's 8 (5.5 ms) and 16 (9.5 ms).
    assert result.plans == {"lstm": 1}
    assert result.latency == pytest.approx([6.5 * MS])
    assert result.summary()["steps_per_plan"] == {"lstm": 10.0}


def test_requests_that_arrive_together_share_plans():
    profile = chain_profile(flat_grid(2 * MS))
    result = simulate(profile, chains([0.0, 0.0, 0.0], [4, 4, 6]), one_step())
    assert result.latency == pytest.approx([8 * MS, 8 * MS, 12 * MS])
    s = result.summary()
    assert s["mean_batch"] == {"lstm": pytest.approx(14 / 6)}
    assert s["throughput_rps"] == pytest.approx(3 / (12 * MS))


def test_a_late_request_joins_the_running_batch_at_the_next_step():
    profile = chain_profile(flat_grid(2 * MS))
    result = simulate(profile, chains([0.0, 0.003], [5, 2]), one_step())
    # req1 arrives during step 2 (2-4 ms), joins step 3 (4-6 ms) and ends with step 4.
    assert result.finish == pytest.approx([10 * MS, 8 * MS])
    assert result.latency == pytest.approx([10 * MS, 5 * MS])


def test_a_full_server_rejects_at_once_and_serves_the_rest():
    profile = chain_profile(flat_grid(2 * MS))
    result = simulate(
        profile, chains([0.0, 0.0, 0.001], [3, 3, 3]), one_step(max_num_live_requests=1)
    )
    assert result.reasons == ["completed", "rejected", "rejected"]
    assert result.num_rejected == 2
    assert np.isnan(result.finish[1])
    assert result.summary()["num_completed"] == 1


def test_replicas_run_in_parallel_and_take_the_least_loaded():
    profile = chain_profile(flat_grid(2 * MS), max_batch=1)
    alone = simulate(profile, chains([0.0, 0.0], [5, 5]), one_step())
    two = simulate(profile, chains([0.0, 0.0], [5, 5]), one_step(), replicas=2)
    assert max(alone.latency) == pytest.approx(20 * MS)  # one device, batch 1: in turn
    assert two.latency == pytest.approx([10 * MS, 10 * MS])
    assert two.busy == pytest.approx([10 * MS, 10 * MS])


def test_padded_waits_for_its_timeout_then_pads_to_the_longest():
    profile = chain_profile(flat_grid(2 * MS, per_step=2 * MS))
    config = SchedulerConfig(mode="padded", batch_timeout_s=0.005, max_batch_requests=8)
    result = simulate(profile, chains([0.0, 0.001], [3, 6]), config)
    # The batch forms at 5 ms; one fused plan of 6 steps (12 ms) ends at 17 ms for both.
    assert result.finish == pytest.approx([17 * MS, 17 * MS])


def test_seq2seq_encodes_then_decodes_its_output_length():
    profile = seq2seq_profile(flat_grid(1 * MS), flat_grid(3 * MS))
    request = SimRequest(0.0, np.arange(5, dtype=np.int64), output_length=4)
    result = simulate(profile, [request], SchedulerConfig(max_steps_per_plan=32))
    # One 5-step encoder plan (1 ms: the grid is flat in steps), then 4 decoder steps.
    assert result.plans == {"enc": 1, "dec": 4}
    assert result.latency == pytest.approx([13 * MS])
    assert result.first_output[0] == pytest.approx(4 * MS)
    assert result.reasons == ["length"]


def test_a_tree_runs_level_by_level():
    profile = tree_profile(flat_grid(1 * MS))
    tokens, children = balanced_tree(4)  # 4 leaves, 2 parents, a root: 3 levels
    result = simulate(profile, [SimRequest(0.0, tokens, children=children)])
    assert result.plans == {"tree": 3}
    assert result.summary()["mean_batch"] == {"tree": pytest.approx(7 / 3)}
    assert result.latency == pytest.approx([3 * MS])


def test_a_trace_replays_at_any_rate():
    class Trace:
        def __init__(self) -> None:
            self.offsets = np.array([0.0, 1.0, 3.0])
            self.tokens = [np.array([1, 2]), np.array([3]), np.array([4, 5, 6])]
            self.output_lengths = None
            self.children = None

    requests = requests_from_trace(Trace(), rate=10.0)
    assert [r.arrival for r in requests] == pytest.approx([0.0, 0.1, 0.3])
    assert [len(r.tokens) for r in requests] == [2, 1, 3]


def test_out_of_order_arrivals_are_refused():
    with pytest.raises(ValueError, match="order of arrival"):
        simulate(chain_profile(flat_grid(MS)), chains([1.0, 0.0], [1, 1]))


# ---- the same plans as the live device worker ---------------------------------------------


class CostExecutor:
    """The executor protocol with no device: each plan moves the clock by its cost, and
    requests whose arrival has come are submitted, as they would reach a busy worker."""

    device = "sim"

    def __init__(self, profile: StepProfile, clock: ManualClock, pending: list[SchedRequest]):
        self.profile = profile
        self.clock = clock
        self.pending = pending
        self.worker: DeviceWorker | None = None
        self.plans: list[tuple[float, StepPlan]] = []

    def execute(self, plan, on_launch=None):
        if on_launch is not None:
            on_launch()
        self.plans.append((self.clock.now(), plan))
        self.clock.advance(self.profile.cost(plan))
        assert self.worker is not None
        while self.pending and self.pending[0].arrival <= self.clock.now():
            self.worker.submit(self.pending.pop(0))
        tokens = np.full(plan.batch_size, -1, dtype=np.int64)
        return StepResult(outputs=None, tokens=tokens)

    def load_cells(self, cells):  # pragma: no cover - not used here
        raise NotImplementedError

    def remove_cells(self, cells):  # pragma: no cover - not used here
        raise NotImplementedError


def live_plans(profile, requests, config):
    """Run ``requests`` through a real ``DeviceWorker`` thread; arrivals after the first
    batch must land while the device is busy (the test's traffic is dense)."""
    clock = ManualClock()
    sched = make_scheduler(config, profile.cell_types, profile.pools, clock)
    sreqs = [
        SchedRequest(str(i), graph_of(profile.unfold, r), arrival=r.arrival, tag=i)
        for i, r in enumerate(requests)
    ]
    now = [s for s in sreqs if s.arrival <= 0.0]
    later = [s for s in sreqs if s.arrival > 0.0]
    executor = CostExecutor(profile, clock, later)
    done = threading.Event()
    ended: set[str] = set()

    def deliver(outcome, error):
        assert error is None
        ended.update(r.request_id for r in outcome.finished)
        if len(ended) == len(sreqs):
            done.set()

    worker = DeviceWorker(sched, executor, deliver)  # type: ignore[arg-type]
    executor.worker = worker
    for s in now:
        worker.submit(s)
    worker.start()
    try:
        assert done.wait(10), f"ended {len(ended)} of {len(sreqs)}; left {len(later)}"
    finally:
        worker.stop()
        worker.join(5)
    assert not later, "the device went idle before every request arrived"
    return [
        (
            t,
            plan.cell_type,
            tuple(
                (int(r.tag), node, 1 if plan.steps is None else int(plan.steps[k]))
                for k, (r, node) in enumerate(zip(plan.requests, plan.nodes, strict=True))
                if r is not None
            ),
        )
        for t, plan in executor.plans
    ]


def sim_plans(profile, requests, config):
    result = simulate(profile, requests, config, record=True)
    return [(r.start, r.cell_type, tuple(x for x in r.rows if x[0] >= 0)) for r in result.records]


def dense(rng, n):
    """Four requests at 0, then one every 2 ms: closer than any plan (10 ms or more), so
    the device never idles before the last arrival."""
    return np.concatenate([[0.0] * 4, 0.0005 + 0.002 * np.arange(n - 4)])


@pytest.mark.parametrize("cap", [1, 32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_simulator_makes_the_live_workers_plans_for_chains(cap, seed):
    profile = chain_profile(flat_grid(10 * MS, per_step=1 * MS), max_batch=64)
    rng = np.random.default_rng(seed)
    requests = chains(dense(rng, 24), rng.integers(1, 12, 24).tolist())
    config = SchedulerConfig(max_steps_per_plan=cap)
    live = live_plans(profile, requests, config)
    sim = sim_plans(profile, requests, config)
    assert [p[1:] for p in sim] == [p[1:] for p in live]
    assert [p[0] for p in sim] == pytest.approx([p[0] for p in live])


@pytest.mark.parametrize("mode", ["cellular", "padded", "none"])
def test_the_simulator_makes_the_live_workers_plans_for_seq2seq(mode):
    profile = seq2seq_profile(flat_grid(10 * MS, per_step=1 * MS), flat_grid(15 * MS))
    rng = np.random.default_rng(7)
    arrivals = dense(rng, 12)
    requests = [
        SimRequest(float(t), np.arange(int(n), dtype=np.int64), output_length=int(m))
        for t, n, m in zip(arrivals, rng.integers(1, 9, 12), rng.integers(1, 9, 12), strict=True)
    ]
    config = SchedulerConfig(mode=mode, batch_timeout_s=0.0)  # type: ignore[arg-type]
    live = live_plans(profile, requests, config)
    sim = sim_plans(profile, requests, config)
    assert [p[1:] for p in sim] == [p[1:] for p in live]
    assert [p[0] for p in sim] == pytest.approx([p[0] for p in live])


def test_a_scheduler_that_stalls_is_an_error_not_a_hang(monkeypatch):
    """A policy that keeps asking to run now and plans nothing: the live worker would wait
    for news; the simulator has none to wait for, so it says so."""
    from scheduler.cellular import CellularScheduler

    monkeypatch.setattr(CellularScheduler, "_schedule", lambda self, now: None)
    monkeypatch.setattr(CellularScheduler, "next_wakeup", lambda self: self.clock.now())
    with pytest.raises(RuntimeError, match="no progress"):
        simulate(chain_profile(flat_grid(MS)), chains([0.0], [3]))
