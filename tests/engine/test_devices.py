"""Devices: every other engine test runs on ``devices=("cpu",)``; here the same
correctness check runs on CUDA when there is one (``-m gpu``), and device
configuration errors are caught before anything starts."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from harness import Arrival, engine_config, make_inputs, serve_staggered, serving, small_model
from reference import assert_matches_alone

from batchmaker import Engine, EngineConfig, InferRequest
from batchmaker.models.seq2seq import seq2seq_model
from batchmaker.models.sequence import recurrent_model
from batchmaker.models.tree import tree_model
from batchmaker.runtime.engine import scheduler_parts
from batchmaker.runtime.executor import CellSet
from batchmaker.runtime.torch_executor import TorchExecutor
from batchmaker.types import TreeInput
from scheduler import CellularScheduler, ManualClock, SchedRequest

LM = small_model("lstm", num_layers=2, name="lm")
VEC = small_model("gru", vectors=True, name="vec")
S2S = seq2seq_model("s2s", num_layers=2, seed=5, max_decode_len=16)
TREE = tree_model("tree", seed=6)


def staggered_workload(seed: int) -> tuple[list[InferRequest], list[Arrival]]:
    rng = np.random.default_rng(seed)
    requests = [
        InferRequest(m.name, make_inputs(m, rng, n), top_k=k)
        for m, n, k in ((LM, 1, 0), (VEC, 7, 3), (LM, 19, 1), (LM, 33, 5), (VEC, 12, 0))
    ]
    plan = [Arrival(0, 0), Arrival(0, 0), Arrival(1, 3), Arrival(2, 5), Arrival(3, 20)]
    return requests, plan


def check_device(device: str, mode: str, *, overlap: bool = False) -> None:
    requests, plan = staggered_workload(seed=3)

    async def main() -> None:
        config = engine_config(mode, devices=(device,), overlap_steps=overlap)
        async with serving(config, [LM, VEC]) as (engine, _):
            (stats,) = engine.device_stats()
            assert stats.device == device
            outputs = await serve_staggered(engine, requests, plan)
        for request, got in zip(requests, outputs, strict=True):
            assert_matches_alone(LM if request.model == "lm" else VEC, request.inputs, got)

    asyncio.run(main())


@pytest.mark.parametrize("overlap", [False, True], ids=["plan-by-plan", "overlapped"])
@pytest.mark.parametrize("mode", ["cellular", "padded", "none"])
def test_cpu_device_serves_and_reports_itself(mode: str, overlap: bool) -> None:
    check_device("cpu", mode, overlap=overlap)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["cellular", "padded", "none"])
def test_cuda_device_equals_plain_torch_run_alone(mode: str) -> None:
    check_device("cuda", mode)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["cellular", "padded", "none"])
def test_cuda_overlapped_steps_equal_plain_torch_run_alone(mode: str) -> None:
    """``--overlap-steps`` on a GPU, where it matters: results read from pinned buffers
    only after each plan's event, plan k+1 queued before plan k is waited for."""
    check_device("cuda", mode, overlap=True)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
            ],
        ),
    ],
)
def test_an_unchanged_batch_copies_its_slots_to_the_device_once(device: str) -> None:
    """The persistent batch hands every plan the same slot arrays until a request joins or
    leaves; the executor then reuses their device copies, and the outputs stay those of
    each request alone."""
    model = recurrent_model("lm", "lstm", vocab_size=30, hidden_size=8, output_dim=30, seed=2)
    config = EngineConfig(max_batch=4, num_slots=8)
    specs, pools = scheduler_parts([model], config)
    sched = CellularScheduler(specs, pools, ManualClock(), max_num_live_requests=8)
    executor = TorchExecutor(device)
    executor.load_cells(CellSet.of([model], num_slots=8))()
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 30, n) for n in (5, 9, 9)]
    rows: dict[str, list[np.ndarray]] = {}
    for i, x in enumerate(inputs[:2]):
        request = InferRequest("lm", x)
        sched.add_request(SchedRequest(f"r{i}", model.build_graph(request)))
    copies = []
    for step in range(8):
        if step == 3:  # a join: new arrays, copied again
            sched.add_request(SchedRequest("r2", model.build_graph(InferRequest("lm", inputs[2]))))
        plan = sched.schedule()
        assert plan is not None
        result = executor.execute(plan)
        copies.append(executor._slots[plan.cell_type][2])
        outcome = sched.update_from_output(plan, result)
        for e in outcome.emissions:
            assert result.outputs is not None
            rows.setdefault(e.request.request_id, []).append(result.outputs[e.row].copy())
    # Plan 0 reads the zero state; 1 and 2 share one batch; 3 seats r2, 4 is past r2's
    # zero-state read, r0 (5 steps) left after plan 4; 6 and 7 share one batch again.
    assert [copies[i] is copies[i - 1] for i in range(1, 8)] == [
        False, True, False, False, False, True, True
    ]  # fmt: skip
    for i, x in enumerate(inputs):
        want = model.reference(InferRequest("lm", x))
        got = np.stack(rows[f"r{i}"])
        assert got.shape == (min(len(x), 8 - 3 * (i == 2)), want.shape[1])
        np.testing.assert_allclose(got, want[: len(got)], atol=1e-5)


