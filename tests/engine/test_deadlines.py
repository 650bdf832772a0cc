"""A request past its deadline ends with DeadlineExceededError at the next step
boundary, frees its slot, and leaves the others alone.

The gated executor holds the steps, so the request certainly cannot finish
before its deadline however fast or slow the machine is; the test waits for
the clock to pass the deadline, then lets the steps go.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from harness import collect, drain, engine_config, free_slots, serving, small_model
from reference import TOL, assert_matches_alone, max_abs_diff, run_alone

from batchmaker import Code, DeadlineExceededError, InferRequest

LM = small_model("gru", num_layers=2, name="lm")
TIMEOUT = 0.05
LONG = np.random.default_rng(3).integers(0, 50, 30).tolist()


async def until_clock_passes(t: float) -> None:
    """Wait until ``time.monotonic()`` (the engine's clock) is past ``t``."""
    while (left := t - time.monotonic()) >= 0:
        await asyncio.sleep(left + 1e-3)


@pytest.mark.parametrize("mode", ["cellular", "none"])
def test_deadline_mid_stream_ends_the_request_and_spares_the_others(mode: str) -> None:
    async def main() -> None:
        async with serving(engine_config(mode), [LM], gated=True) as (engine, gate):
            start = free_slots(engine)
            late = engine.submit(InferRequest("lm", LONG, timeout=TIMEOUT, request_id="late"))
            due = time.monotonic() + TIMEOUT  # no earlier than the engine's deadline
            fine = engine.submit(InferRequest("lm", LONG[:10], request_id="fine"))
            for _ in range(2):
                await gate.step()
            await until_clock_passes(due)
            gate.open()
            outputs, error = await drain(late)
            assert isinstance(error, DeadlineExceededError)
            assert error.code is Code.DEADLINE_EXCEEDED
            # It streamed its first steps (the ones before the deadline, and at most the
            # one planned before it), all correct.
            assert 1 <= len(outputs) <= 3
            got = np.stack([o.vector for o in outputs])
            assert max_abs_diff(got, run_alone(LM, LONG)[: len(got)]) < TOL
            assert len(gate.steps_of("late")) <= 3
            assert_matches_alone(LM, LONG[:10], await collect(fine))
            assert engine.num_live == 0
            assert free_slots(engine) == start

    asyncio.run(main())


def test_a_queued_request_expires_without_running() -> None:
    async def main() -> None:
        async with serving(engine_config("none"), [LM], gated=True) as (engine, gate):
            start = free_slots(engine)
            first = engine.submit(InferRequest("lm", LONG, request_id="first"))
            queued = engine.submit(InferRequest("lm", [1, 2], timeout=TIMEOUT, request_id="q"))
            due = time.monotonic() + TIMEOUT
            await gate.step()
            await until_clock_passes(due)
            gate.open()
            outputs, error = await drain(queued)
            assert outputs == []
            assert isinstance(error, DeadlineExceededError)
            assert gate.steps_of("q") == []
            assert_matches_alone(LM, LONG, await collect(first))
            assert free_slots(engine) == start

    asyncio.run(main())


def test_a_deadline_fires_even_when_no_step_runs() -> None:
    """Padded, alone, with a batch that only a second request would fill: the worker
    is idle, and must wake for the deadline by itself."""
    config = engine_config("padded", padded_max_batch=2, padded_timeout_s=60)

    async def main() -> None:
        async with serving(config, [LM]) as (engine, gate):
            start = free_slots(engine)
            alone = engine.submit(InferRequest("lm", [1, 2], timeout=TIMEOUT))
            outputs, error = await drain(alone)
            assert outputs == []
            assert isinstance(error, DeadlineExceededError)
            assert gate.num_entered == 0
            assert engine.num_live == 0
            assert free_slots(engine) == start

    asyncio.run(main())


def test_a_request_that_finishes_in_time_is_not_expired() -> None:
    async def main() -> None:
        async with serving(engine_config(), [LM]) as (engine, _):
            x = LONG[:5]
            outputs = await collect(engine.submit(InferRequest("lm", x, timeout=3600.0)))
            assert_matches_alone(LM, x, outputs)

    asyncio.run(main())
