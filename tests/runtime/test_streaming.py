"""What a caller sees on a stream: steps in order, each exactly the fake's reference, as
they run (padded: all at the end); each request's own top-k and vectors; a backlog taken
in one ``next_chunk``; and the finish reason, COMPLETED or LENGTH (``max_output_length``).

Steps run one at a time through the gate, so "has this output arrived yet" is checked
at exact points of the computation, without sleeping. Engine logic only: the torch
executor's top-k numerics are tests/engine/test_correctness.py's.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fakes import FakeChainModel
from gate import collect, drain, free_slots, next_output
from rig import MODES, assert_matches_alone, assert_top_k, engine_config, serving

from batchmaker import InferRequest, InvalidRequestError
from batchmaker.config import MODES as ALL_MODES

LM = FakeChainModel("lm")
OTHER = FakeChainModel("other", multiplier=5, output_dim=5)
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


@pytest.mark.parametrize("mode", MODES)
def test_top_k_and_vectors_are_each_requests_own(mode: str) -> None:
    """Rows asking for different k (none, one, some, all) and for vectors or not share
    steps, across two models; each stream gets exactly what it asked for."""
    rng = np.random.default_rng(4)
    ks = [1, 3, 0, LM.cell.output_dim, 5]
    requests = [
        InferRequest("lm", rng.integers(0, 50, 6 + i).tolist(), top_k=k) for i, k in enumerate(ks)
    ] + [
        InferRequest("other", rng.integers(0, 50, 5).tolist(), top_k=OTHER.cell.output_dim),
        InferRequest("other", rng.integers(0, 50, 4).tolist(), top_k=2, return_vectors=False),
    ]
    config = engine_config(mode, max_batch=8, padded_max_batch=8)

    async def main() -> None:
        async with serving(config, [LM, OTHER], gated=True) as (engine, gate):
            first = engine.submit(InferRequest("lm", [1]))
            await gate.wait_entered(1)  # every request below is queued before step 2 forms
            streams = [engine.submit(r) for r in requests]
            gate.open()
            await collect(first)
            for request, stream in zip(requests, streams, strict=True):
                outputs = await collect(stream)
                model = LM if request.model == "lm" else OTHER
                want = model.reference(request)
                assert len(outputs) == len(want)
                for out, row in zip(outputs, want, strict=True):
                    if request.top_k:
                        assert_top_k(out, request.top_k, row)
                    else:
                        assert out.top_ids is None
                        assert out.top_scores is None
                    assert (out.vector is None) == (not request.return_vectors)
                if request.return_vectors:
                    assert_matches_alone(model, request.inputs, outputs)
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
            # Steps 1-4 are waiting; step 5's outcome goes out when step 6 launches.
            chunk = await stream.next_chunk()
            assert [o.step for o in chunk] == list(range(4))
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


@pytest.mark.parametrize("mode", ALL_MODES)
def test_finish_reason_is_length_at_the_cap_and_completed_otherwise(mode: str) -> None:
    """A cap below the input length streams exactly the first N steps and ends with LENGTH;
    a cap equal to it, or none, runs to the end, COMPLETED."""
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 50, n).tolist() for n in (12, 7, 9)]
    caps = [5, 7, None]

    async def main() -> None:
        async with serving(engine_config(mode), [LM]) as (engine, _):
            before = free_slots(engine)
            streams = [
                engine.submit(InferRequest("lm", x, max_output_length=c))
                for x, c in zip(inputs, caps, strict=True)
            ]
            for x, c, stream in zip(inputs, caps, streams, strict=True):
                assert_matches_alone(LM, x, await collect(stream), max_output_length=c)
            assert [s.finish_reason for s in streams] == ["length", "completed", "completed"]
            assert all(s.error is None for s in streams)
            assert free_slots(engine) == before
            with pytest.raises(InvalidRequestError, match="max_output_length"):
                engine.submit(InferRequest("lm", [1], max_output_length=LM.max_len + 1))

    asyncio.run(main())
