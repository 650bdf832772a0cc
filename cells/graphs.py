"""One cell type's single step, gather to scatter, at fixed batch sizes: captured as CUDA
graphs on a GPU, so a step costs one graph launch instead of tens of kernel launches
from Python.

A graph replays the exact kernels it captured, on the exact tensors: so each batch size
gets its own graph (sizes are bucketed to powers of two, at most twice the rows a plan
needs), and a step's inputs and slot rows are copied into the graph's static buffers
first. The rows past a plan's own read the pool's zero row and write its scratch row (the
scheduler reserves both), so padding rows never touch a request's state; their outputs
are never read. Only ``writes`` must be reset for each step: a stale read or input of an
earlier, larger step reads a real state and computes garbage that nobody reads, but a
stale write would overwrite a live request's state.

On the CPU there is nothing to capture: ``capture=False`` runs the same static buffers
eagerly, which is slower than the plain step and exists so that the CPU tests cover the
padding and slicing that the GPU path relies on.

Multi-step plans (``forward_run``) are not graphed: their length and each row's steps
vary per plan, and one fused call already costs the host one launch per layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cells.base import Cell
from cells.pool import StatePool

if TYPE_CHECKING:
    from torch.cuda import _POOL_HANDLE


def bucket(batch: int) -> int:
    """The graph size a ``batch``-row step runs at: the next power of two."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return 1 << (batch - 1).bit_length()


class StepGraph:
    """One cell type's step at one batch size, over static input, slot and output buffers."""

    def __init__(
        self,
        cell: Cell,
        pool: StatePool,
        size: int,
        input_shape: tuple[int, ...],
        input_dtype: torch.dtype,
        *,
        zero_slot: int,
        scratch_slot: int,
        capture: bool,
        memory_pool: _POOL_HANDLE | None = None,
    ) -> None:
        device = pool.device
        self._scratch = scratch_slot
        self.size = size
        self._cell = cell
        self._pool = pool
        self._inputs = torch.zeros((size, *input_shape), dtype=input_dtype, device=device)
        self._reads = torch.full((size, cell.arity), zero_slot, dtype=torch.int64, device=device)
        self._writes = torch.full((size,), scratch_slot, dtype=torch.int64, device=device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._outputs: torch.Tensor | None = None
        self._states: tuple[torch.Tensor, ...] = ()
        if capture:
            self._capture(memory_pool)

    def _body(self) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        reads = self._reads[:, 0] if self._cell.arity == 1 else self._reads
        outputs, states = self._cell(self._inputs, self._pool.gather(reads))
        self._pool.scatter(self._writes, states)
        return outputs, states

    def _capture(self, memory_pool: _POOL_HANDLE | None) -> None:
        # Warm up on a side stream first (cuBLAS workspaces, the allocator), as torch's
        # CUDA graph notes require; every buffer holds padding, so the warm-up and the
        # capture read the zero row and write only the scratch row.
        device = self._pool.device
        side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._body()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a model loading on another thread may allocate meanwhile.
        with torch.cuda.graph(graph, pool=memory_pool, capture_error_mode="thread_local"):
            self._outputs, self._states = self._body()
        self._graph = graph

    def run(
        self, inputs: torch.Tensor, reads: torch.Tensor, writes: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """One step of ``len(inputs)`` rows (at most ``size``): their outputs and new
        states, views of the static buffers valid until this graph runs again."""
        n = inputs.shape[0]
        if n > self.size:
            raise ValueError(f"{n} rows do not fit a step graph of {self.size}")
        self._inputs[:n].copy_(inputs, non_blocking=True)
        self._reads[:n].copy_(reads, non_blocking=True)
        self._writes[:n].copy_(writes, non_blocking=True)
        self._writes[n:].fill_(self._scratch)
        if self._graph is None:
            self._outputs, self._states = self._body()
        else:
            self._graph.replay()
        assert self._outputs is not None
        return self._outputs[:n], tuple(s[:n] for s in self._states)


class StepGraphs:
    """A device's step graphs, made on first use per (cell type, bucket), sharing one CUDA
    memory pool: they run one at a time, on one stream, and each step's outputs are read
    (copied to the host) before the next step runs."""

    def __init__(
        self, device: torch.device, *, zero_slot: int, scratch_slot: int, capture: bool
    ) -> None:
        """``zero_slot``, ``scratch_slot``: the pool rows the scheduler keeps zero and
        never reads, where padding rows read and write."""
        self._slots = {"zero_slot": zero_slot, "scratch_slot": scratch_slot}
        self._capture = capture
        self._graphs: dict[tuple[str, int], StepGraph] = {}
        self._memory_pool = torch.cuda.graph_pool_handle() if capture else None
        self.device = device

    def __len__(self) -> int:
        return len(self._graphs)

    def sizes(self, cell_type: str) -> list[int]:
        """The batch sizes captured for ``cell_type`` so far."""
        return sorted(size for name, size in self._graphs if name == cell_type)

    def run(
        self,
        cell_type: str,
        cell: Cell,
        pool: StatePool,
        inputs: torch.Tensor,
        reads: torch.Tensor,
        writes: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        key = (cell_type, bucket(inputs.shape[0]))
        graph = self._graphs.get(key)
        if graph is None:
            graph = StepGraph(
                cell,
                pool,
                key[1],
                tuple(inputs.shape[1:]),
                inputs.dtype,
                **self._slots,
                capture=self._capture,
                memory_pool=self._memory_pool,
            )
            self._graphs[key] = graph
        return graph.run(inputs, reads, writes)

    def drop(self, cell_type: str) -> None:
        """Forget ``cell_type``'s graphs (its cell and pool are going away)."""
        for key in [k for k in self._graphs if k[0] == cell_type]:
            del self._graphs[key]
