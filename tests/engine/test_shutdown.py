"""Shutdown: admission closes at once; ``grace=None`` lets live streams finish,
``grace=0`` (and leaving ``async with``) ends them with UnavailableError, and a
grace period that runs out ends whatever is left.

Steps are held at the gate while the test checks what may not have happened yet.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from harness import (
    NUM_SLOTS,
    GatedExecutor,
    collect,
    drain,
    engine_config,
    free_slots,
    guarded,
    serving,
    small_model,
)
from reference import TOL, assert_matches_alone, max_abs_diff, run_alone

from batchmaker import Code, Engine, InferRequest, UnavailableError
from batchmaker.runtime.executor import Executor
from batchmaker.runtime.torch_executor import TorchExecutor

LM = small_model("lstm", num_layers=2, name="lm")
POOL = LM.qualify("state")
X = np.random.default_rng(8).integers(0, 50, 20).tolist()


def assert_refused(engine: Engine) -> None:
    with pytest.raises(UnavailableError) as info:
        engine.submit(InferRequest("lm", [1]))
    assert info.value.code is Code.UNAVAILABLE


@pytest.mark.parametrize("mode", ["cellular", "padded", "none"])
def test_shutdown_without_a_limit_lets_live_streams_finish_and_refuses_new_ones(
    mode: str,
) -> None:
    async def main() -> None:
        async with serving(engine_config(mode), [LM], gated=True) as (engine, gate):
            streams = [engine.submit(InferRequest("lm", x)) for x in (X[:6], X)]
            await gate.step()
            stopping = asyncio.create_task(engine.shutdown(grace=None))
            await asyncio.sleep(0)  # let shutdown begin: it closes admission first
            assert_refused(engine)
            await gate.step()
            assert not stopping.done()  # the live requests cannot have finished
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
        async with serving(engine_config("none"), [LM], gated=True) as (engine, gate):
            running = engine.submit(InferRequest("lm", X, request_id="running"))
            queued = engine.submit(InferRequest("lm", X[:3], request_id="queued"))
            for _ in range(2):
                await gate.step()
            stopping = asyncio.create_task(engine.shutdown(grace=0))
            await asyncio.sleep(0)  # shutdown has told the worker to stop ...
            gate.open()  # ... so it ends after the step it holds
            await guarded(stopping)
            outputs, error = await drain(running)
            assert isinstance(error, UnavailableError)
            assert "shut down" in error.message
            assert 1 <= len(outputs) <= 3
            got = np.stack([o.vector for o in outputs])
            assert max_abs_diff(got, run_alone(LM, X)[: len(got)]) < TOL
            queued_outputs, queued_error = await drain(queued)
            assert queued_outputs == []
            assert isinstance(queued_error, UnavailableError)
            assert gate.steps_of("queued") == []
            assert not any(w.alive for w in engine.workers)
            assert_refused(engine)
            assert engine.num_live == 0
            assert free_slots(engine) == {POOL: NUM_SLOTS}

    asyncio.run(main())


def test_a_grace_period_that_runs_out_ends_what_is_left() -> None:
    # Batches form only when full (2 requests): a lone third request never runs.
    config = engine_config("padded", padded_max_batch=2, padded_timeout_s=60)

    async def main() -> None:
        async with serving(config, [LM]) as (engine, gate):
            pair = [engine.submit(InferRequest("lm", x)) for x in (X[:4], X[:7])]
            assert_matches_alone(LM, X[:4], await collect(pair[0]))
            assert_matches_alone(LM, X[:7], await collect(pair[1]))
            alone = engine.submit(InferRequest("lm", X[:2]))
            await engine.shutdown(grace=0.05)
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

        def gated_executor(device: str) -> Executor:
            gates.append(GatedExecutor(TorchExecutor(device), loop))
            return gates[-1]

        engine = Engine(engine_config(), [LM], executor_factory=gated_executor)
        (gate,) = gates
        async with engine:
            stream = engine.submit(InferRequest("lm", X))
            await gate.step()
            # Runs once the exit's shutdown has told the worker to stop and waits for it.
            loop.call_soon(gate.open)
        outputs, error = await drain(stream)
        assert isinstance(error, UnavailableError)
        assert len(outputs) <= 2
        assert not any(w.alive for w in engine.workers)

    asyncio.run(main())


def test_shutdown_is_idempotent_and_safe_on_an_engine_never_started() -> None:
    async def main() -> None:
        idle = Engine(engine_config(), [LM])
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
