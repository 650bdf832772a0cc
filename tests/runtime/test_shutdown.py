"""Shutdown: admission closes at once (UNAVAILABLE); ``grace=None`` lets live streams
finish, ``grace=0`` (and leaving ``async with``) ends running and queued streams with
UnavailableError, and a grace period that runs out ends whatever is left.

Steps are held at the gate while the test checks what may not have happened yet; the
order of "shutdown told the worker to stop" and "the gate opens" is fixed by the event
loop's callback order, not by waiting. The grace period is the one wall-clock wait: the
engine measures it on the event loop, not on the engine's clock.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fakes import FakeChainModel, FakeExecutor
from gate import GatedExecutor, collect, drain, free_slots, guarded
from rig import (
    MODES,
    NUM_SLOTS,
    assert_matches_alone,
    assert_prefix_of_alone,
    engine_config,
    serving,
)

from batchmaker import Code, Engine, InferRequest, UnavailableError
from batchmaker.runtime.executor import Executor
from scheduler import ManualClock

LM = FakeChainModel("lm")
POOL = LM.qualify("state")
X = np.random.default_rng(8).integers(0, 50, 20).tolist()


def assert_refused(engine: Engine) -> None:
    with pytest.raises(UnavailableError) as info:
        engine.submit(InferRequest("lm", [1]))
    assert info.value.code is Code.UNAVAILABLE


@pytest.mark.parametrize("mode", MODES)
def test_shutdown_without_a_limit_lets_live_streams_finish_and_refuses_new_ones(
    mode: str,
) -> None:
    async def main() -> None:
        async with serving(engine_config(mode), [LM], gated=True) as (engine, gate):
            streams = [engine.submit(InferRequest("lm", x)) for x in (X[:6], X)]
            await gate.step()
            stopping = asyncio.create_task(engine.shutdown(grace=None))
            # The shutdown task starts while this waits for the step (its first act is to
            # close admission); the live requests still have steps to go.
            await gate.step()
            assert_refused(engine)
            assert not stopping.done()
            assert all(w.alive for w in engine.workers)
            gate.open()
            assert_matches_alone(LM, X[:6], await collect(streams[0]))
            assert_matches_alone(LM, X, await collect(streams[1]))
            await guarded(stopping)
            assert not any(w.alive for w in engine.workers)
            assert_refused(engine)
            assert engine.num_live == 0
            assert free_slots(engine) == {POOL: NUM_SLOTS}

    asyncio.run(main())


def test_shutdown_with_no_grace_ends_running_and_queued_streams_with_unavailable() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with serving(engine_config("none"), [LM], gated=True) as (engine, gate):
            running = engine.submit(InferRequest("lm", X, request_id="running"))
            queued = engine.submit(InferRequest("lm", X[:3], request_id="queued"))
            for _ in range(2):
                await gate.step()
            await gate.wait_entered(3)
            stopping = asyncio.create_task(engine.shutdown(grace=0))
            # Callbacks run in order: shutdown tells the worker to stop, then the gate
            # opens, so the worker ends right after the step it holds.
            loop.call_soon(gate.open)
            await guarded(stopping)
            outputs, error = await drain(running)
            assert isinstance(error, UnavailableError)
            assert error.code is Code.UNAVAILABLE
            assert "shut down" in error.message
            assert len(outputs) == 3  # every step it ran reached the stream, and is right
            assert_prefix_of_alone(LM, X, outputs)
            queued_outputs, queued_error = await drain(queued)
            assert queued_outputs == []
            assert isinstance(queued_error, UnavailableError)
            assert gate.steps_of("queued") == []
            assert len(gate.steps) == 3
            assert not any(w.alive for w in engine.workers)
            assert_refused(engine)
            assert engine.num_live == 0
            assert free_slots(engine) == {POOL: NUM_SLOTS}

    asyncio.run(main())


def test_a_grace_period_that_runs_out_ends_what_is_left() -> None:
    # Batches form only when full (2 requests): the manual clock never fires the timer,
    # so a lone third request never runs, however long the grace period.
    config = engine_config("padded", padded_max_batch=2, padded_timeout_s=60)

    async def main() -> None:
        async with serving(config, [LM]) as (engine, gate):
            pair = [engine.submit(InferRequest("lm", x)) for x in (X[:4], X[:7])]
            assert_matches_alone(LM, X[:4], await collect(pair[0]))
            assert_matches_alone(LM, X[:7], await collect(pair[1]))
            alone = engine.submit(InferRequest("lm", X[:2]))
            await guarded(engine.shutdown(grace=0.05))
            outputs, error = await drain(alone)
            assert outputs == []
            assert isinstance(error, UnavailableError)
            assert len(gate.steps) == 7
            assert free_slots(engine) == {POOL: NUM_SLOTS}

    asyncio.run(main())


def test_leaving_async_with_ends_live_streams_with_unavailable() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        gates: list[GatedExecutor] = []

        def gated_fake(device: str) -> Executor:
            gates.append(GatedExecutor(FakeExecutor(device), loop))
            return gates[-1]

        engine = Engine(engine_config(), [LM], executor_factory=gated_fake, clock=ManualClock())
        (gate,) = gates
        async with engine:
            stream = engine.submit(InferRequest("lm", X))
            await gate.step()
            await gate.wait_entered(2)
            # Runs once the exit's shutdown has told the worker to stop and waits for it.
            loop.call_soon(gate.open)
        outputs, error = await drain(stream)
        assert isinstance(error, UnavailableError)
        assert len(outputs) == 2
        assert_prefix_of_alone(LM, X, outputs)
        assert not any(w.alive for w in engine.workers)

    asyncio.run(main())


def test_shutdown_is_idempotent_and_safe_on_an_engine_never_started() -> None:
    async def main() -> None:
        idle = Engine(engine_config(), [LM], executor_factory=FakeExecutor, clock=ManualClock())
        await idle.shutdown()
        await idle.shutdown(grace=0)
        assert_refused(idle)
        with pytest.raises(RuntimeError, match="shut down"):
            await idle.start()

        async with serving(engine_config(), [LM]) as (engine, _):
            outputs = await collect(engine.submit(InferRequest("lm", X[:3])))
            assert_matches_alone(LM, X[:3], outputs)
            await engine.shutdown(grace=None)
            await engine.shutdown(grace=None)
            await engine.shutdown(grace=0)
            assert_refused(engine)
            with pytest.raises(RuntimeError, match="already started"):
                await engine.start()

    asyncio.run(main())
