"""Multi-step plans through the engine, on the fake executor: a plan runs a run of each
row's steps in one call (``FakeChainModel(runs=True)``), and the engine must deliver,
cancel, expire and count exactly as it does one step at a time.

- A hypothesis property drives random requests through cellular, padded and none, with
  ``max_steps_per_plan``, the baselines' fused form and ``overlap_steps`` (the fake's
  results then land only when waited for) drawn, and with submissions,
  cancellations and deadlines landing while the gate holds a multi-step plan. Every
  request that completes streams exactly the fake's ``reference``; one cancelled or
  expired streams an exact prefix and then its error; every slot comes back.
- A request that arrives while a K-step plan is held joins the next plan: it waits for
  that plan's K steps, which is at most K-1 past the step the device was on when it
  came (counted in steps, from the gate's ``Step.steps``, not in plans).
- Delivery: one ``StepBlock`` per request per plan, contiguous, and ``next_chunk``,
  iteration and ``next_blocks`` read the same ``StepOutput``s.
- The worker's per-cell-type stats (plans, timesteps, cell-steps, padding, the
  steps-per-plan histogram) agree with the gate's log of what ran.

The fake computes a run exactly as the same steps one at a time (tests/runtime/fakes.py,
``FakeExecutor.execute``), so any difference from ``reference`` is the engine's or the
scheduler's.
"""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass

import numpy as np
import pytest
from fakes import FakeChainModel
from gate import collect, drain, free_slots, next_output
from hypothesis import given, settings
from hypothesis import strategies as st
from rig import (
    MODES,
    advance,
    assert_matches_alone,
    assert_prefix_of_alone,
    engine_config,
    serving,
    timesteps,
)

from batchmaker import DeadlineExceededError, InferRequest, RequestCancelledError
from batchmaker.runtime.worker import STEPS_PER_PLAN_BUCKETS
from batchmaker.types import StepOutput

LM = FakeChainModel("lm", runs=True)
OTHER = FakeChainModel("other", multiplier=5, output_dim=5)
"""A second model whose cell has no runs: the fake fails any plan that gives it one."""
MODELS = {"lm": LM, "other": OTHER}
CELL = "lm@1/step"
RNG = np.random.default_rng(11)
LONG = RNG.integers(0, LM.vocab_size, 40).tolist()
SHORT = RNG.integers(0, LM.vocab_size, 7).tolist()


# ---- the property ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """One request of a scenario, and when things happen to it."""

    rid: str
    model: str
    tokens: list[int]
    phase: int
    """Submitted while the gate holds the ``phase``-th plan (0: before the first)."""
    cancel: int | None
    """Cancelled at this phase, if ever."""
    timeout: float | None
    top_k: int
    return_vectors: bool
    max_output_length: int | None

    @property
    def request(self) -> InferRequest:
        return InferRequest(
            self.model,
            self.tokens,
            request_id=self.rid,
            timeout=self.timeout,
            top_k=self.top_k,
            return_vectors=self.return_vectors,
            max_output_length=self.max_output_length,
        )

    @property
    def length(self) -> int:
        """Steps it streams when it runs to its end."""
        return min(len(self.tokens), self.max_output_length or len(self.tokens))


@st.composite
def scenarios(draw):
    mode = draw(st.sampled_from(MODES))
    cap = draw(st.sampled_from([2, 5, 32]))
    fused = draw(st.booleans())
    overlap = draw(st.booleans())
    arrivals = []
    for i in range(draw(st.integers(1, 6))):
        model = draw(st.sampled_from(["lm", "lm", "other"]))
        length = draw(st.integers(1, 40))
        seed = draw(st.integers(0, 2**16))
        tokens = np.random.default_rng(seed).integers(0, LM.vocab_size, length).tolist()
        phase = draw(st.integers(0, 4))
        cancel = draw(st.none() | st.integers(phase, phase + 4))
        timeout = draw(st.none() | st.integers(1, 3).map(float))
        top_k = draw(st.sampled_from([0, 3]))
        return_vectors = draw(st.booleans())
        max_output_length = draw(st.none() | st.integers(1, 40))
        arrivals.append(
            Arrival(
                f"r{i}",
                model,
                tokens,
                phase,
                cancel,
                timeout,
                top_k,
                return_vectors,
                max_output_length,
            )
        )
    # Phases at which the manual clock moves on one second (timeouts are 1..3 s).
    ticks = draw(st.lists(st.integers(0, 8), max_size=3))
    return mode, cap, fused, overlap, arrivals, ticks


