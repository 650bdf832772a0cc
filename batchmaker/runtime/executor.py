"""The executor seam: the one interface between a device's step loop and the device.

The worker thread hands an ``Executor`` one ``StepPlan`` at a time and gets a
``StepResult`` back; the engine hands it the cells and state pools of the models
it serves (``load_cells``, ``remove_cells``). Nothing else of the device leaks
upward, so the same engine runs the real ``TorchExecutor``
(``batchmaker.runtime.torch_executor``), a test's gated or fault-injecting wrapper,
or a numpy-only fake that lets engine logic be tested without torch, as vLLM's
executor interface and httpx's transports do. An ``OverlappingExecutor`` can also queue a
plan and return before the device has run it (``launch``), for the worker's overlap of
host and device (``EngineConfig.overlap_steps``).

No torch here: cells are passed through as opaque objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from scheduler import StepPlan

if TYPE_CHECKING:
    from batchmaker.models.base import Model


@dataclass(slots=True)
class StepResult:
    """One executed plan, on host. Output rows: one per plan row for a one-step plan
    (``offsets`` is ``None``), else each plan row's steps in order, row after row: plan row
    ``i``'s steps are output rows ``offsets[i] .. offsets[i+1] - 1``."""

    outputs: np.ndarray | None
    """``[N, output_dim]`` float32; ``None`` when no row of the plan wanted them."""
    top_ids: np.ndarray | None = None
    """``[N, plan.top_k]`` int64, best first, when the plan asked for top-k."""
    top_scores: np.ndarray | None = None
    tokens: np.ndarray | None = None
    """``[B]`` emitted token ids, for cells whose graphs feed tokens back (the scheduler
    reads them to grow the graph). One-step plans only."""
    offsets: np.ndarray | None = None
    """``[B + 1]`` int64: where each plan row's steps start in the outputs, for plans of
    several steps (``plan.num_steps > 1``)."""
    kernel_trial: bool = False
    """The plan ran a kernel on trial (``cells.Cell.num_kernel_trials``): its time says
    what that kernel costs, not what such a plan will, so the scheduler does not learn
    from it."""


@dataclass(frozen=True, slots=True)
class CellSet:
    """The cells and state pools of some models, named engine-wide (``model@version/...``).

    What the engine gives every device's executor when models are loaded, and takes back
    when they are unloaded. The cells are the models' master copies: an executor copies
    them to its device and never changes them.
    """

    cells: Mapping[str, Any]
    """Qualified cell type -> cell module (``cells.Cell``)."""
    pools: Mapping[str, tuple[Any, ...]]
    """Qualified pool -> the state it holds (``cells.StateSpec`` per state tensor)."""
    cell_pools: Mapping[str, str]
    """Qualified cell type -> the qualified pool it reads and writes."""
    num_slots: int
    """Usable state slots per pool; an executor adds the scheduler's reserved rows."""

    @classmethod
    def of(cls, models: Iterable[Model], num_slots: int) -> CellSet:
        models = list(models)
        return cls(
            cells={m.qualify(c): cell for m in models for c, cell in m.cells.items()},
            pools={m.qualify(p): specs for m in models for p, specs in m.pools.items()},
            cell_pools={m.qualify(c): m.qualify(m.cell_pool(c)) for m in models for c in m.cells},
            num_slots=num_slots,
        )


class Executor(Protocol):
    """Runs step plans on one device. Every method but ``load_cells`` is called only from
    that device's worker thread, between steps."""

    device: str
    """The torch device string (``cpu``, ``cuda:0``): the worker's and the metrics' label."""

    def load_cells(self, cells: CellSet) -> Callable[[], None]:
        """Prepare ``cells`` to serve (copy weights to the device, allocate their pools) on
        the calling thread, which may be any thread, and return what makes them served.

        The preparation is slow for big models, so it runs off the step loop; the returned
        callable is fast and runs on the worker thread between two steps.
        """
        ...

    def remove_cells(self, cells: CellSet) -> None:
        """Stop serving ``cells`` and free their memory; no live request uses them."""
        ...

    def execute(self, plan: StepPlan, on_launch: Callable[[], None] | None = None) -> StepResult:
        """Run ``plan``; call ``on_launch`` once the long-running kernel work is about to
        start (CPU) or has been queued (GPU), so the caller can overlap its own work."""
        ...


class LaunchedPlan(Protocol):
    """A plan queued on a device and perhaps still running there (``launch``)."""

    result: StepResult
    """The plan's result, whole from the start: its arrays are host buffers the device
    copies into, so it may be handed on (the scheduler keeps it in its emissions) before
    the copies land, but its values may be read only after ``wait``."""

    def wait(self) -> float:
        """Block until ``result`` holds the plan's values; the plan's seconds on the device
        (on a GPU, between events recorded around its work; on the CPU, its wall time).
        Raises what the device raised; calling it again returns the same seconds."""
        ...


class OverlappingExecutor(Executor, Protocol):
    """An executor that can queue a plan and return before the device has run it, so its
    worker can schedule and queue the next plan meanwhile (``--overlap-steps``): the
    device runs plan k while the host updates the scheduler after it and plans k+1."""

    def launch(self, plan: StepPlan, on_launch: Callable[[], None] | None = None) -> LaunchedPlan:
        """Queue ``plan`` and return at once (on the CPU: run it, and return it done)."""
        ...

    def feeds_back(self, cell_type: str) -> bool:
        """Whether ``cell_type``'s plans emit tokens that decide what its requests run next
        (decoders): the scheduler must read them before planning again, so the worker waits
        for such a plan before updating the scheduler."""
        ...


ExecutorFactory = Callable[[str], Executor]
"""Builds the executor of one device (``cpu``, ``cuda:0``), serving nothing yet."""
