"""Admission: beyond the live-request or state-slot limit, submit refuses at once with
RESOURCE_EXHAUSTED, and every slot comes back when requests end.

Nothing is queued for a refused request, admitted requests are untouched and stream
exactly their reference, and the room comes back one finished request at a time.
Steps are held at the gate, so the admitted requests are certainly still live when the
refusal is checked. Engine logic only: it runs on the fake executor, in every mode.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fakes import FakeChainModel
from gate import collect, free_slots
from rig import MODES, NUM_SLOTS, assert_matches_alone, engine_config, serving

from batchmaker import AdmissionRejectedError, Code, EngineConfig, InferRequest, InvalidRequestError

LM = FakeChainModel("lm")
POOL = LM.qualify("state")
LIMIT = 3


def limited(mode: str, limit: str) -> tuple[EngineConfig, str]:
    """A config at ``LIMIT`` on one of the two limits, and what the refusal says."""
    if limit == "live_requests":
        return engine_config(mode, max_num_live_requests=LIMIT), "live requests"
    return engine_config(mode, num_slots=LIMIT), "no free state slot"


@pytest.mark.parametrize("limit", ["live_requests", "slots"])
@pytest.mark.parametrize("mode", MODES)
def test_beyond_the_limit_submit_is_refused_at_once_and_nothing_is_lost(
    mode: str, limit: str
) -> None:
    config, reason = limited(mode, limit)
    rng = np.random.default_rng(1)
    inputs = [rng.integers(0, 50, n).tolist() for n in (5, 9, 13)]

    async def main() -> None:
        async with serving(config, [LM], gated=True) as (engine, gate):
            start = free_slots(engine)
            assert start == {POOL: config.num_slots}
            streams = [engine.submit(InferRequest("lm", x)) for x in inputs]
            assert engine.num_live == LIMIT
            assert free_slots(engine) == {POOL: config.num_slots - LIMIT}
            for _ in range(2):  # refusing changes nothing, so it refuses again
                with pytest.raises(AdmissionRejectedError) as info:
                    engine.submit(InferRequest("lm", [1, 2, 3], request_id="extra"))
                assert info.value.code is Code.RESOURCE_EXHAUSTED
                assert "admission limit" in info.value.message
                assert reason in info.value.message
                assert engine.num_live == LIMIT
                assert free_slots(engine) == {POOL: config.num_slots - LIMIT}
            gate.open()
            for x, stream in zip(inputs, streams, strict=True):
                assert_matches_alone(LM, x, await collect(stream))
            assert engine.num_live == 0
            assert free_slots(engine) == start
            # Full capacity is back (and the refused id was never taken).
            again = [
                engine.submit(InferRequest("lm", x, request_id=f"extra{i}" if i else "extra"))
                for i, x in enumerate(inputs)
            ]
            for x, stream in zip(inputs, again, strict=True):
                assert_matches_alone(LM, x, await collect(stream))
            assert engine.num_live == 0
            assert free_slots(engine) == start
            stats = engine.device_stats()[0]
            assert stats.num_live == 0
            assert stats.worker.num_rows == 2 * sum(map(len, inputs))

    asyncio.run(main())


def test_the_default_limit_is_four_max_batches_of_the_widest_cell_type() -> None:
    # A limit sized to the batch, not a fixed count: at 1,024 live and a max batch of 64,
    # an overload queued about 9 s of work and the p99 took 16.5 s to recover
    # (docs/benchmarks.md, "Overload").
    assert EngineConfig().live_limit == 4 * 64
    assert EngineConfig(max_batch=16).live_limit == 64
    assert EngineConfig(max_batch=16, max_batch_per_cell={"lm/step": 32}).live_limit == 128
    assert EngineConfig(max_batch=16, max_num_live_requests=7).live_limit == 7
    assert EngineConfig().scheduler_config().max_num_live_requests == 256
    with pytest.raises(ValueError, match="max_num_live_requests"):
        EngineConfig(max_num_live_requests=0)

    config = engine_config(max_batch=2, max_num_live_requests=None)
    assert config.live_limit == 8 < config.num_slots

    async def main() -> None:
        async with serving(config, [LM], gated=True) as (engine, gate):
            streams = [engine.submit(InferRequest("lm", [1, 2, 3])) for _ in range(8)]
            with pytest.raises(AdmissionRejectedError, match=r"8 live requests.*limit 8"):
                engine.submit(InferRequest("lm", [1, 2, 3]))
            gate.open()
            for stream in streams:
                assert_matches_alone(LM, [1, 2, 3], await collect(stream))

    asyncio.run(main())


def test_room_comes_back_one_finished_request_at_a_time() -> None:
    config = engine_config(max_num_live_requests=2)

    async def main() -> None:
        async with serving(config, [LM], gated=True) as (engine, gate):
            short = engine.submit(InferRequest("lm", [1, 2]))
            long = engine.submit(InferRequest("lm", list(range(20))))
            with pytest.raises(AdmissionRejectedError):
                engine.submit(InferRequest("lm", [3]))
            gate.allow(3)  # short's two steps, and one more that holds its last output back
            assert len(await collect(short)) == 2
            assert engine.num_live == 1
            late = engine.submit(InferRequest("lm", [4, 5]))
            with pytest.raises(AdmissionRejectedError):
                engine.submit(InferRequest("lm", [3]))
            gate.open()
            assert_matches_alone(LM, [4, 5], await collect(late))
            assert_matches_alone(LM, list(range(20)), await collect(long))
            assert free_slots(engine) == {POOL: NUM_SLOTS}

    asyncio.run(main())


def test_a_live_request_id_cannot_be_reused_until_it_ends() -> None:
    async def main() -> None:
        async with serving(engine_config(), [LM], gated=True) as (engine, gate):
            first = engine.submit(InferRequest("lm", [1, 2], request_id="a"))
            with pytest.raises(InvalidRequestError, match="request_id") as info:
                engine.submit(InferRequest("lm", [3], request_id="a"))
            assert info.value.code is Code.INVALID_ARGUMENT
            assert engine.num_live == 1
            gate.open()
            assert_matches_alone(LM, [1, 2], await collect(first))
            second = engine.submit(InferRequest("lm", [3], request_id="a"))
            assert second.request_id == "a"
            assert_matches_alone(LM, [3], await collect(second))
            assert free_slots(engine) == {POOL: NUM_SLOTS}

    asyncio.run(main())


def test_generated_request_ids_are_unique() -> None:
    async def main() -> None:
        async with serving(engine_config(), [LM]) as (engine, _):
            streams = [engine.submit(InferRequest("lm", [i])) for i in range(5)]
            assert len({s.request_id for s in streams}) == 5
            assert all(s.request_id and s.model_key == "lm@1" for s in streams)
            for i, stream in enumerate(streams):
                assert_matches_alone(LM, [i], await collect(stream))

    asyncio.run(main())
