"""Every batching mode gives every request what plain torch gives it alone.

Requests of random lengths arrive at random points of earlier requests'
streams: request j is submitted once an earlier request has produced a drawn
number of outputs (or ended), never after a sleep. So requests join and leave
running batches at every step, in every mode, and the outputs must still equal
``run_alone`` within ``TOL``.
"""

from __future__ import annotations

import asyncio
import functools

import numpy as np
import pytest
from harness import (
    NUM_SLOTS,
    Arrival,
    GatedExecutor,
    collect,
    engine_config,
    make_inputs,
    serve_staggered,
    serving,
    small_model,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import TOL, assert_matches_alone, max_abs_diff, run_alone

from batchmaker import Engine, EngineConfig, InferRequest, SequenceModel, StepOutput

MODES = ("cellular", "padded", "none")
SHAPES = [
    (kind, num_layers, vectors)
    for kind in ("lstm", "gru")
    for num_layers in (1, 2)
    for vectors in (False, True)
]


@functools.cache
def model(kind: str, num_layers: int, vectors: bool) -> SequenceModel:
    hidden_size = 24 + 8 * num_layers
    return small_model(kind, num_layers=num_layers, vectors=vectors, hidden_size=hidden_size)


@st.composite
def arrivals(draw: st.DrawFn, n: int) -> list[Arrival]:
    return [Arrival(0, 0)] + [
        Arrival(draw(st.integers(0, j - 1)), draw(st.integers(0, 40))) for j in range(1, n)
    ]


@st.composite
def batching(draw: st.DrawFn, mode: str) -> EngineConfig:
    max_batch = draw(st.integers(1, 6))
    return engine_config(
        mode,
        max_batch=max_batch,
        padded_max_batch=draw(st.integers(1, max_batch)),
        padded_timeout_s=draw(st.sampled_from([0.0, 0.001])),
        # Multi-step plans of a few or many steps (fused whole, padded and none), or one.
        max_steps_per_plan=draw(st.sampled_from([1, 3, 32])),
        fused_baselines=draw(st.booleans()),
        # Plan k+1 while plan k is in flight (the worker's launch/settle path).
        overlap_steps=draw(st.booleans()),
    )


def check_engine_after(engine: Engine, gate: GatedExecutor, lengths: list[int], mode: str) -> None:
    """Nothing live, every slot back, every node run exactly once, batches as the mode says."""
    (stats,) = engine.device_stats()
    assert stats.num_live == 0
    assert set(stats.num_free_slots.values()) == {NUM_SLOTS}
    # Every input step ran exactly once, in one-step plans or in runs.
    cell_steps = sum(s.num_cell_steps for s in gate.steps)
    assert cell_steps == sum(lengths) == stats.worker.num_rows
    for s in gate.steps:
        assert len(s.request_ids) <= engine.config.max_batch
        real = [r for r in s.request_ids if r is not None]
        assert len(real) == len(set(real)), "a request ran twice in one step"
        if mode == "cellular":
            assert None not in s.request_ids, "cellular batching never pads"
        if mode == "padded":
            assert len(s.request_ids) <= engine.config.padded_max_batch
        if mode == "none":
            assert len(s.request_ids) == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("kind", "num_layers", "vectors"),
    SHAPES,
    ids=[f"{k}{n}-{'vec' if v else 'tok'}" for k, n, v in SHAPES],
)
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_each_request_equals_plain_torch_run_alone(
    mode: str, kind: str, num_layers: int, vectors: bool, data: st.DataObject
) -> None:
    m = model(kind, num_layers, vectors)
    n = data.draw(st.integers(1, 6), label="num_requests")
    lengths = data.draw(st.lists(st.integers(1, 40), min_size=n, max_size=n), label="lengths")
    plan = data.draw(arrivals(n), label="arrivals")
    config = data.draw(batching(mode), label="config")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    requests = [InferRequest(m.name, make_inputs(m, rng, k)) for k in lengths]

    async def main() -> list[list[StepOutput]]:
        async with serving(config, [m]) as (engine, gate):
            got = await serve_staggered(engine, requests, plan)
            check_engine_after(engine, gate, lengths, mode)
            return got

    for request, outputs in zip(requests, asyncio.run(main()), strict=True):
        assert_matches_alone(m, request.inputs, outputs)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_many_models_share_one_engine_and_each_request_equals_run_alone(
    mode: str, data: st.DataObject
) -> None:
    """LSTM and GRU, 1 and 2 layers, tokens and vectors in one engine, requests mixed at
    random, with random top-k, priorities and whether vectors come back."""
    models = [model(*shape) for shape in SHAPES]
    n = data.draw(st.integers(1, 8), label="num_requests")
    picks = data.draw(st.lists(st.sampled_from(models), min_size=n, max_size=n), label="models")
    lengths = data.draw(st.lists(st.integers(1, 40), min_size=n, max_size=n), label="lengths")
    plan = data.draw(arrivals(n), label="arrivals")
    config = data.draw(batching(mode), label="config")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    requests = [
        InferRequest(
            m.name,
            make_inputs(m, rng, k),
            top_k=data.draw(st.integers(0, m.cell.output_dim), label="top_k"),
            return_vectors=data.draw(st.booleans(), label="return_vectors"),
            priority=data.draw(st.integers(-1, 1), label="priority"),
        )
        for m, k in zip(picks, lengths, strict=True)
    ]

    async def main() -> list[list[StepOutput]]:
        async with serving(config, models) as (engine, gate):
            got = await serve_staggered(engine, requests, plan)
            check_engine_after(engine, gate, lengths, mode)
            return got

    for m, request, outputs in zip(picks, requests, asyncio.run(main()), strict=True):
        assert all((o.vector is not None) == request.return_vectors for o in outputs)
        assert all((o.top_ids is not None) == (request.top_k > 0) for o in outputs)
        assert_matches_alone(m, request.inputs, outputs)


