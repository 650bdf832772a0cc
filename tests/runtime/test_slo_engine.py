"""The engine under its SLO controller, on the fake executor and a manual clock: a scripted
load whose latencies the test sets by moving the clock.

Slow requests make the controller cut the admission limit: the next request gets
RESOURCE_EXHAUSTED at once, naming the SLO, while the admitted ones stream exactly what
they stream alone. Fast requests against a binding limit raise it again. The plan length
it allows reaches the device's scheduler. The engine's own timer acts only when the
clock has moved an interval, so it never races a test that drives the clock itself.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fakes import FakeChainModel
from gate import GUARD_S, collect
from rig import advance, assert_matches_alone, engine_config, serving

from batchmaker import AdmissionRejectedError, Code, InferRequest
from batchmaker.config import EngineConfig
from scheduler import CellularScheduler

LM = FakeChainModel("lm", runs=True)
TARGET = 1.0
INPUTS = np.random.default_rng(5).integers(0, 50, (40, 3)).tolist()


def slo_config(**overrides: object) -> EngineConfig:
    return engine_config("cellular", slo_p99_s=TARGET, max_num_live_requests=16, **overrides)


def test_slow_requests_cut_admission_and_the_admitted_still_stream_correctly() -> None:
    async def main() -> None:
        async with serving(slo_config(), [LM], gated=True) as (engine, gate):
            assert engine.slo is not None
            held = [engine.submit(InferRequest("lm", x)) for x in INPUTS[:8]]
            # The gate holds them while 2 s pass: each is live past the 1 s target, a
            # violation known before any completes.
            advance(engine, 2.0)
            engine.control_slo()
            # 8 live, p99 2 s against an aim of 0.8 s: cut as far as it goes, to half.
            assert engine.slo.live_limit == 4
            with pytest.raises(AdmissionRejectedError, match=r"SLO controller") as err:
                engine.submit(InferRequest("lm", INPUTS[8]))
            assert err.value.code is Code.RESOURCE_EXHAUSTED
            assert engine.slo.num_rejected == 1
            gate.open()
            for x, stream in zip(INPUTS, held, strict=False):
                assert_matches_alone(LM, x, await collect(stream))
            # They completed 2 s after admission: over the target, and counted.
            assert (engine.slo.num_finished, engine.slo.num_over) == (8, 8)
            # The server keeps serving under the new limit.
            assert_matches_alone(
                LM, INPUTS[9], await collect(engine.submit(InferRequest("lm", INPUTS[9])))
            )

    asyncio.run(main())


def test_fast_requests_against_a_binding_limit_raise_it_again() -> None:
    async def main() -> None:
        async with serving(slo_config(), [LM], gated=True) as (engine, gate):
            assert engine.slo is not None
            slow = [engine.submit(InferRequest("lm", x)) for x in INPUTS[:8]]
            advance(engine, 2.0)
            engine.control_slo()
            assert engine.slo.live_limit == 4
            gate.open()
            for stream in slow:
                await collect(stream)
            # Rounds of 4 (the limit) with a fifth refused; each completes at once on the
            # manual clock (latency 0), 24 in all: enough samples to judge the limit by.
            for r in range(6):
                streams = [engine.submit(InferRequest("lm", x)) for x in INPUTS[4 * r : 4 * r + 4]]
                with pytest.raises(AdmissionRejectedError):
                    engine.submit(InferRequest("lm", INPUTS[39]))
                for stream in streams:
                    await collect(stream)
            # Not before the longest requests could have completed since the limit was set
            # (the window's p99, 2 s, capped at the 1 s target)...
            advance(engine, 0.5)
            assert engine.control_slo() is not None
            assert engine.slo.live_limit == 4
            advance(engine, 0.6)
            decision = engine.control_slo()
            assert decision is not None
            # A tenth more (rounded up), or up to a half more where the fake's measured
            # step costs (microseconds, at any batch) predict the aim still holds.
            assert decision.live_limit == engine.slo.live_limit
            assert decision.live_limit in (5, 6)
            assert any(f"live limit 4 -> {decision.live_limit}" in c for c in decision.changes)
            streams = [engine.submit(InferRequest("lm", x)) for x in INPUTS[:5]]
            for x, stream in zip(INPUTS, streams, strict=False):
                assert_matches_alone(LM, x, await collect(stream))

    asyncio.run(main())


def test_the_plan_length_it_allows_reaches_the_device() -> None:
    async def main() -> None:
        async with serving(slo_config(max_steps_per_plan=32), [LM]) as (engine, _):
            sched = engine.workers[0].scheduler
            assert isinstance(sched, CellularScheduler)
            (cell,) = sched.cell_types
            # Requests of 40 tokens complete: the engine tells the controller their runs.
            long = INPUTS[0] * 14
            for x in (long, long[:-1], long[:-2]):
                assert_matches_alone(LM, x, await collect(engine.submit(InferRequest("lm", x))))
            # The executor's costs, scripted: 40 ms a step at batch 1 in any plan, so a
            # long plan only makes arrivals wait. For a request of 32 steps (the cap), one
            # step a plan predicts 40 ms x 33 = 1.32 s, 32 steps 1.28 s x 2 = 2.56 s.
            sched.costs.forget(cell)
            sched.costs.observe(cell, 1, 1, 0.04)
            sched.costs.observe(cell, 1, 32, 1.28)
            advance(engine, 1.0)
            decision = engine.control_slo()
            assert decision is not None
            assert decision.max_steps_per_plan == 1
            for _ in range(int(GUARD_S / 0.01)):
                if sched.max_steps_per_plan == 1:
                    break
                await asyncio.sleep(0.01)
            assert sched.max_steps_per_plan == 1
            x = INPUTS[0] * 4
            assert_matches_alone(LM, x, await collect(engine.submit(InferRequest("lm", x))))

    asyncio.run(main())


def test_without_a_target_there_is_no_controller() -> None:
    async def main() -> None:
        async with serving(engine_config("cellular"), [LM]) as (engine, _):
            assert engine.slo is None
            assert engine.control_slo() is None

    asyncio.run(main())


def test_a_bad_target_is_refused() -> None:
    for bad in (0.0, -1.0, float("nan"), 1e6):
        with pytest.raises(ValueError, match="slo_p99_s"):
            engine_config("cellular", slo_p99_s=bad)