@settings(max_examples=40, deadline=None)
@given(scenario=scenarios())
def test_every_request_streams_its_reference_or_an_exact_prefix_and_its_error(scenario):
    mode, cap, fused, overlap, arrivals, ticks = scenario
    config = engine_config(
        mode, max_steps_per_plan=cap, fused_baselines=fused, overlap_steps=overlap
    )
    last = max([*(a.phase for a in arrivals), *(a.cancel or 0 for a in arrivals), *ticks])

    async def main() -> None:
        async with serving(config, [LM, OTHER], gated=True) as (engine, gate):
            start = free_slots(engine)
            streams = {}
            readers: dict[str, asyncio.Task] = {}
            cancelled: set[str] = set()

            def act(phase: int) -> None:
                """What happens at ``phase``: while the worker holds a plan, or idle."""
                for a in arrivals:
                    if a.phase == phase:
                        streams[a.rid] = engine.submit(a.request)
                        readers[a.rid] = asyncio.ensure_future(drain(streams[a.rid]))
                    if a.cancel == phase and a.rid in streams:
                        streams[a.rid].cancel()
                        cancelled.add(a.rid)
                for _ in range(ticks.count(phase)):
                    advance(engine, 1.0)

            phase = held = 0
            while True:
                act(phase)
                if held:
                    gate.allow(1)  # the plan held while the phase's events landed runs now
                entered = asyncio.ensure_future(gate.wait_entered(held + 1))
                idle = asyncio.ensure_future(asyncio.gather(*readers.values()))
                done, _ = await asyncio.wait({entered, idle}, return_when=asyncio.FIRST_COMPLETED)
                phase += 1
                if entered in done:
                    held += 1
                    continue
                entered.cancel()  # every stream ended: the worker plans nothing until told
                if phase > last:
                    break
            gate.open()

            for a in arrivals:
                model = MODELS[a.model]
                outputs, error = readers[a.rid].result()
                assert all((o.vector is None) != a.return_vectors for o in outputs)
                assert all((o.top_ids is None) == (a.top_k == 0) for o in outputs)
                if error is None:
                    assert_matches_alone(
                        model, a.tokens, outputs, max_output_length=a.max_output_length
                    )
                    capped = a.length < len(a.tokens)
                    assert streams[a.rid].finish_reason == ("length" if capped else "completed")
                    continue
                assert_prefix_of_alone(model, a.tokens, outputs)
                assert len(outputs) < a.length
                if isinstance(error, RequestCancelledError):
                    assert a.rid in cancelled
                else:
                    assert isinstance(error, DeadlineExceededError), error
                    assert a.timeout is not None
            assert engine.num_live == 0
            assert free_slots(engine) == start
            for s in gate.steps:
                assert not s.failed
                real = [r for r in s.request_ids if r is not None]
                assert len(real) == len(set(real)), "a request twice in one plan"
                if s.cell_type != CELL or (mode != "cellular" and not fused):
                    assert timesteps(s) == 1
                if mode == "cellular":
                    assert timesteps(s) <= cap
                    assert None not in s.request_ids

    asyncio.run(main())


# ---- joining mid-plan ----------------------------------------------------------------------------


@pytest.mark.parametrize("cap", [1, 2, 5, 32])
def test_a_request_arriving_mid_plan_waits_at_most_k_minus_one_steps(cap: int) -> None:
    """``a`` runs alone in runs of ``cap``; ``b`` arrives while the gate holds a's second
    plan. It joins the very next plan, so it waits exactly the held plan's K steps: the
    one the device starts as it arrives, and at most K-1 more."""
    config = engine_config("cellular", max_steps_per_plan=cap)

    async def main() -> None:
        async with serving(config, [LM], gated=True) as (engine, gate):
            sa = engine.submit(InferRequest("lm", LONG, request_id="a"))
            await gate.step()
            await gate.wait_entered(2)  # plan 2 is a's next run, planned without b
            held_k = min(cap, len(LONG) - cap)
            sb = engine.submit(InferRequest("lm", SHORT, request_id="b"))
            gate.open()
            assert_matches_alone(LM, LONG, await collect(sa))
            assert_matches_alone(LM, SHORT, await collect(sb))
            assert gate.steps[1].steps == ((held_k,) if held_k > 1 else ())
            first_b = gate.steps_of("b")[0]
            assert first_b == 2
            waited = sum(timesteps(s) for s in gate.steps[1:first_b])
            assert waited == held_k
            assert waited - 1 <= cap - 1
            # Cell-steps, not plans: every step of both ran once.
            assert sum(s.num_cell_steps for s in gate.steps) == len(LONG) + len(SHORT)

    asyncio.run(main())


