"""Every batching mode gives every request exactly what plain torch gives it alone.

Requests of random lengths arrive at random steps of earlier requests (each
submission waits until an earlier stream has produced a chosen number of
outputs), so they join and leave running batches at every point.
"""

from __future__ import annotations

import asyncio
import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from refs import TOL, config, max_err, run, run_alone, small_model

from batchmaker import Engine, InferRequest, SequenceModel

MODES = ("cellular", "padded", "none")


@functools.cache
def model(kind: str, num_layers: int, vectors: bool) -> SequenceModel:
    return small_model(kind, num_layers=num_layers, vectors=vectors)


def make_inputs(m: SequenceModel, rng: np.random.Generator, n: int) -> list[int] | np.ndarray:
    if m.cell.input_kind == "tokens":
        return rng.integers(0, m.cell.input_dim, n).tolist()
    return rng.standard_normal((n, m.cell.input_dim)).astype(np.float32)


async def serve_staggered(
    engine: Engine, requests: list[InferRequest], gates: list[tuple[int, int]]
) -> list[np.ndarray]:
    """Submit request j once request ``gates[j][0]`` has produced ``gates[j][1]`` outputs."""
    outs: list[list[np.ndarray]] = [[] for _ in requests]
    done = [False] * len(requests)
    progress = asyncio.Condition()

    async def consume(j: int) -> None:
        stream = engine.submit(requests[j])
        async for step in stream:
            assert step.step == len(outs[j])
            assert step.vector is not None
            outs[j].append(step.vector)
            async with progress:
                progress.notify_all()
        done[j] = True
        async with progress:
            progress.notify_all()

    tasks = []
    for j in range(len(requests)):
        if j:
            parent, k = gates[j]
            async with progress:
                await progress.wait_for(lambda p=parent, k=k: done[p] or len(outs[p]) >= k)
        tasks.append(asyncio.create_task(consume(j)))
    await asyncio.gather(*tasks)
    return [np.stack(o) for o in outs]


@st.composite
def workloads(draw: st.DrawFn) -> tuple[list[int], list[tuple[int, int]], int]:
    n = draw(st.integers(1, 7))
    lengths = draw(st.lists(st.integers(1, 30), min_size=n, max_size=n))
    gates = [(0, 0)] + [
        (draw(st.integers(0, j - 1)), draw(st.integers(0, 12))) for j in range(1, n)
    ]
    return lengths, gates, draw(st.integers(0, 2**31 - 1))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("kind", "num_layers", "vectors"),
    [
        ("lstm", 1, False),
        ("lstm", 2, False),
        ("gru", 2, False),
        ("gru", 1, True),
        ("lstm", 2, True),
    ],
)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workload=workloads())
def test_every_mode_matches_plain_torch_alone(
    mode: str, kind: str, num_layers: int, vectors: bool, workload: tuple
) -> None:
    lengths, gates, seed = workload
    m = model(kind, num_layers, vectors)
    rng = np.random.default_rng(seed)
    requests = [InferRequest(m.name, make_inputs(m, rng, n)) for n in lengths]

    async def main() -> list[np.ndarray]:
        async with Engine(config(mode), [m]) as engine:
            got = await serve_staggered(engine, requests, gates)
            stats = engine.device_stats()[0]
            assert stats.num_live == 0
            assert set(stats.num_free_slots.values()) == {64}
            if mode == "none":
                assert all(s.num_rows == s.num_steps for s in stats.worker.per_cell_type.values())
            return got

    got = run(main())
    for r, out in zip(requests, got, strict=True):
        want = run_alone(m, r.inputs)
        assert out.shape == want.shape
        assert max_err(out, want) < TOL


def test_cellular_really_batches_across_requests() -> None:
    """The property test would pass with batch size 1; this pins that rows really share steps."""
    m = model("lstm", 2, False)
    rng = np.random.default_rng(0)
    requests = [InferRequest(m.name, make_inputs(m, rng, 20)) for _ in range(8)]

    async def main() -> tuple[list, int, int]:
        async with Engine(config("cellular", max_batch=8), [m]) as engine:
            got = await asyncio.gather(*(engine.infer(r) for r in requests))
            w = engine.device_stats()[0].worker
            return got, w.num_steps, w.num_rows

    got, steps, rows = run(main())
    assert rows == 160
    assert steps < 160 / 2  # mean batch above 2: requests shared cell executions
    for r, outs in zip(requests, got, strict=True):
        assert max_err(np.stack([o.vector for o in outs]), run_alone(m, r.inputs)) < TOL


def test_padded_answers_only_at_the_end_and_pads_to_the_longest() -> None:
    m = model("gru", 2, False)
    short, long = [1, 2, 3], list(range(15))

    async def main() -> tuple[int, int, int, int]:
        async with Engine(config("padded", padded_timeout_s=0.05), [m]) as engine:
            s1 = engine.submit(InferRequest(m.name, short))
            s2 = engine.submit(InferRequest(m.name, long))
            first = await s1.next_chunk()
            # The short request's outputs arrive all at once, with the long one's.
            assert s2.done or len(await s2.next_chunk()) == len(long)
            w = engine.device_stats()[0].worker.per_cell_type[m.qualify("step")]
            return len(first), w.num_steps, w.num_rows, w.num_padding_rows

    n_first, steps, rows, padding = run(main())
    assert n_first == len(short)
    assert steps == len(long)  # one padded batch, run to its longest member
    assert rows == len(short) + len(long)
    assert padding == len(long) - len(short)


def test_top_k_matches_the_vector() -> None:
    m = model("lstm", 1, False)

    async def main() -> list:
        async with Engine(config(), [m]) as engine:
            return await engine.infer(InferRequest(m.name, [3, 1, 4, 1, 5], top_k=4))

    for out in run(main()):
        order = np.argsort(-out.vector, kind="stable")[:4]
        assert out.top_ids.tolist() == order.tolist()
        np.testing.assert_allclose(out.top_scores, out.vector[order], rtol=0, atol=0)
