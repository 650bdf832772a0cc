"""A slow reader cannot hold the server's memory, and one failing delivery fails one request.

- Every stream's unread outputs count against a per-stream and a server-wide bound
  (``EngineConfig.max_buffered_bytes_per_stream``, ``max_buffered_bytes``). A push past
  either ends that request with RESOURCE_EXHAUSTED, drops its buffer and frees its slot;
  the requests beside it are untouched. A reader that keeps up never meets the bound,
  however long its request.
- A buffered block holds only its own rows: output vectors are copied out of the plan's
  ``[rows, width]`` array (a view kept the whole array alive, 2.5 MB per step on a 10k
  vocabulary LM, for as long as the step waited unread).
- ``Engine._deliver`` is guarded per request: a stream that raises on delivery ends with
  INTERNAL, and every other request of that step still streams and finishes, with its
  admission count and slots returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
from fakes import FakeChainModel
from gate import collect, drain, free_slots, guarded
from rig import assert_matches_alone, engine_config, serving

from batchmaker import Code, InferRequest
from batchmaker.errors import ExecutionFailedError, OutputBufferFullError
from batchmaker.types import StepBlock

LM = FakeChainModel("lm")


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.001)


ROW = LM.cell.output_dim * 4
"""Bytes of one step's output vector (float32): what a buffered step counts."""


def test_a_reader_that_falls_behind_is_ended_and_frees_its_slot() -> None:
    config = engine_config(max_buffered_bytes_per_stream=5 * ROW)
    rng = np.random.default_rng(0)
    slow_x, fast_x = (rng.integers(0, 50, 30).tolist() for _ in range(2))

    async def main() -> None:
        async with serving(config, [LM], gated=True) as (engine, gate):
            start = free_slots(engine)
            slow = engine.submit(InferRequest("lm", slow_x, request_id="slow"))
            fast = engine.submit(InferRequest("lm", fast_x, request_id="fast"))
            # The fast reader reads each step as it comes (30 steps, 6x the bound): never
            # ended. The slow one never reads. One step at a time, each let run once the
            # reader has taken what came before it.
            reader = asyncio.create_task(collect(fast))
            while not fast.done:
                n = len(gate.steps)
                gate.allow(1)
                await guarded(_until(lambda n=n: fast.done or len(gate.steps) > n))
                await guarded(_until(lambda: fast.done or not fast._buf))
            assert_matches_alone(LM, fast_x, await guarded(reader))
            gate.open()
            outputs, error = await drain(slow)
            assert outputs == []  # its buffer was dropped when it overflowed
            assert isinstance(error, OutputBufferFullError)
            assert error.code is Code.RESOURCE_EXHAUSTED
            assert "per request" in error.message
            # Ended within two steps of the push that overflowed (the sixth: a step's outputs
            # reach the loop as the next one launches), not run to its end.
            assert len(gate.steps_of("slow")) <= 8
            await drain(fast)
            assert engine.num_live == 0
            assert free_slots(engine) == start
            assert engine._output_budget.used == 0

    asyncio.run(main())


def test_the_server_wide_bound_ends_the_request_that_would_pass_it() -> None:
    config = engine_config(max_buffered_bytes_per_stream=1 << 20, max_buffered_bytes=12 * ROW)

    async def main() -> None:
        async with serving(config, [LM]) as (engine, _):
            a = engine.submit(InferRequest("lm", list(range(10)), request_id="a"))
            b = engine.submit(InferRequest("lm", list(range(10)), request_id="b"))
            await guarded(_until(lambda: engine.num_live == 0))  # nobody reads meanwhile
            results = [await drain(a), await drain(b)]
            errors = [e for _, e in results if e is not None]
            # Together they would hold 20 rows unread; one is ended, the other completes.
            assert len(errors) == 1
            assert isinstance(errors[0], OutputBufferFullError)
            assert "the server holds" in errors[0].message
            complete = [o for o, e in results if e is None]
            assert [len(o) for o in complete] == [10]
            assert engine._output_budget.used == 0

    asyncio.run(main())


def test_cancelling_returns_what_was_buffered_to_the_budget() -> None:
    config = engine_config(max_buffered_bytes_per_stream=1 << 20)

    async def main() -> None:
        async with serving(config, [LM], gated=True) as (engine, gate):
            s = engine.submit(InferRequest("lm", list(range(20)), request_id="s"))
            for _ in range(4):
                await gate.step()
            await asyncio.sleep(0)  # the deliveries run on the loop
            assert engine._output_budget.used > 0
            s.cancel()
            assert engine._output_budget.used == 0
            gate.open()
            await drain(s)
            assert engine._output_budget.used == 0

    asyncio.run(main())


def test_a_buffered_block_does_not_keep_the_plans_output_array_alive() -> None:
    plan_outputs = np.arange(64 * 1000, dtype=np.float32).reshape(64, 1000)
    block = StepBlock(3, 2, outputs=plan_outputs, start=10)
    owned = block.owned()
    assert owned.vectors is not None
    assert np.array_equal(owned.vectors, plan_outputs[10:12])
    assert not np.shares_memory(owned.vectors, plan_outputs)
    assert owned.nbytes == 2 * 1000 * 4
    assert owned.first_step == 3
    assert owned.count == 2
    ids = np.zeros((64, 4), dtype=np.int64)
    top_only = StepBlock(0, 1, top_ids=ids, top_scores=ids.astype(np.float32), start=5, k=2)
    assert top_only.owned() is top_only  # a few bytes per row: left as views
    assert top_only.nbytes == 2 * 8 + 2 * 4


def test_a_delivery_that_raises_fails_its_request_alone() -> None:
    rng = np.random.default_rng(1)
    xs = [rng.integers(0, 50, 6).tolist() for _ in range(3)]

    async def main() -> None:
        async with serving(engine_config(), [LM]) as (engine, _):
            start = free_slots(engine)
            streams = [engine.submit(InferRequest("lm", x)) for x in xs]
            victim = streams[1]
            real_push = victim.push
            calls = 0

            def broken_push(block: StepBlock) -> None:
                nonlocal calls
                calls += 1
                if calls == 2:
                    raise RuntimeError("injected delivery failure")
                real_push(block)

            victim.push = broken_push  # type: ignore[method-assign]
            results = [await drain(s) for s in streams]
            _, error = results[1]
            assert isinstance(error, ExecutionFailedError)
            assert error.code is Code.INTERNAL
            assert "injected delivery failure" in error.message
            for i in (0, 2):
                outputs, err = results[i]
                assert err is None
                assert_matches_alone(LM, xs[i], outputs)
            assert engine.num_live == 0
            assert free_slots(engine) == start

    asyncio.run(main())
