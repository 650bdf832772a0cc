"""Overlapped steps (``overlap_steps``): the worker queues plan k+1 before it waits for
plan k, and updates the scheduler after a plan before that plan's results are back.

The fake's ``launch`` hands back results that hold poison (NaN, id -1) until ``wait``,
as a GPU's pinned buffers hold garbage until their copies land, and it logs every
launch and wait. So these tests see both that the steps really overlap and that no
stream was given a result before its plan was waited for: the exact comparison with
the fake's reference would catch a single poisoned value.

- every mode, one step or several per plan: exact streams, and launches ahead of waits;
- a cell that feeds its tokens back (a decoder) is waited for before the next launch;
- a plan that fails when waited for fails its requests, the one whose last step it ran
  included, and only those; the engine keeps serving;
- a model is removed only when no plan is in flight (the fake refuses otherwise).

The hypothesis properties of the engine tiers (tests/runtime/test_multi_step_engine.py
and tests/engine's correctness tests for chains, seq2seq and trees) draw
``overlap_steps`` too, with arrivals, cancellations and deadlines while plans are held.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fakes import FakeChainModel, FakeLaunch
from gate import collect, drain, free_slots, holds
from rig import (
    MODES,
    assert_matches_alone,
    assert_prefix_of_alone,
    engine_config,
    fake_executor,
    serving,
)

from batchmaker import Code, ExecutionFailedError, InferRequest
from scheduler import StepPlan

LM = FakeChainModel("lm", runs=True)
OTHER = FakeChainModel("other", multiplier=5, output_dim=5)
CELL = "lm@1/step"
RNG = np.random.default_rng(23)


def _inputs(n: int) -> list[int]:
    return RNG.integers(0, LM.vocab_size, n).tolist()


def _overlapped(events: list[tuple[str, int]]) -> int:
    """How many plans were launched before the plan before them was waited for."""
    at = {e: i for i, e in enumerate(events)}
    return sum(
        1
        for (kind, n), i in at.items()
        if kind == "launch" and n > 0 and i < at.get(("wait", n - 1), len(events))
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("max_steps_per_plan", [1, 8])
def test_plans_overlap_and_every_stream_is_exact(mode: str, max_steps_per_plan: int) -> None:
    config = engine_config(mode, max_steps_per_plan=max_steps_per_plan, overlap_steps=True)
    requests = [
        InferRequest(
            "lm",
            _inputs(int(RNG.integers(1, 30))),
            top_k=int(RNG.choice([0, 3])),
            return_vectors=bool(RNG.integers(0, 2)),
        )
        for _ in range(12)
    ]

    async def main() -> None:
        async with serving(config, [LM]) as (engine, _):
            start = free_slots(engine)
            got = await asyncio.gather(*(collect(engine.submit(r)) for r in requests))
            fake = fake_executor(engine)
            assert free_slots(engine) == start
            assert fake.num_in_flight == 0
            launches = [n for kind, n in fake.events if kind == "launch"]
            waits = [n for kind, n in fake.events if kind == "wait"]
            assert sorted(waits) == launches == list(range(len(launches)))
            # The point of it: plans were queued while the one before was on the device.
            assert _overlapped(fake.events) > 0, fake.events
            assert engine.workers[0].stats.num_steps == len(launches)
        for request, outputs in zip(requests, got, strict=True):
            assert_matches_alone(LM, request.inputs, outputs)
            assert all((o.vector is None) != request.return_vectors for o in outputs)

    asyncio.run(main())


def test_without_overlap_every_plan_is_waited_for_at_once() -> None:
    """The control: the same engine with ``overlap_steps`` off never calls ``launch``."""
    config = engine_config("cellular", max_steps_per_plan=1)

    async def main() -> None:
        async with serving(config, [LM]) as (engine, _):
            await asyncio.gather(
                *(collect(engine.submit(InferRequest("lm", _inputs(9)))) for _ in range(6))
            )
            assert fake_executor(engine).events == []
            assert engine.workers[0].stats.num_steps > 0

    asyncio.run(main())


def test_the_fakes_results_are_poison_until_waited_for() -> None:
    """What makes the exact comparisons above able to fail: a result read before ``wait``
    holds no output, score or id the reference could match."""
    config = engine_config("cellular", overlap_steps=True)

    async def main() -> None:
        async with serving(config, [LM]) as (engine, _):
            fake = fake_executor(engine)
            x = _inputs(4)
            slot = 100  # any row past the reserved ones: the launch runs the plan
            plan = StepPlan(
                cell_type=CELL,
                requests=[None],
                nodes=[0],
                emits=[True],
                inputs=np.array([x[0]], dtype=np.int64),
                read_slots=np.array([[0]], dtype=np.int64),
                write_slots=np.array([slot % 16 + 2], dtype=np.int64),
                top_k=3,
            )
            launched = fake.launch(plan)
            assert isinstance(launched, FakeLaunch)
            assert launched.result.outputs is not None
            assert launched.result.top_ids is not None
            assert np.isnan(launched.result.outputs).all()
            assert (launched.result.top_ids == -1).all()
            launched.wait()
            want = LM.reference(InferRequest("lm", x))[0]
            assert launched.result.outputs[0].tolist() == want.tolist()
            assert (launched.result.top_ids >= 0).all()

    asyncio.run(main())


def test_a_cell_that_feeds_back_is_waited_for_before_the_next_launch() -> None:
    """A decoder's next step depends on the token it just emitted, so the worker waits for
    its plan before updating the scheduler; plans of other cells still overlap."""
    config = engine_config("cellular", max_steps_per_plan=1, overlap_steps=True)
    lm_x = [_inputs(15) for _ in range(4)]
    other_x = [RNG.integers(0, OTHER.vocab_size, 15).tolist() for _ in range(4)]

    async def main() -> None:
        async with serving(config, [LM, OTHER]) as (engine, gate):
            fake = fake_executor(engine)
            fake.feeding.add(CELL)
            streams = [engine.submit(InferRequest("lm", x)) for x in lm_x]
            streams += [engine.submit(InferRequest("other", x)) for x in other_x]
            got = [await collect(s) for s in streams]
            at = {e: i for i, e in enumerate(fake.events)}
            cells = [s.cell_type for s in gate.steps]
            for n, cell in enumerate(cells):
                if cell == CELL and ("launch", n + 1) in at:
                    assert at[("wait", n)] < at[("launch", n + 1)], n
            assert _overlapped(fake.events) > 0  # the other cell's plans did overlap
        for x, outputs in zip(lm_x, got[:4], strict=True):
            assert_matches_alone(LM, x, outputs)
        for x, outputs in zip(other_x, got[4:], strict=True):
            assert_matches_alone(OTHER, x, outputs)

    asyncio.run(main())


def test_a_plan_that_fails_when_waited_for_fails_its_requests_and_only_those() -> None:
    """The failed plan holds "bad"'s third step and "last"'s last: the early update had
    ended "last" well, but nobody had seen it, so it fails too. "after" comes later and
    completes; so do requests sent once the failure is over, on the freed slots."""
    config = engine_config("cellular", max_batch=4, max_steps_per_plan=1, overlap_steps=True)
    x = {"bad": _inputs(20), "last": _inputs(3)}
    after_x = _inputs(6)

    fired: list[StepPlan] = []

    def poisoned(plan: StepPlan) -> bool:
        """The first plan with "bad"'s third step. The next plan, queued before this one
        was waited for, holds "bad" too; it must run harmlessly (the update skips a row
        whose request has ended), so it is not made to fail as well."""
        if not fired and holds(plan, "bad", min_emitted=2):
            fired.append(plan)
            return True
        return False

    async def main() -> None:
        async with serving(config, [LM], gated=True) as (engine, gate):
            start = free_slots(engine)
            fake = fake_executor(engine)
            fake.fail_wait_when = poisoned
            streams = {
                rid: engine.submit(InferRequest("lm", xs, request_id=rid)) for rid, xs in x.items()
            }
            gate.open()
            results = {rid: await drain(s) for rid, s in streams.items()}
            for rid, (outputs, error) in results.items():
                assert isinstance(error, ExecutionFailedError), rid
                assert error.code is Code.INTERNAL
                assert "injected device failure" in error.message
                assert len(outputs) == 2, rid  # the failed plan's outputs never streamed
                assert_prefix_of_alone(LM, x[rid], outputs)
            fake.fail_wait_when = None
            assert_matches_alone(
                LM, after_x, await collect(engine.submit(InferRequest("lm", after_x)))
            )
            again = {rid: engine.submit(InferRequest("lm", xs)) for rid, xs in x.items()}
            for rid, stream in again.items():
                assert_matches_alone(LM, x[rid], await collect(stream))
            assert engine.workers[0].stats.num_failed_steps == 1
            assert engine.num_live == 0
            assert free_slots(engine) == start
            assert fake.num_in_flight == 0

    asyncio.run(main())


def test_a_model_is_removed_only_with_no_plan_in_flight() -> None:
    """Unloading runs on the worker between steps; with a plan still on the device its
    state pool would be freed under it. The fake raises if that happens, which would fail
    the unload."""
    config = engine_config("cellular", max_steps_per_plan=1, overlap_steps=True)
    lm_x = _inputs(30)

    async def main() -> None:
        async with serving(config, [LM, OTHER]) as (engine, _):
            lm = engine.submit(InferRequest("lm", lm_x))
            other = engine.submit(InferRequest("other", [1, 2, 3]))
            assert len(await collect(other)) == 3
            await engine.remove_models(["other@1"])  # while "lm" streams, plan after plan
            assert_matches_alone(LM, lm_x, await collect(lm))
            fake = fake_executor(engine)
            assert len(fake.removed) == 1
            assert _overlapped(fake.events) > 0

    asyncio.run(main())
