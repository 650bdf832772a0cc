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
import pytest
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


@pytest.mark.parametrize(
    ("profile", "target", "capacity", "most_over"),
    [(CHAIN, 3.0, 35.2, 0.01), (SEQ2SEQ, 4.0, 19.5, 0.025)],
    ids=["chain", "seq2seq"],
)
def test_the_controller_holds_the_target_through_load_steps(
    profile: StepProfile, target: float, capacity: float, most_over: float
) -> None:
    """``capacity``: the fixed configuration's sustainable rate at ``target`` (a bisection
    on steady Poisson load, done once; the fixed run below checks it still holds: on
    time at 100%, late at 150%).

    Chains meet the issue's bound (1% late). A seq2seq request's latency is mostly its
    own decode, which no admission limit shortens, so the controller misses it there by
    a little (docs/slo.md); the test holds it to that, and to being much better than fixed.
    """
    offsets = make_trace(int(sum(PHASES) * capacity * PHASE_S * 1.2), vocab_size=100).offsets
    arrivals = stepped_arrivals(offsets, [f * capacity for f in PHASES], PHASE_S)
    reqs = requests(profile, arrivals)
    fixed = per_phase(simulate(profile, reqs, CONFIG), target)
    held = per_phase(simulate(profile, reqs, CONFIG, slo=SloConfig(target)), target)
    assert fixed[2]["over"] <= 0.02  # at capacity, about on time
    assert fixed[3]["over"] > 0.03  # past it, late
    for f, phase, was in zip(PHASES, held, fixed, strict=True):
        assert phase["over"] <= most_over, (f, phase)
        if f < 1.0:
            assert phase["rejected"] <= 0.05, (f, phase)
    # At capacity it refuses few; at 150% it serves at least the capacity, on time,
    # instead of queueing.
    assert held[2]["rejected"] <= 0.15
    assert held[3]["served_rps"] >= capacity
    assert held[3]["over"] <= 0.5 * fixed[3]["over"]
    if profile is CHAIN:
        assert max(p["over"] for p in held) <= 0.01
        assert held[2]["rejected"] <= 0.01
        assert held[1]["rejected"] == held[5]["rejected"] == 0.0


def test_decisions_are_recorded_and_shorten_plans_under_load() -> None:
    target, capacity = 3.0, 35.2
    offsets = make_trace(3000, vocab_size=100).offsets
    arrivals = stepped_arrivals(offsets, [0.25 * capacity, 1.5 * capacity], PHASE_S)
    res = simulate(CHAIN, requests(CHAIN, arrivals), CONFIG, slo=SloConfig(target))
    light = [d.max_steps_per_plan for t, d in res.slo if t < PHASE_S]
    heavy = [d.max_steps_per_plan for t, d in res.slo if t > PHASE_S + 5]
    # A plan may take 0.3 s. At light load 16 steps of a few rows take 0.15 s (32, 0.3 s,
    # when the fewest are live); at 1.5 x capacity a step of 64 rows takes 34 ms, so
    # plans are 8 steps (16 while the batch is thinner).
    assert min(light) >= 16
    assert statistics.median(heavy) == 8
    assert any(d.changes for _, d in res.slo)
    assert max(d.live_limit for t, d in res.slo if t > PHASE_S + 5) < 1024
