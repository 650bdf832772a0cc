"""Cancelling a stream ends that request at the next step boundary: its stream raises
RequestCancelledError (CANCELLED), its slot comes back, and the requests beside it are
untouched and stream exactly their reference.

The gate holds the worker inside a known step when the cancel arrives, so how far the
victim got is exact: the steps run before, plus the one already planned.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fakes import FakeChainModel
from gate import collect, drain, free_slots, next_output
from rig import MODES, assert_matches_alone, assert_prefix_of_alone, engine_config, serving

from batchmaker import Code, InferRequest, RequestCancelledError

LM = FakeChainModel("lm")


@pytest.mark.parametrize("mode", MODES)
def test_cancel_mid_stream_frees_the_slot_and_spares_the_others(mode: str) -> None:
    rng = np.random.default_rng(2)
    victim_x = rng.integers(0, 50, 35).tolist()
    keep = [rng.integers(0, 50, n).tolist() for n in (7, 30)]
    # Padded: the three form one batch (full), never on the timer.
    config = engine_config(mode, padded_max_batch=3, padded_timeout_s=60)

    async def main() -> None:
        async with serving(config, [LM], gated=True) as (engine, gate):
            start = free_slots(engine)
            victim = engine.submit(InferRequest("lm", victim_x, request_id="victim"))
            others = [engine.submit(InferRequest("lm", x)) for x in keep]
            for _ in range(3):
                await gate.step()
            seen = []
            if mode != "padded":  # the victim runs first here, and streams
                seen.append(await next_output(victim))
                assert seen[0].step == 0
            await gate.wait_entered(4)  # step 4 holds the victim: planned before the cancel
            victim.cancel()
            gate.open()
            outputs, error = await drain(victim)
            outputs = seen + outputs
            assert isinstance(error, RequestCancelledError)
            assert error.code is Code.CANCELLED
            # It ran exactly the step that was planned when the cancel came, and no more.
            assert gate.steps_of("victim") == [0, 1, 2, 3]
            if mode != "padded":  # everything it ran reached its stream, and is right
                assert len(outputs) == 4
                assert_prefix_of_alone(LM, victim_x, outputs)
            else:  # a padded batch answers at its end, which the victim never saw
                assert outputs == []
            for x, stream in zip(keep, others, strict=True):
                assert_matches_alone(LM, x, await collect(stream))
            assert engine.num_live == 0
            assert free_slots(engine) == start

    asyncio.run(main())


def test_cancel_before_the_first_step_never_runs_the_request() -> None:
    async def main() -> None:
        async with serving(engine_config("none"), [LM], gated=True) as (engine, gate):
            start = free_slots(engine)
            running = engine.submit(InferRequest("lm", [1, 2, 3], request_id="running"))
            queued = engine.submit(InferRequest("lm", [4, 5], request_id="queued"))
            await gate.step()
            queued.cancel()
            gate.open()
            outputs, error = await drain(queued)
            assert outputs == []
            assert isinstance(error, RequestCancelledError)
            assert_matches_alone(LM, [1, 2, 3], await collect(running))
            assert gate.steps_of("queued") == []
            assert free_slots(engine) == start

    asyncio.run(main())


def test_cancel_after_the_end_changes_nothing() -> None:
    async def main() -> None:
        async with serving(engine_config(), [LM]) as (engine, _):
            stream = engine.submit(InferRequest("lm", [1, 2, 3], request_id="done"))
            outputs = await collect(stream)
            stream.cancel()
            engine.abort("done")
            engine.abort("never-submitted")
            assert stream.error is None
            assert stream.finish_reason == "completed"
            assert_matches_alone(LM, [1, 2, 3], outputs)
            # The engine still serves, and the id is free again.
            again = await collect(engine.submit(InferRequest("lm", [1, 2, 3], request_id="done")))
            assert_matches_alone(LM, [1, 2, 3], again)

    asyncio.run(main())


def test_cancelling_every_request_of_a_padded_batch_lets_the_next_batch_run() -> None:
    config = engine_config("padded", padded_max_batch=2, padded_timeout_s=60)

    async def main() -> None:
        async with serving(config, [LM], gated=True) as (engine, gate):
            start = free_slots(engine)
            doomed = [engine.submit(InferRequest("lm", [1] * 30)) for _ in range(2)]
            await gate.step()
            await gate.wait_entered(2)  # step 2 is planned for the doomed batch
            later = [engine.submit(InferRequest("lm", [2, 3, 4])) for _ in range(2)]
            for s in doomed:
                s.cancel()
            gate.open()
            for s in doomed:
                assert isinstance((await drain(s))[1], RequestCancelledError)
            for s in later:
                assert_matches_alone(LM, [2, 3, 4], await collect(s))
            # The doomed batch stopped after the step it was in; the next batch ran 3.
            assert len(gate.steps) == 2 + 3
            assert free_slots(engine) == start

    asyncio.run(main())