# ---- delivery ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_one_block_per_request_per_plan_and_every_reader_sees_the_same_steps(mode: str) -> None:
    """Four streams of the same input run in plans of the same shape (together, or in
    ``none`` one after another), so their blocks line up: one is read with
    ``next_blocks``, one with ``next_chunk``, one by iteration and one by one step then
    ``next_blocks`` (the rest of the first block, then the others)."""
    tokens = LONG[:11]
    config = engine_config(mode, max_steps_per_plan=4, padded_max_batch=4)

    async def main() -> None:
        async with serving(config, [LM], gated=True) as (engine, gate):
            blocker = engine.submit(InferRequest("lm", [1], request_id="blocker"))
            await gate.wait_entered(1)  # the four are queued before plan 2 forms
            streams = [
                engine.submit(InferRequest("lm", tokens, request_id=f"s{i}", top_k=3))
                for i in range(4)
            ]
            gate.open()
            await collect(blocker)
            await engine.shutdown(grace=None)  # read nothing until every stream has ended
            assert all(s.done for s in streams)
            by_iteration = await collect(streams[2])
            blocks = await streams[0].next_blocks()
            chunk = await streams[1].next_chunk()
            first = await next_output(streams[3])
            rest = await streams[3].next_blocks()

            plans = [s for s in gate.steps if s.holds("s0")]
            runs = [s.steps[s.request_ids.index("s0")] if s.steps else 1 for s in plans]
            assert [(b.first_step, b.count) for b in blocks] == [
                (sum(runs[:i]), n) for i, n in enumerate(runs)
            ]
            if mode == "cellular":
                assert runs == [4, 4, 3]
            else:
                assert runs == [len(tokens)]  # the fused baselines: one plan each
            for b in blocks:
                assert b.vectors is not None
                assert b.top_ids is not None
                assert b.top_scores is not None
                assert b.vectors.shape == (b.count, LM.cell.output_dim)
                assert b.top_ids.shape == b.top_scores.shape == (b.count, 3)
            from_blocks = [o for b in blocks for o in b.steps()]
            assert_matches_alone(LM, tokens, from_blocks)
            assert_same(from_blocks, chunk)
            assert_same(from_blocks, by_iteration)
            assert (rest[0].first_step, rest[0].count) == (1, runs[0] - 1)
            assert [(b.first_step, b.count) for b in rest[1:]] == [
                (b.first_step, b.count) for b in blocks[1:]
            ]
            assert_same(from_blocks, [first] + [o for b in rest for o in b.steps()])
            assert await streams[0].next_blocks() == []

    asyncio.run(main())


def assert_same(a: list[StepOutput], b: list[StepOutput]) -> None:
    assert [o.step for o in a] == [o.step for o in b]
    for x, y in zip(a, b, strict=True):
        for field in ("vector", "top_ids", "top_scores"):
            u, v = getattr(x, field), getattr(y, field)
            assert (u is None) == (v is None)
            if u is not None:
                assert np.array_equal(u, v), (x.step, field)


# ---- stats ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_the_workers_stats_count_plans_timesteps_and_cell_steps_as_the_gate_saw_them(
    mode: str,
) -> None:
    lengths = [12, 3, 7, 1]
    config = engine_config(mode, max_steps_per_plan=5)

    async def main() -> None:
        async with serving(config, [LM], gated=True) as (engine, gate):
            blocker = engine.submit(InferRequest("lm", [1]))
            await gate.wait_entered(1)
            streams = [engine.submit(InferRequest("lm", LONG[:n])) for n in lengths]
            gate.open()
            await collect(blocker)
            for n, s in zip(lengths, streams, strict=True):
                assert_matches_alone(LM, LONG[:n], await collect(s))
            worker = engine.device_stats()[0].worker
            stats = worker.per_cell_type[CELL]
            plans = gate.steps
            assert worker.num_steps == stats.num_plans == len(plans)
            assert stats.num_steps == sum(timesteps(s) for s in plans)
            assert stats.num_rows == sum(s.num_cell_steps for s in plans) == sum(lengths) + 1
            real_rows = sum(sum(r is not None for r in s.request_ids) for s in plans)
            assert stats.num_batch_rows == real_rows
            assert sum(stats.batch_size_counts) == len(plans)
            want = [0] * len(stats.steps_per_plan_counts)
            for s in plans:
                want[bisect.bisect_left(STEPS_PER_PLAN_BUCKETS, timesteps(s))] += 1
            assert stats.steps_per_plan_counts == want
            if mode == "padded":
                # One batch of three padded to its longest, then the last alone.
                assert [(s.request_ids.count(None), timesteps(s)) for s in plans[1:]] == [
                    (0, 12),
                    (0, 1),
                ]
                padding = sum(len(s.request_ids) * timesteps(s) for s in plans) - (sum(lengths) + 1)
                assert stats.num_padding_rows == padding == (12 - 3) + (12 - 7)
            else:
                assert stats.num_padding_rows == 0
            if mode == "cellular":
                assert all(timesteps(s) <= 5 for s in plans)
                assert max(timesteps(s) for s in plans) == 5
            if mode == "none":
                assert [timesteps(s) for s in plans] == [1, *lengths]

    asyncio.run(main())
