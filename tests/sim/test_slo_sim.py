"""The SLO controller in the simulator: load steps up through 25%, 50%, 100% and 150% of
capacity and back down, the same requests for a fixed configuration and for the
controller (the shape of the live benchmark, ``batchmaker bench-slo``, on simulated time).

Capacity is the fixed configuration's sustainable rate: the highest steady Poisson rate
whose p99 meets the target. The fixed configuration then misses the target at 150%,
which the test shows first, so the controller's figures cannot pass by a load too light
to matter.
"""

from __future__ import annotations

import statistics

import numpy as np
from sim_factories import chain_profile, seq2seq_profile

from batchmaker.bench.trace import make_trace, stepped_arrivals
from batchmaker.sim.profile import CostGrid, StepProfile
from batchmaker.sim.simulator import SimRequest, SimResult, simulate
from scheduler import SchedulerConfig, SloConfig

PHASES = (0.25, 0.5, 1.0, 1.5, 1.0, 0.5, 0.25)
PHASE_S = 20.0
CONFIG = SchedulerConfig(max_num_live_requests=1024, max_steps_per_plan=32)


def grid(fixed: float, per_row: float) -> CostGrid:
    """A plan costs its steps times (a fixed cost plus one per row); several steps in one
    plan save a fifth of the fixed cost, as a fused kernel does."""
    rows = (1, 2, 4, 8, 16, 32, 64)
    steps = (1, 2, 4, 8, 16, 32)
    return CostGrid(
        rows,
        steps,
        tuple(
            tuple(k * ((fixed if k == 1 else 0.8 * fixed) + per_row * r) for k in steps)
            for r in rows
        ),
    )


def requests(profile: StepProfile, arrivals: np.ndarray, seed: int = 1) -> list[SimRequest]:
    s2s = profile.unfold.family == "seq2seq"
    trace = make_trace(
        len(arrivals), vocab_size=100, seed=seed, max_output_len=200 if s2s else None
    )
    out = trace.output_lengths
    return [
        SimRequest(float(t), trace.tokens[i], 0 if out is None else int(out[i]))
        for i, t in enumerate(arrivals)
    ]


def per_phase(res: SimResult, target: float) -> list[dict[str, float]]:
    latency = res.finish - res.arrival
    rejected = np.array([r == "rejected" for r in res.reasons])
    out = []
    for i in range(len(PHASES)):
        m = (res.arrival >= i * PHASE_S) & (res.arrival < (i + 1) * PHASE_S)
        admitted = latency[m & ~rejected]
        out.append(
            {
                "over": float(np.mean(admitted > target)),
                "rejected": float(rejected[m].mean()),
                "served_rps": len(admitted) / PHASE_S,
            }
        )
    return out


CHAIN = chain_profile(grid(1e-2, 4e-4))
SEQ2SEQ = seq2seq_profile(grid(5e-3, 4e-4), grid(6e-3, 4.8e-4))


def stepped_runs(
    profile: StepProfile, target: float, capacity: float
) -> tuple[list[dict[str, float]], list[dict[str, float]], SimResult]:
    """Fixed limits and the controller on the same stepped load: per phase, each."""
    offsets = make_trace(int(sum(PHASES) * capacity * PHASE_S * 1.2), vocab_size=100).offsets
    arrivals = stepped_arrivals(offsets, [f * capacity for f in PHASES], PHASE_S)
    reqs = requests(profile, arrivals)
    fixed = per_phase(simulate(profile, reqs, CONFIG), target)
    res = simulate(profile, reqs, CONFIG, slo=SloConfig(target))
    return fixed, per_phase(res, target), res


def test_the_controller_holds_a_chain_within_the_target_through_load_steps() -> None:
    """Capacity 65 req/s: the fixed configuration's sustainable rate at 3 s (a
    bisection on steady Poisson load, done once; the fixed run checks it still holds:
    on time at 100%, late at 150%)."""
    fixed, held, _ = stepped_runs(CHAIN, 3.0, 65.0)
    assert fixed[2]["over"] <= 0.02
    assert fixed[3]["over"] > 0.03
    for f, phase in zip(PHASES, held, strict=True):
        assert phase["over"] <= 0.01, (f, phase)  # issue 14's bound, at every load
        if f <= 0.5:
            assert phase["rejected"] <= 0.01, (f, phase)
        elif f == 1.0:
            # Capacity is the knee (fixed limits are at the target's edge there): the
            # controller refuses some, 6% here, to keep its aim below the target.
            assert phase["rejected"] <= 0.1, (f, phase)
    # At 150% it serves at least the capacity, on time, instead of queueing.
    assert held[3]["served_rps"] >= 65.0
    assert held[1]["rejected"] == held[5]["rejected"] == 0.0


def test_seq2seq_is_held_better_than_fixed_limits_but_not_within_the_bound() -> None:
    """A seq2seq request's latency is mostly its own decode, which no admission limit
    shortens: the controller misses the 1% bound here (docs/slo.md, "Limits"). What it
    must still do: be late no more often than fixed limits past capacity, and serve at
    least the capacity, refusing little."""
    fixed, held, _ = stepped_runs(SEQ2SEQ, 4.0, 19.5)
    assert fixed[3]["over"] > 0.03
    late = sum(p["over"] * p["served_rps"] for p in held[2:5])
    was = sum(p["over"] * p["served_rps"] for p in fixed[2:5])
    assert late <= was
    assert max(p["over"] for p in held) <= 0.035
    assert held[3]["served_rps"] >= 19.5
    assert held[0]["rejected"] <= 0.05


def plan_grid(per_plan: float, per_step: float, per_row: float) -> CostGrid:
    """A plan costs a fixed part (the host's work, the kernel's set-up) plus its steps times
    a cost per step and per row, the shape the CPU step loop measures."""
    rows = (1, 2, 4, 8, 16, 32, 64)
    steps = (1, 2, 4, 8, 16, 32)
    return CostGrid(
        rows,
        steps,
        tuple(tuple(per_plan + k * (per_step + per_row * r) for k in steps) for r in rows),
    )


def test_decisions_are_recorded_and_shorten_plans_under_load() -> None:
    """The plan length the longest requests (32 steps, the cap) finish soonest with is
    about sqrt(32 x fixed / per step): with a fixed 20 ms a plan, 16 steps at light load
    (a step of a few rows costs 3-4 ms), 8 at 1.5 x capacity (64 rows: 28 ms a step)."""
    target, capacity = 3.0, 65.0
    chain = chain_profile(plan_grid(0.02, 0.002, 4e-4))
    offsets = make_trace(3000, vocab_size=100).offsets
    arrivals = stepped_arrivals(offsets, [0.25 * capacity, 1.5 * capacity], PHASE_S)
    res = simulate(chain, requests(chain, arrivals), CONFIG, slo=SloConfig(target))
    light = [d.max_steps_per_plan for t, d in res.slo if t < PHASE_S]
    heavy = [d.max_steps_per_plan for t, d in res.slo if t > PHASE_S + 5]
    assert min(light) >= 16
    assert statistics.median(heavy) == 8
    assert any(d.changes for _, d in res.slo)
    assert min(d.live_limit for t, d in res.slo if t > PHASE_S + 5) < 1024
