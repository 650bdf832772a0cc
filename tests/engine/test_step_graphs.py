"""Step graphs (``--cuda-graphs``): one-step plans through static buffers at power-of-two
batch sizes. On the CPU the buffers run eagerly, so these tests cover what the captured
CUDA graphs rely on (padding rows that read the zero row and write only the scratch row,
slicing a bucket's outputs back to the plan's rows, a smaller step after a larger one)
without a GPU; the ``gpu`` tests run the same checks with real capture."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from harness import collect, engine_config, make_inputs, serve_staggered, serving, torch_executor
from reference import assert_matches_alone
from test_devices import LM, VEC, check_families, staggered_workload

from batchmaker import EngineConfig, InferRequest
from cells import RecurrentStackCell, StatePool
from cells.graphs import StepGraph, StepGraphs, bucket
from scheduler import SCRATCH_SLOT, ZERO_SLOT


def test_buckets_are_the_next_power_of_two() -> None:
    assert [bucket(b) for b in (1, 2, 3, 4, 5, 33, 64, 65)] == [1, 2, 4, 4, 8, 64, 64, 128]
    with pytest.raises(ValueError, match=">= 1"):
        bucket(0)


def _cell_and_pool(device: str = "cpu") -> tuple[RecurrentStackCell, StatePool]:
    torch.manual_seed(0)
    cell = RecurrentStackCell("lstm", hidden_size=6, vocab_size=9, output_dim=5).eval()
    return cell.to(device), StatePool(cell.state_specs, 12, device)


def _graph(cell: RecurrentStackCell, pool: StatePool, size: int, capture: bool) -> StepGraph:
    return StepGraph(
        cell,
        pool,
        size,
        (),
        torch.int64,
        zero_slot=ZERO_SLOT,
        scratch_slot=SCRATCH_SLOT,
        capture=capture,
    )


def check_a_smaller_step_leaves_the_larger_ones_rows_alone(device: str, capture: bool) -> None:
    """A 1-row step after 4-row ones in the same 4-row graph: the 3 rows it does not use
    must write the scratch row, not the slots the 4-row step wrote last (which, rerun from
    the stale reads, would step those requests a second time)."""
    cell, pool = _cell_and_pool(device)
    graph = _graph(cell, pool, 4, capture)

    def ids(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=device)

    with torch.inference_mode():
        out4, _ = graph.run(ids([1, 2, 3, 4]), ids([[0], [0], [0], [0]]), ids([2, 3, 4, 5]))
        assert out4.shape == (4, 5)
        graph.run(ids([1, 2, 3, 4]), ids([[2], [3], [4], [5]]), ids([2, 3, 4, 5]))
        after_four = [t.clone() for t in pool.tensors]
        out1, states1 = graph.run(ids([7]), ids([[2]]), ids([6]))
        assert out1.shape == (1, 5)
        assert states1[0].shape == (1, 1, 6)
        # Rows 2-5 keep what the 4-row step wrote; row 6 is the new step's; row 0 is zero.
        for before, now in zip(after_four, pool.tensors, strict=True):
            assert torch.equal(before[2:6], now[2:6])
            assert not torch.equal(before[6], now[6])
            assert not now[ZERO_SLOT].any()
        # And the 1-row step is the plain step from slot 2's state.
        want, _ = cell(ids([7]), pool.gather(ids([2])))
        assert torch.allclose(out1, want, atol=1e-6)


def test_a_smaller_step_leaves_the_larger_ones_rows_alone() -> None:
    check_a_smaller_step_leaves_the_larger_ones_rows_alone("cpu", capture=False)


def test_a_step_larger_than_its_graph_is_refused() -> None:
    cell, pool = _cell_and_pool()
    graph = _graph(cell, pool, 2, capture=False)
    three = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="do not fit"):
        graph.run(three, three.view(3, 1), three)


def test_graphs_are_made_per_cell_type_and_bucket_and_dropped_with_the_cell() -> None:
    cell, pool = _cell_and_pool()
    graphs = StepGraphs(
        torch.device("cpu"), zero_slot=ZERO_SLOT, scratch_slot=SCRATCH_SLOT, capture=False
    )
    with torch.inference_mode():
        for n in (1, 3, 4, 2):
            rows = torch.arange(2, 2 + n)
            graphs.run("m/step", cell, pool, rows % 9, torch.zeros(n, 1, dtype=torch.int64), rows)
    assert graphs.sizes("m/step") == [1, 2, 4]
    graphs.drop("m/step")
    assert len(graphs) == 0


def serve_with_graphs(device: str, mode: str) -> list[int]:
    """The staggered workload (joins and leaves change the batch every few steps), then
    two requests held back until a third is inside a step, so that the next steps batch
    them whatever the timing; all through step graphs, checked against plain torch
    alone. Returns the sizes made."""
    requests, plan = staggered_workload(seed=11)
    rng = np.random.default_rng(12)
    joiners = [InferRequest(LM.name, make_inputs(LM, rng, n)) for n in (6, 4, 5)]

    async def main() -> list[int]:
        config = engine_config(mode, devices=(device,), max_steps_per_plan=1, fused_baselines=False)
        async with serving(config, [LM, VEC], step_graphs=True) as (engine, gate):
            outputs = await serve_staggered(engine, requests, plan)
            gate.close()
            entered = gate.num_entered
            first = engine.submit(joiners[0])
            await gate.wait_entered(entered + 1)  # the worker holds a plan of ``first``
            rest = [engine.submit(r) for r in joiners[1:]]
            gate.open()
            outputs += [await collect(s) for s in (first, *rest)]
            graphs = torch_executor(engine).graphs
            assert graphs is not None
            sizes = graphs.sizes(LM.qualify("step"))
        for request, got in zip([*requests, *joiners], outputs, strict=True):
            assert_matches_alone(LM if request.model == "lm" else VEC, request.inputs, got)
        return sizes

    return asyncio.run(main())


@pytest.mark.parametrize("mode", ["cellular", "padded", "none"])
def test_every_mode_through_step_graphs_equals_plain_torch(mode: str) -> None:
    sizes = serve_with_graphs("cpu", mode)
    assert sizes, "no one-step plan ran through a step graph"
    if mode != "none":
        assert len(sizes) > 1, f"the batch never changed bucket: {sizes}"


def test_the_engine_makes_step_graphs_only_on_cuda_devices() -> None:
    with pytest.raises(ValueError, match="needs a CUDA device"):
        EngineConfig(cuda_graphs=True)


# ---- the same on a GPU, captured ----------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
def test_captured_graphs_leave_the_larger_steps_rows_alone() -> None:
    check_a_smaller_step_leaves_the_larger_ones_rows_alone("cuda", capture=True)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("mode", ["cellular", "padded", "none"])
def test_captured_graphs_equal_plain_torch(mode: str) -> None:
    assert serve_with_graphs("cuda", mode)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("mode", ["cellular", "level"])
def test_captured_graphs_serve_seq2seq_and_trees(mode: str) -> None:
    check_families("cuda", mode, 1e-4, step_graphs=True)


@pytest.mark.gpu
@needs_cuda
def test_captured_graphs_with_overlapped_steps_serve_seq2seq_and_trees() -> None:
    """A graph's outputs are views of its static buffers: with overlap, plan k+1's replay
    is queued before plan k's results are waited for, so only the stream's order keeps
    k's copies to the host ahead of k+1's writes."""
    check_families("cuda", "cellular", 1e-4, step_graphs=True, overlap=True)


@pytest.mark.parametrize("overlap", [False, True], ids=["plan-by-plan", "overlapped"])
@pytest.mark.parametrize("mode", ["cellular", "level"])
def test_step_graphs_serve_seq2seq_and_trees(mode: str, overlap: bool) -> None:
    check_families("cpu", mode, 1e-5, step_graphs=True, overlap=overlap)
