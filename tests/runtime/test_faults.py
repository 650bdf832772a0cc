"""A cell execution that raises fails the requests of that batch, and no others, with
ExecutionFailedError (INTERNAL); the engine keeps serving. An unexpected error outside
the executor fails the device's live requests without killing its thread.

The gate raises for the first step that holds a row of the poisoned request after it
has streamed two steps. Which requests shared that step is read from the gate's log,
so the check is exact in every mode.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fakes import FakeChainModel
from gate import collect, drain, free_slots, holds
from rig import assert_matches_alone, assert_prefix_of_alone, engine_config, serving

from batchmaker import Code, ExecutionFailedError, InferRequest

LM = FakeChainModel("lm")
_rng = np.random.default_rng(6)
INPUTS = {rid: _rng.integers(0, 50, n).tolist() for rid, n in (("a", 5), ("b", 5), ("c", 6))}
INPUTS["d"] = _rng.integers(0, 50, 4).tolist()


@pytest.mark.parametrize("overlap", [False, True], ids=["plan-by-plan", "overlapped"])
@pytest.mark.parametrize(
    ("mode", "batch_of_c"),
    [("cellular", {"c", "d"}), ("padded", {"c", "d"}), ("none", {"c"})],
)
def test_a_failing_step_fails_only_its_batch_and_the_engine_keeps_serving(
    mode: str, batch_of_c: set[str], overlap: bool
) -> None:
    """``overlap``: the step raises as it is queued (``launch``), with the plan before it
    possibly still in flight; that plan's requests must not be failed with it."""
    config = engine_config(
        mode, max_batch=2, padded_max_batch=2, padded_timeout_s=0, overlap_steps=overlap
    )

    async def main() -> None:
        async with serving(config, [LM], gated=True) as (engine, gate):
            start = free_slots(engine)
            gate.fail_when = lambda plan: holds(plan, "c", min_emitted=2)
            warmup = engine.submit(InferRequest("lm", [0], request_id="w"))
            await gate.wait_entered(1)  # all four queue while step 1 is held
            streams = {
                rid: engine.submit(InferRequest("lm", x, request_id=rid))
                for rid, x in INPUTS.items()
            }
            gate.open()
            assert len(await collect(warmup)) == 1
            results = {rid: await drain(s) for rid, s in streams.items()}

            (failed_step,) = [s for s in gate.steps if s.failed]
            failed = {r for r in failed_step.request_ids if r is not None}
            assert failed == batch_of_c
            for rid, (outputs, error) in results.items():
                if rid in failed:
                    assert isinstance(error, ExecutionFailedError), rid
                    assert error.code is Code.INTERNAL
                    assert "injected cell failure" in error.message
                    # The steps it streamed before the failure are right.
                    assert_prefix_of_alone(LM, INPUTS[rid], outputs)
                else:
                    assert error is None, rid
                    assert_matches_alone(LM, INPUTS[rid], outputs)
            if mode != "padded":
                assert len(results["c"][0]) == 2
            assert engine.workers[0].stats.num_failed_steps == 1
            assert engine.num_live == 0
            assert free_slots(engine) == start

            # Later requests, reusing the failed requests' slots, are served and right.
            later = {rid: engine.submit(InferRequest("lm", x)) for rid, x in INPUTS.items()}
            for rid, stream in later.items():
                assert_matches_alone(LM, INPUTS[rid], await collect(stream))
            assert free_slots(engine) == start

    asyncio.run(main())


def test_a_failure_on_the_first_step_fails_the_request_before_any_output() -> None:
    async def main() -> None:
        async with serving(engine_config(max_batch=1), [LM]) as (engine, gate):
            gate.fail_when = lambda plan: holds(plan, "bad")
            bad = engine.submit(InferRequest("lm", [1, 2, 3], request_id="bad"))
            good = engine.submit(InferRequest("lm", [4, 5, 6], request_id="good"))
            outputs, error = await drain(bad)
            assert outputs == []
            assert isinstance(error, ExecutionFailedError)
            assert_matches_alone(LM, [4, 5, 6], await collect(good))
            assert len(gate.steps_of("bad")) == 1

    asyncio.run(main())


def test_an_unexpected_scheduler_error_fails_live_requests_and_the_worker_survives() -> None:
    """A bug outside the executor must not kill the device thread and hang every stream."""

    async def main() -> None:
        async with serving(engine_config(max_batch=4), [LM], gated=True) as (engine, gate):
            start = free_slots(engine)
            worker = engine.workers[0]
            update = worker.scheduler.update_from_output
            broken = {"armed": True}

            def flaky_update(plan, result):
                if broken["armed"] and holds(plan, "a"):
                    broken["armed"] = False
                    raise RuntimeError("injected scheduler bug")
                return update(plan, result)

            worker.scheduler.update_from_output = flaky_update  # type: ignore[method-assign]
            warmup = engine.submit(InferRequest("lm", [0], request_id="w"))
            await gate.wait_entered(1)  # all four are live in the scheduler before step 2
            live = [
                engine.submit(InferRequest("lm", x, request_id=rid)) for rid, x in INPUTS.items()
            ]
            gate.open()
            # The step before the bug delivers as usual.
            assert_matches_alone(LM, [0], await collect(warmup))
            for stream in live:
                _, error = await drain(stream)
                assert isinstance(error, ExecutionFailedError)
                assert error.code is Code.INTERNAL
                assert "injected scheduler bug" in error.message
            assert worker.alive
            assert worker.stats.num_internal_errors == 1
            assert engine.num_live == 0
            assert free_slots(engine) == start
            # The same thread serves the next requests, correctly.
            for x in INPUTS.values():
                assert_matches_alone(LM, x, await collect(engine.submit(InferRequest("lm", x))))

    asyncio.run(main())
