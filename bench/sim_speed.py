"""How much faster than real time the simulator runs a minute of traffic at saturation:
issue 14's target is 100 x on this project's CPU.

    .venv/bin/python bench/sim_speed.py --profile docs/bench/profile-chain-cpu-top2.json

For each plan length (32 steps, the server's default, and 1): the profile's saturation
throughput on simulated time (4,000 requests offered at once), then a Poisson trace of
sentence-length requests at exactly that rate for 60 simulated seconds, simulated
``--rounds`` times. It prints the median wall time [range] and simulated seconds over
wall seconds. The time is the scheduler's own Python per plan and row, the same work
the live engine does.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from batchmaker.bench.trace import make_trace
from batchmaker.sim.profile import StepProfile
from batchmaker.sim.simulator import SimRequest, simulate
from scheduler import SchedulerConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", type=Path, required=True, help="a chain model's profile")
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated traffic")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    profile = StepProfile.load(args.profile)
    if profile.unfold.family != "chain":
        raise SystemExit("--profile: a chain model's profile (sentence-length token requests)")
    trace = make_trace(40_000, vocab_size=1000, seed=3)

    def requests(rate: float, n: int) -> list[SimRequest]:
        return [
            SimRequest(float(t), trace.tokens[i]) for i, t in enumerate(trace.offsets[:n] / rate)
        ]

    for steps in (32, 1):
        config = SchedulerConfig(max_steps_per_plan=steps, max_num_live_requests=100_000)
        saturation = simulate(profile, requests(5000.0, 4000), config).summary()["throughput_rps"]
        n = int(saturation * args.seconds)
        if n > len(trace):
            raise SystemExit(f"--seconds: {n} requests, more than the trace's {len(trace)}")
        reqs = requests(saturation, n)
        walls, span = [], 0.0
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            span = simulate(profile, reqs, config).span
            walls.append(time.perf_counter() - t0)
        wall = statistics.median(walls)
        print(
            f"{steps:>2} steps per plan: saturation {saturation:.0f} req/s, {n} requests over "
            f"{span:.1f} simulated s in {wall:.2f} s [{min(walls):.2f}, {max(walls):.2f}]: "
            f"{span / wall:.0f} x real time"
        )


if __name__ == "__main__":
    main()