def test_model_reference_agrees_with_the_independent_reference() -> None:
    rng = np.random.default_rng(5)
    for shape in SHAPES:
        m = model(*shape)
        x = make_inputs(m, rng, 17)
        assert max_abs_diff(m.reference(InferRequest(m.name, x)), run_alone(m, x)) < TOL


@pytest.mark.parametrize("max_steps_per_plan", [1, 32])
def test_requests_really_share_cell_executions(max_steps_per_plan: int) -> None:
    """The properties above would pass with batches of one; this pins real batching: with
    one step per plan, 20 steps of all 8 rows; with runs, all 20 in one fused plan."""
    m = model("lstm", 2, False)
    rng = np.random.default_rng(0)
    requests = [InferRequest(m.name, make_inputs(m, rng, 20)) for _ in range(8)]
    config = engine_config(max_batch=8, max_steps_per_plan=max_steps_per_plan)

    async def main() -> None:
        async with serving(config, [m], gated=True) as (engine, gate):
            first = engine.submit(InferRequest(m.name, [1]))
            await gate.wait_entered(1)  # the worker is held inside step 1 ...
            streams = [engine.submit(r) for r in requests]  # ... while these queue up
            gate.open()
            assert len(await collect(first)) == 1
            for r, s in zip(requests, streams, strict=True):
                assert_matches_alone(m, r.inputs, await collect(s))
            if max_steps_per_plan == 1:
                assert [len(s.request_ids) for s in gate.steps] == [1] + [8] * 20
            else:
                assert [(len(s.request_ids), s.steps) for s in gate.steps] == [
                    (1, ()),
                    (8, (20,) * 8),
                ]

    asyncio.run(main())


def test_a_pinned_version_serves_its_own_weights() -> None:
    v1 = small_model("gru", name="lm", seed=1, version=1)
    v2 = small_model("gru", name="lm", seed=2, version=2)
    x = [3, 1, 4, 1, 5, 9, 2, 6]
    assert max_abs_diff(run_alone(v1, x), run_alone(v2, x)) > 1e-2

    async def main() -> None:
        async with serving(engine_config(), [v1, v2]) as (engine, _):
            latest, first, second = await asyncio.gather(
                engine.infer(InferRequest("lm", x)),
                engine.infer(InferRequest("lm", x, version=1)),
                engine.infer(InferRequest("lm", x, version=2)),
            )
        assert_matches_alone(v2, x, latest)
        assert_matches_alone(v1, x, first)
        assert_matches_alone(v2, x, second)

    asyncio.run(main())
