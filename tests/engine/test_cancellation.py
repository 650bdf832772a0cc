"""Cancelling a stream ends that request at the next step boundary: its stream raises
RequestCancelledError, its slot comes back, and the requests beside it are untouched."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from harness import collect, drain, engine_config, free_slots, next_output, serving, small_model
from reference import TOL, assert_matches_alone, max_abs_diff, run_alone

from batchmaker import Code, InferRequest, RequestCancelledError

LM = small_model("lstm", num_layers=2, name="lm")
MODES = ["cellular", "padded", "none"]


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
            victim.cancel()
            gate.open()
            outputs, error = await drain(victim)
            outputs = seen + outputs
            assert isinstance(error, RequestCancelledError)
            assert error.code is Code.CANCELLED
            # What it got before the cancel is right; it ran at most one more step.
            ran = len(gate.steps_of("victim"))
            assert 3 <= ran <= 4
            if mode != "padded":
                assert [o.step for o in outputs] == list(range(len(outputs)))
                got = np.stack([o.vector for o in outputs])
                assert max_abs_diff(got, run_alone(LM, victim_x)[: len(got)]) < TOL
            else:
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
            later = [engine.submit(InferRequest("lm", [2, 3, 4])) for _ in range(2)]
            for s in doomed:
                s.cancel()
            gate.open()
            for s in doomed:
                assert isinstance((await drain(s))[1], RequestCancelledError)
            for s in later:
                assert_matches_alone(LM, [2, 3, 4], await collect(s))
            assert len(gate.steps) <= 2 + 3  # the doomed batch stopped at once
            assert free_slots(engine) == start

    asyncio.run(main())
