"""The real executor: one device's torch cells and preallocated state pools.

It gathers states by slot row (``index_select``), runs the batched cell once,
scatters the new states back (``index_copy_``) and copies the step's outputs to
host once, not once per request. The only module of the runtime that imports
torch; ``set_cpu_threads`` is here too, for the commands that start a process.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from batchmaker.config import EngineConfig
from batchmaker.runtime.executor import CellSet, StepResult
from cells import Cell, StatePool
from cells.graphs import StepGraphs
from scheduler import NUM_RESERVED_SLOTS, SCRATCH_SLOT, ZERO_SLOT, StepPlan


def set_cpu_threads(config: EngineConfig) -> None:
    """torch's intra-op threads, when a device is the CPU: a process setting, made once by
    the command that starts the process (``serve``, ``bench``, ``demo``), not by an engine.

    ``None`` means every core but one, which is left to the event loop: on 2 cores a busy
    loop thread beside 2 OpenMP threads stalls every parallel region (docs/benchmarks.md).
    """
    if "cpu" in config.devices:
        torch.set_num_threads(config.num_threads or max(1, len(os.sched_getaffinity(0)) - 1))


class TorchExecutor:
    """Runs plans with real torch cells on one device."""

    def __init__(self, device: str, *, step_graphs: bool = False) -> None:
        """``step_graphs``: run one-step plans through ``cells.graphs`` step graphs at
        power-of-two batch sizes, captured as CUDA graphs on a GPU (``--cuda-graphs``). On
        the CPU the same static buffers run eagerly, with no gain: for the tests."""
        self.device = device
        self._device = torch.device(device)
        self._cuda = self._device.type == "cuda"
        if self._cuda and not torch.cuda.is_available():
            raise ValueError(f"devices: {device!r} requested but CUDA is not available")
        self.graphs = (
            StepGraphs(
                self._device, zero_slot=ZERO_SLOT, scratch_slot=SCRATCH_SLOT, capture=self._cuda
            )
            if step_graphs
            else None
        )
        self.cells: dict[str, Cell] = {}
        """Qualified cell type -> this device's copy of the cell."""
        self.pools: dict[str, StatePool] = {}
        self._cell_pool: dict[str, StatePool] = {}
        self._token_index: dict[str, int] = {}
        """Which new state of each cell is the token it emitted (decoders), if any."""
        self._slots: dict[str, tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]] = {}
        """Per cell type, the last plan's read and write slot arrays and their device copies.
        A persistent batch hands the same arrays to every plan while nobody joins or leaves
        (``scheduler/lanes.py``), never changed once handed out, so on a GPU they are copied
        up once per membership, not once per step."""

    def pool_of(self, cell_type: str) -> StatePool:
        """The state pool ``cell_type`` reads and writes on this device."""
        return self._cell_pool[cell_type]

    def load_cells(self, cells: CellSet) -> Callable[[], None]:
        clash = (set(cells.cells) & set(self.cells)) | (set(cells.pools) & set(self.pools))
        if clash:
            raise ValueError(f"already served: {sorted(clash)}")
        mine: dict[str, Cell] = {
            name: copy.deepcopy(cell).to(self._device) for name, cell in cells.cells.items()
        }
        pools = {
            name: StatePool(specs, NUM_RESERVED_SLOTS + cells.num_slots, self._device)
            for name, specs in cells.pools.items()
        }
        for cell in mine.values():
            cell.prepare()

        def install() -> None:
            self.pools.update(pools)
            for name, cell in mine.items():
                pool = self.pools[cells.cell_pools[name]]
                self.cells[name] = cell
                self._cell_pool[name] = pool
                if cell.token_state is not None:
                    self._token_index[name] = [s.name for s in pool.specs].index(cell.token_state)

        return install

    def remove_cells(self, cells: CellSet) -> None:
        for name in cells.cells:
            if self.graphs is not None:
                self.graphs.drop(name)
            del self.cells[name]
            del self._cell_pool[name]
            self._token_index.pop(name, None)
            self._slots.pop(name, None)
        for name in cells.pools:
            del self.pools[name]

    def feeds_back(self, cell_type: str) -> bool:
        return cell_type in self._token_index

    def execute(self, plan: StepPlan, on_launch: Callable[[], None] | None = None) -> StepResult:
        launched = self.launch(plan, on_launch)
        launched.wait()
        return launched.result

    def launch(self, plan: StepPlan, on_launch: Callable[[], None] | None = None) -> _Launched:
        """Queue ``plan`` on the device and return; on the CPU every op runs as it is
        issued, so the plan is done when this returns. On a GPU the host copies land in
        pinned buffers that ``result`` already views, and ``wait`` waits for an event."""
        cell = self.cells[plan.cell_type]
        pool = self._cell_pool[plan.cell_type]
        trials = cell.num_kernel_trials
        t0 = time.perf_counter()
        start = end = None
        if self._cuda:
            stream = torch.cuda.current_stream(self._device)
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record(stream)
        with torch.inference_mode():
            inputs = self._to_device(plan.inputs)
            reads, writes = self._slots_on_device(plan)
            offsets = None
            if plan.steps is None and self.graphs is not None:
                # Gather, step and scatter in one graph replay (on the CPU, eagerly).
                outputs, new_states = self.graphs.run(
                    plan.cell_type, cell, pool, inputs, reads, writes
                )
                if on_launch is not None:
                    on_launch()
            else:
                states = pool.gather(reads[:, 0] if cell.arity == 1 else reads)
                if on_launch is not None and not self._cuda:
                    on_launch()
                if plan.steps is None:
                    outputs, new_states = cell(inputs, states)
                else:
                    # pack_padded_sequence wants the lengths on the CPU, whatever the device.
                    lengths = torch.from_numpy(plan.steps)
                    outputs, new_states = cell.forward_run(
                        inputs, lengths, states, pad_to_longest=plan.pad_to_longest
                    )
                    offsets = np.zeros(len(plan.steps) + 1, dtype=np.int64)
                    np.cumsum(plan.steps, out=offsets[1:])
                pool.scatter(writes, new_states)
                if on_launch is not None and self._cuda:
                    on_launch()  # the step is queued on the stream; the GPU runs it meanwhile
            top_ids = top_scores = tokens = None
            k = self._token_index.get(plan.cell_type)
            if k is not None:
                tokens = self._to_host(new_states[k])
            if plan.top_k:
                top_scores_t, top_ids_t = _top_k(outputs, plan.top_k)
                top_ids, top_scores = self._to_host(top_ids_t), self._to_host(top_scores_t)
            # Dropping unwanted outputs here lets the allocator reuse their memory at once.
            host = self._to_host(outputs) if plan.wants_outputs else None
            if end is not None:
                # Every non-blocking copy above has landed once the device passes this.
                end.record(stream)
        result = StepResult(
            outputs=host,
            top_ids=top_ids,
            top_scores=top_scores,
            tokens=tokens,
            offsets=offsets,
            kernel_trial=cell.num_kernel_trials != trials,
        )
        return _Launched(result, start, end, time.perf_counter() - t0)

    def synchronize(self) -> None:
        """Wait for every kernel queued on this device (a no-op on the CPU)."""
        if self._cuda:
            torch.cuda.synchronize(self._device)

    def _slots_on_device(self, plan: StepPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """The plan's read and write slots on the device: the last plan's copies when its
        batch handed out the very same arrays (identity, not equality: the arrays are kept
        here, so an id cannot be reused while cached). On the CPU a copy costs nothing,
        and the same path runs so that every CPU test exercises it."""
        last = self._slots.get(plan.cell_type)
        if last is not None and last[0] is plan.read_slots and last[1] is plan.write_slots:
            return last[2], last[3]
        reads, writes = self._to_device(plan.read_slots), self._to_device(plan.write_slots)
        self._slots[plan.cell_type] = (plan.read_slots, plan.write_slots, reads, writes)
        return reads, writes

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        if self._cuda:
            return t.pin_memory().to(self._device, non_blocking=True)
        return t

    def _to_host(self, t: torch.Tensor) -> np.ndarray:
        if not self._cuda:
            return t.numpy()
        # A fresh pinned buffer per step: the numpy views handed to streams keep it alive,
        # so a later step can never overwrite outputs a slow reader has not consumed.
        buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        buf.copy_(t, non_blocking=True)
        return buf.numpy()


class _Launched:
    """A plan the executor queued: ``LaunchedPlan``."""

    __slots__ = ("_end", "_seconds", "_start", "result")

    def __init__(
        self,
        result: StepResult,
        start: torch.cuda.Event | None,
        end: torch.cuda.Event | None,
        seconds: float,
    ) -> None:
        self.result = result
        self._start = start
        self._end = end
        self._seconds = seconds
        """The CPU's wall time; replaced by the device's time once a GPU plan is waited for."""

    def wait(self) -> float:
        end = self._end
        if end is not None:
            end.synchronize()
            assert self._start is not None
            self._seconds = self._start.elapsed_time(end) / 1e3
            self._start = self._end = None
        return self._seconds


def _top_k(outputs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``k`` scores and ids per row, best first.

    ``max`` for k=1: on CPU it is about 4x faster than ``topk`` over a 10k vocabulary.
    """
    if k == 1:
        scores, ids = outputs.max(dim=1, keepdim=True)
        return scores, ids
    return torch.topk(outputs, k, dim=1)
