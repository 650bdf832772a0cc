"""Who runs with whom, per mode, read from the gate's log of every step.

Cellular: a request joins the running batch at its first step and leaves after its
last, and priority decides among new requests. Padded: a request waits for the running
batch to end, a batch runs to its longest member with padding rows, and a batch that is
not full forms when its timer fires. None: one request at a time. Every stream is also
checked against the fake's reference, so a batch mix-up cannot hide behind a right log.
"""

from __future__ import annotations

import asyncio

from fakes import FakeChainModel
from gate import collect
from rig import advance, assert_matches_alone, engine_config, serving

from batchmaker import InferRequest

LM = FakeChainModel("lm")
A = [5, 9, 2, 6, 5, 3, 5, 8, 9, 7]
B = [3, 2, 3, 8]
C = [4, 6, 2]


def test_cellular_joins_the_running_batch_and_leaves_after_its_last_step() -> None:
    async def main() -> None:
        async with serving(engine_config("cellular"), [LM], gated=True) as (engine, gate):
            sa = engine.submit(InferRequest("lm", A, request_id="a"))
            for _ in range(3):
                await gate.step()
            await gate.wait_entered(4)  # step 4 was planned without b
            sb = engine.submit(InferRequest("lm", B, request_id="b"))
            gate.open()
            assert_matches_alone(LM, A, await collect(sa))
            assert_matches_alone(LM, B, await collect(sb))
            assert gate.steps_of("a") == list(range(len(A)))
            # b joins at the next step, while a is mid-sequence, and leaves after 4 steps
            # while a goes on alone.
            assert gate.steps_of("b") == [4, 5, 6, 7]
            assert [sorted(s.request_ids) for s in gate.steps[4:8]] == [["a", "b"]] * 4
            assert len(gate.steps) == len(A)

    asyncio.run(main())


def test_padded_waits_for_the_running_batch_and_pads_to_its_longest() -> None:
    # Batches form only when full (2 requests), never on the timer.
    config = engine_config("padded", padded_max_batch=2, padded_timeout_s=60)
    d = [1, 2]

    async def main() -> None:
        async with serving(config, [LM], gated=True) as (engine, gate):
            sa = engine.submit(InferRequest("lm", A, request_id="a"))
            sc = engine.submit(InferRequest("lm", C, request_id="c"))
            for _ in range(3):
                await gate.step()
            sb = engine.submit(InferRequest("lm", B, request_id="b"))
            sd = engine.submit(InferRequest("lm", d, request_id="d"))
            gate.open()
            for stream, x in ((sa, A), (sb, B), (sc, C), (sd, d)):
                assert_matches_alone(LM, x, await collect(stream))
            assert [s.request_ids for s in gate.steps] == (
                [("a", "c")] * 3
                + [("a", None)] * (len(A) - 3)
                + [("b", "d")] * 2
                + [("b", None)] * (len(B) - 2)
            )

    asyncio.run(main())


def test_padded_forms_a_batch_that_is_not_full_when_its_timer_fires() -> None:
    """The oldest queued request waits ``padded_timeout_s`` for company, then its batch
    runs as it is; the timer is the engine's clock, so the test moves it."""
    config = engine_config("padded", padded_max_batch=3, padded_timeout_s=5)

    async def main() -> None:
        async with serving(config, [LM], gated=True) as (engine, gate):
            sa = engine.submit(InferRequest("lm", C, request_id="a"))
            advance(engine, 4)  # not yet: the worker goes back to waiting
            sb = engine.submit(InferRequest("lm", B, request_id="b"))
            # Both are held by the worker, and it has planned nothing.
            await asyncio.wrap_future(engine.workers[0].call(lambda: None))
            assert gate.num_entered == 0
            gate.open()
            advance(engine, 1)  # a has waited 5 seconds: a batch of two forms
            assert_matches_alone(LM, C, await collect(sa))
            assert_matches_alone(LM, B, await collect(sb))
            assert [s.request_ids for s in gate.steps] == (
                [("a", "b")] * len(C) + [(None, "b")] * (len(B) - len(C))
            )

    asyncio.run(main())


def test_none_runs_one_request_at_a_time_in_arrival_order() -> None:
    async def main() -> None:
        async with serving(engine_config("none"), [LM], gated=True) as (engine, gate):
            streams = [
                engine.submit(InferRequest("lm", x, request_id=rid))
                for rid, x in (("a", A), ("b", B), ("c", C))
            ]
            gate.open()
            for stream, x in zip(streams, (A, B, C), strict=True):
                assert_matches_alone(LM, x, await collect(stream))
            assert [s.request_ids for s in gate.steps] == (
                [("a",)] * len(A) + [("b",)] * len(B) + [("c",)] * len(C)
            )

    asyncio.run(main())


def test_cellular_serves_higher_priority_first_among_new_requests() -> None:
    config = engine_config("cellular", max_batch=1)

    async def main() -> None:
        async with serving(config, [LM], gated=True) as (engine, gate):
            first = engine.submit(InferRequest("lm", [1], request_id="first"))
            await gate.wait_entered(1)
            streams = [
                engine.submit(InferRequest("lm", C, request_id=rid, priority=p))
                for rid, p in (("low", 0), ("high", 5), ("mid", 1))
            ]
            gate.open()
            await collect(first)
            for s in streams:
                assert_matches_alone(LM, C, await collect(s))
            order = [s.request_ids[0] for s in gate.steps]
            assert order == ["first"] + ["high"] * 3 + ["mid"] * 3 + ["low"] * 3

    asyncio.run(main())
