"""What a caller sees on a stream: steps in order, as they run (padded: all at the end),
top-k that agrees with the vector, and every step kept for a slow reader.

Steps run one at a time through the gated executor, so "has this output arrived
yet" is checked at exact points of the computation, without sleeping.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from harness import (
    collect,
    drain,
    engine_config,
    make_inputs,
    next_output,
    serving,
    small_model,
)
from reference import assert_matches_alone, assert_top_k, run_alone

from batchmaker import InferRequest

LM = small_model("lstm", num_layers=2, name="lm")
VEC = small_model("gru", vectors=True, name="vec")
TOKENS = [7, 3, 3, 41, 0, 19, 25, 8]


@pytest.mark.parametrize("mode", ["cellular", "none"])
def test_each_step_streams_as_soon_as_the_next_one_starts(mode: str) -> None:
    async def main() -> None:
        async with serving(engine_config(mode), [LM], gated=True) as (engine, gate):
            stream = engine.submit(InferRequest("lm", TOKENS))
            got = []
            for j in range(1, len(TOKENS)):
                await gate.step()
                # Step j (1-based) has run and the request is not done, yet every
                # output before it has already reached the stream.
                assert not stream.done
                while len(got) < j - 1:
                    got.append(await next_output(stream))
                assert [o.step for o in got] == list(range(j - 1))
            gate.open()
            got += await collect(stream)
            assert_matches_alone(LM, TOKENS, got)
            assert len(gate.steps) == len(TOKENS)

    asyncio.run(main())


def test_padded_answers_every_step_only_when_the_whole_batch_is_done() -> None:
    short, long = TOKENS[:3], TOKENS
    # The batch forms only when full (2 requests), never on the timer.
    config = engine_config("padded", padded_max_batch=2, padded_timeout_s=60)

    async def main() -> None:
        async with serving(config, [LM], gated=True) as (engine, gate):
            s_short = engine.submit(InferRequest("lm", short))
            s_long = engine.submit(InferRequest("lm", long))
            for _ in range(len(long) - 1):
                await gate.step()
                # Even after the short request's last step (step 3), nothing arrives.
                assert s_short.time_to_first_output is None
                assert s_long.time_to_first_output is None
                assert not s_short.done
            gate.open()
            out_short, out_long = await collect(s_short), await collect(s_long)
            assert_matches_alone(LM, short, out_short)
            assert_matches_alone(LM, long, out_long)
            # One batch, padded to its longest member: the short one's rows became padding.
            assert [len(s.request_ids) for s in gate.steps] == [2] * len(long)
            assert [None in s.request_ids for s in gate.steps] == [False] * 3 + [True] * 5

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["cellular", "padded", "none"])
def test_top_k_agrees_with_the_vector_and_each_request_gets_its_own_k(mode: str) -> None:
    """Rows asking for different k (and k=1, which takes a faster path) share steps."""
    rng = np.random.default_rng(4)
    ks = [1, 3, 0, 50, 5]
    requests = [
        InferRequest("lm", make_inputs(LM, rng, 6 + i), top_k=k) for i, k in enumerate(ks)
    ] + [
        InferRequest("vec", make_inputs(VEC, rng, 5), top_k=11),
        InferRequest("vec", make_inputs(VEC, rng, 4), top_k=2, return_vectors=False),
    ]
    config = engine_config(mode, max_batch=8, padded_max_batch=8)

    async def main() -> None:
        async with serving(config, [LM, VEC], gated=True) as (engine, gate):
            first = engine.submit(InferRequest("lm", [1]))
            await gate.wait_entered(1)  # every request below is queued before step 2 forms
            streams = [engine.submit(r) for r in requests]
            gate.open()
            await collect(first)
            for request, stream in zip(requests, streams, strict=True):
                outputs = await collect(stream)
                model = LM if request.model == "lm" else VEC
                want = run_alone(model, request.inputs)
                for out, row in zip(outputs, want, strict=True):
                    if request.top_k:
                        assert_top_k(out, request.top_k, row)
                    else:
                        assert out.top_ids is None
                        assert out.top_scores is None
                    assert (out.vector is None) == (not request.return_vectors)
            if mode == "cellular":
                assert max(len(s.request_ids) for s in gate.steps) == 5  # they did share

    asyncio.run(main())


def test_no_vectors_and_no_top_k_still_streams_every_step() -> None:
    async def main() -> None:
        async with serving(engine_config(), [LM]) as (engine, _):
            stream = engine.submit(InferRequest("lm", TOKENS, return_vectors=False))
            outputs = await collect(stream)
        assert [o.step for o in outputs] == list(range(len(TOKENS)))
        assert all(o.vector is None and o.top_ids is None for o in outputs)

    asyncio.run(main())


def test_a_slow_reader_finds_every_step_waiting_in_one_chunk() -> None:
    async def main() -> None:
        async with serving(engine_config(), [LM], gated=True) as (engine, gate):
            stream = engine.submit(InferRequest("lm", TOKENS))
            for _ in range(5):
                await gate.step()
            chunk = await stream.next_chunk()  # 4 (or 5) steps were waiting
            assert 4 <= len(chunk) <= 5
            assert [o.step for o in chunk] == list(range(len(chunk)))
            gate.open()
            # Read nothing until the engine has finished everything.
            await engine.shutdown(grace=None)
            assert stream.done
            rest = await stream.next_chunk()
            assert [o.step for o in rest] == list(range(len(chunk), len(TOKENS)))
            assert await stream.next_chunk() == []
            assert_matches_alone(LM, TOKENS, chunk + rest)

    asyncio.run(main())


def test_iterating_a_finished_stream_ends_cleanly() -> None:
    async def main() -> None:
        async with serving(engine_config(), [LM]) as (engine, _):
            stream = engine.submit(InferRequest("lm", TOKENS[:2]))
            outputs, error = await drain(stream)
            assert error is None
            assert len(outputs) == 2
            assert await stream.collect() == []
            assert stream.error is None
            assert stream.latency is not None
            assert stream.time_to_first_output is not None

    asyncio.run(main())