def test_a_cuda_device_without_cuda_is_refused_at_construction() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        Engine(engine_config(devices=("cuda",)), [LM])


@pytest.mark.parametrize(
    ("devices", "says"),
    [((), "at least one"), (("tpu",), "'tpu'"), (("cpu", "cpu"), "duplicates")],
)
def test_bad_device_lists_are_config_errors(devices: tuple[str, ...], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        EngineConfig(devices=devices)


def check_families(
    device: str, mode: str, tol: float, *, step_graphs: bool = False, overlap: bool = False
) -> None:
    """Seq2seq (tokens fed back through the device's int64 state) and trees (gathers of
    ``[B, 2]`` child slots) on ``device`` equal plain torch on the CPU, request by request."""
    rng = np.random.default_rng(7)
    requests = [InferRequest("s2s", rng.integers(0, 40, n).tolist(), top_k=1) for n in (1, 9, 4)]
    for n in (1, 2, 7, 15):
        children: list[list[int]] = [[] for _ in range(n)]
        for child in range(1, n):
            parent = int(rng.integers(0, child))
            while len(children[parent]) == 2:
                parent = (parent + 1) % child
            children[parent].append(child)
        tokens = rng.integers(0, 16, n).tolist()
        requests.append(InferRequest("tree", TreeInput(tokens, children), top_k=1))

    async def main() -> None:
        config = engine_config(mode, devices=(device,), overlap_steps=overlap)
        async with serving(config, [S2S, TREE], step_graphs=step_graphs) as (engine, _):
            streams = [engine.submit(r) for r in requests]
            outputs = [await s.collect() for s in streams]
        for request, got in zip(requests, outputs, strict=True):
            want = (S2S if request.model == "s2s" else TREE).reference(request)
            assert len(got) == len(want)
            assert [int(o.top_ids[0]) for o in got] == want.argmax(axis=1).tolist()
            assert np.abs(np.array([o.top_scores[0] for o in got]) - want.max(axis=1)).max() < tol

    asyncio.run(main())


@pytest.mark.parametrize("overlap", [False, True], ids=["plan-by-plan", "overlapped"])
@pytest.mark.parametrize("mode", ["cellular", "level"])
def test_cpu_device_serves_seq2seq_and_trees(mode: str, overlap: bool) -> None:
    check_families("cpu", mode, 1e-5, overlap=overlap)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["cellular", "padded", "level", "none"])
def test_cuda_device_serves_seq2seq_and_trees_as_plain_torch(mode: str) -> None:
    check_families("cuda", mode, 1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["cellular", "level"])
def test_cuda_overlapped_seq2seq_and_trees_equal_plain_torch(mode: str) -> None:
    """Decoders wait for their tokens, encoders and trees overlap."""
    check_families("cuda", mode, 1e-4, overlap=True)
