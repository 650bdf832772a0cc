"""A request past its deadline ends with DeadlineExceededError (DEADLINE_EXCEEDED) at the
next step boundary, frees its slot, and leaves the others alone; one that finishes in
time is not expired.

Time is a ``ManualClock`` that moves only when the test advances it, and the gate holds
the steps: so which steps ran before the deadline is exact, and no test waits for wall
time. A worker that is idle, waiting for a deadline, is woken by ``advance`` (which calls
``DeviceWorker.wake``), so the expiry cannot hide behind the worker's timer.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fakes import FakeChainModel
from gate import GUARD_S, collect, drain, free_slots
from rig import (
    advance,
    assert_matches_alone,
    assert_prefix_of_alone,
    engine_config,
    serving,
)

from batchmaker import Code, DeadlineExceededError, InferRequest

LM = FakeChainModel("lm")
TIMEOUT = 10.0
"""Seconds of the manual clock: nothing expires until a test advances the clock this far."""
LONG = np.random.default_rng(3).integers(0, 50, 30).tolist()


@pytest.mark.parametrize("mode", ["cellular", "none"])
def test_deadline_mid_stream_ends_the_request_and_spares_the_others(mode: str) -> None:
    async def main() -> None:
        async with serving(engine_config(mode), [LM], gated=True) as (engine, gate):
            start = free_slots(engine)
            late = engine.submit(InferRequest("lm", LONG, timeout=TIMEOUT, request_id="late"))
            fine = engine.submit(InferRequest("lm", LONG[:10], request_id="fine"))
            for _ in range(2):
                await gate.step()
            await gate.wait_entered(3)  # step 3 is planned with "late": before its deadline
            advance(engine, TIMEOUT)
            gate.open()
            outputs, error = await drain(late)
            assert isinstance(error, DeadlineExceededError)
            assert error.code is Code.DEADLINE_EXCEEDED
            # The three steps planned before the deadline ran and streamed, and are right;
            # the next boundary ended it.
            assert gate.steps_of("late") == [0, 1, 2]
            assert len(outputs) == 3
            assert_prefix_of_alone(LM, LONG, outputs)
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
            await gate.step()
            advance(engine, TIMEOUT)
            gate.open()
            outputs, error = await drain(queued)
            assert outputs == []
            assert isinstance(error, DeadlineExceededError)
            assert gate.steps_of("q") == []
            assert_matches_alone(LM, LONG, await collect(first))
            assert free_slots(engine) == start

    asyncio.run(main())


def test_an_idle_worker_is_woken_for_a_deadline() -> None:
    """Padded, alone, with a batch that only a second request would fill: no step runs, and
    the worker waits for its next timer. That timer is further off than the test's guard,
    so only the wake-up from ``advance`` can end the request in time."""
    timeout = 2 * GUARD_S
    config = engine_config("padded", padded_max_batch=2, padded_timeout_s=60)

    async def main() -> None:
        async with serving(config, [LM]) as (engine, gate):
            start = free_slots(engine)
            alone = engine.submit(InferRequest("lm", [1, 2], timeout=timeout))
            # The worker holds the request once it has run a call issued after the submit
            # (commands apply in order); it then schedules nothing and waits for its timer.
            await asyncio.wrap_future(engine.workers[0].call(lambda: None))
            assert engine.workers[0].snapshot().num_live == 1
            advance(engine, timeout)
            outputs, error = await drain(alone)
            assert outputs == []
            assert isinstance(error, DeadlineExceededError)
            assert gate.num_entered == 0
            assert engine.num_live == 0
            assert free_slots(engine) == start

    asyncio.run(main())


def test_a_request_that_finishes_in_time_is_not_expired() -> None:
    async def main() -> None:
        async with serving(engine_config(), [LM], gated=True) as (engine, gate):
            x = LONG[:5]
            stream = engine.submit(InferRequest("lm", x, timeout=TIMEOUT))
            await gate.step()
            advance(engine, TIMEOUT * 0.999)  # close to the deadline, not past it
            gate.open()
            outputs, error = await drain(stream)
            assert error is None
            assert stream.finish_reason == "completed"
            assert_matches_alone(LM, x, outputs)

    asyncio.run(main())
