"""A torch-free device for engine tests: a numpy ``FakeExecutor`` and the ``FakeChainModel``
it runs, with a reference that says exactly what every request must stream.

What the engine does with a step (admission, batching, delivery, cancellation,
deadlines, faults, shutdown, loading models) does not depend on what a cell computes,
only on the executor protocol. So these fakes keep the protocol and the data flow of
the real ones (state pools with the scheduler's reserved rows, a gather by
``read_slots``, a scatter to ``write_slots``, top-k, ``wants_outputs``) and replace the
math with exact integer arithmetic:

    h'     = (h * multiplier + x + 1) mod MODULUS         (x: the step's token id)
    out[j] = (h' * (j + 1) + j) mod MODULUS,  j < output_dim

Why this shape:

- Exact: every value is an integer below ``MODULUS``, held in int64 (state) and float32
  (outputs, exact below 2**24). A test compares streams for *equality* with
  ``FakeChainModel.reference``, never within a tolerance, so a row that read or wrote
  the wrong slot, reached the wrong stream or came out of order is a wrong number.
- The state depends on the whole prefix: reading another request's slot, a stale row
  or the zero row changes every later output of that request.
- ``+ 1``: the zero state and token 0 still move the state, so a request never streams
  what a padding row (zero state, token 0) would.
- ``multiplier`` is the model's "weights": two models stream different numbers for the
  same tokens, so a row run by the wrong model's cell shows up.
- ``MODULUS`` is a prime, so the columns of ``out`` differ for every ``h'`` except
  ``MODULUS - 1``, where all tie; ties go to the lower id first, in the executor (a
  stable argsort) and in the reference alike.

``reference`` is a plain Python loop over one request alone, written independently of
the executor's numpy, as tests/engine's ``run_alone`` is of the torch cells.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from batchmaker.models.base import Model
from batchmaker.models.checks import check_token_ids
from batchmaker.runtime.executor import CellSet, StepResult
from batchmaker.types import InferRequest, ModelSignature, TensorSignature
from scheduler import NUM_RESERVED_SLOTS, ZERO_SLOT, ChainGraph, RequestGraph, StepPlan

MODULUS = 1009
"""A prime below 2**10: states and outputs stay exact in float32 and never overflow int64."""


@dataclass(frozen=True)
class FakeCell:
    """The fake's cell: its parameters, which ``FakeExecutor`` reads (it never changes them)."""

    multiplier: int
    """What the state is multiplied by each step; a model's stand-in for its weights."""
    output_dim: int
    arity: int = 1
    """States each node reads: a chain's one predecessor (the engine reads this)."""
    supports_runs: bool = False
    """Whether plans of it may run several steps of a row (multi-step plans); off unless a
    test asks, so the one-step tests fix every plan's shape."""


class FakeExecutor:
    """The ``Executor`` protocol in numpy, one instance per device string (any string).

    Records what the engine asked of it, so tests can check the protocol itself:
    ``loaded`` and ``removed`` (every ``CellSet``, in order) and ``installed_on`` (the
    thread each install ran on).
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.cells: dict[str, FakeCell] = {}
        """Qualified cell type -> its cell, once installed."""
        self.pools: dict[str, np.ndarray] = {}
        """Qualified pool -> ``[NUM_RESERVED_SLOTS + num_slots]`` int64 states."""
        self._cell_pool: dict[str, str] = {}
        self.loaded: list[CellSet] = []
        self.removed: list[CellSet] = []
        self.installed_on: list[str] = []
        self.feeding: set[str] = set()
        """Cell types ``feeds_back`` names (as a decoder's would be): the worker must wait
        for their plans before updating the scheduler."""
        self.fail_wait_when: Callable[[StepPlan], bool] | None = None
        """Called on the device thread at each ``launch``; ``True`` makes that plan's
        ``wait`` raise, as a GPU reports a failed kernel when it is synchronised with."""
        self.events: list[tuple[str, int]] = []
        """``("launch", n)`` and ``("wait", n)`` for the ``n``-th launched plan, in order."""
        self.num_in_flight = 0
        """Launched plans not yet waited for."""

    def load_cells(self, cells: CellSet) -> Callable[[], None]:
        clash = (set(cells.cells) & set(self.cells)) | (set(cells.pools) & set(self.pools))
        if clash:
            raise ValueError(f"already served: {sorted(clash)}")
        for name, cell in cells.cells.items():
            if not isinstance(cell, FakeCell):
                raise TypeError(f"{name}: FakeExecutor runs FakeCell, got {type(cell).__name__}")
        # Allocated here, on the preparing thread; made visible only by install().
        pools = {
            name: np.zeros(NUM_RESERVED_SLOTS + cells.num_slots, dtype=np.int64)
            for name in cells.pools
        }
        self.loaded.append(cells)

        def install() -> None:
            self.installed_on.append(threading.current_thread().name)
            self.pools.update(pools)
            self.cells.update(cells.cells)
            self._cell_pool.update(cells.cell_pools)

        return install

    def remove_cells(self, cells: CellSet) -> None:
        if self.num_in_flight:
            raise AssertionError(f"cells removed under {self.num_in_flight} plan(s) in flight")
        self.removed.append(cells)
        for name in cells.cells:
            del self.cells[name]
            del self._cell_pool[name]
        for name in cells.pools:
            del self.pools[name]

    def execute(self, plan: StepPlan, on_launch: Callable[[], None] | None = None) -> StepResult:
        cell = self.cells[plan.cell_type]
        pool = self.pools[self._cell_pool[plan.cell_type]]
        # A write to the zero row would corrupt every later first step; the real pools
        # cannot tell, so the fake refuses (the step fails, and the test sees it).
        if (plan.write_slots == ZERO_SLOT).any():
            raise AssertionError(f"plan writes the zero slot: {plan.write_slots.tolist()}")
        h = pool[plan.read_slots[:, 0]]
        if on_launch is not None:
            on_launch()  # where the torch executor starts its kernels on the CPU
        j = np.arange(cell.output_dim, dtype=np.int64)
        offsets = None
        if plan.steps is None:
            new_h = (h * cell.multiplier + plan.inputs + 1) % MODULUS
            states = new_h
        else:
            # A run: row i's steps, row after row, and its state after its own last step
            # (or after all K steps, padded, where the plan says so).
            if not cell.supports_runs:
                raise AssertionError(f"{plan.cell_type} was given a run")
            states_per_row, rows = [], []
            for i, n in enumerate(plan.steps):
                hi = int(h[i])
                for t in range(plan.num_steps if plan.pad_to_longest else int(n)):
                    hi = (hi * cell.multiplier + int(plan.inputs[i, t]) + 1) % MODULUS
                    if t < n:
                        rows.append(hi)
                states_per_row.append(hi)
            new_h = np.array(rows, dtype=np.int64)
            states = np.array(states_per_row, dtype=np.int64)
            offsets = np.zeros(len(plan.steps) + 1, dtype=np.int64)
            np.cumsum(plan.steps, out=offsets[1:])
        outputs = ((new_h[:, None] * (j + 1) + j) % MODULUS).astype(np.float32)
        pool[plan.write_slots] = states  # padding rows all land on SCRATCH_SLOT
        top_ids = top_scores = None
        if plan.top_k:
            top_ids = np.argsort(-outputs, axis=1, kind="stable")[:, : plan.top_k]
            top_ids = top_ids.astype(np.int64)
            top_scores = np.take_along_axis(outputs, top_ids, axis=1)
        return StepResult(
            outputs=outputs if plan.wants_outputs else None,
            top_ids=top_ids,
            top_scores=top_scores,
            offsets=offsets,
        )

    # ---- the OverlappingExecutor half: plans that land later, as on a GPU ----------------

    def launch(self, plan: StepPlan, on_launch: Callable[[], None] | None = None) -> FakeLaunch:
        """Run ``plan`` (the states move now, as a GPU's stream orders them) but hand back
        a result that holds poison until ``wait``: NaN scores and outputs, id -1, as a
        pinned buffer holds garbage until its copy lands. A worker that read or delivered
        a result before waiting for it would stream wrong numbers, and the tests' exact
        comparison would see them."""
        done = self.execute(plan, on_launch)
        fail = self.fail_wait_when is not None and self.fail_wait_when(plan)
        n = sum(e == "launch" for e, _ in self.events)
        self.events.append(("launch", n))
        self.num_in_flight += 1
        return FakeLaunch(self, n, done, fail)

    def feeds_back(self, cell_type: str) -> bool:
        return cell_type in self.feeding


def _poisoned(a: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return None
    return np.full_like(a, -1 if a.dtype.kind == "i" else np.nan)


class FakeLaunch:
    """A ``LaunchedPlan`` of the fake: its ``result`` is poison until ``wait``."""

    def __init__(self, executor: FakeExecutor, n: int, done: StepResult, fail: bool) -> None:
        self._executor = executor
        self._n = n
        self._done: StepResult | None = done
        self._fail = fail
        self.result = StepResult(
            outputs=_poisoned(done.outputs),
            top_ids=_poisoned(done.top_ids),
            top_scores=_poisoned(done.top_scores),
            tokens=_poisoned(done.tokens),
            offsets=done.offsets,  # computed on the host from the plan, as the real one does
            kernel_trial=done.kernel_trial,
        )

    def wait(self) -> float:
        done, self._done = self._done, None
        if done is None:
            return 0.0
        self._executor.events.append(("wait", self._n))
        self._executor.num_in_flight -= 1
        if self._fail:
            raise RuntimeError("injected device failure")
        for name in ("outputs", "top_ids", "top_scores", "tokens"):
            src = getattr(done, name)
            if src is not None:
                np.copyto(getattr(self.result, name), src)
        return 0.0


class FakeChainModel(Model):
    """A token chain model, as ``SequenceModel`` is: one node per input token, each
    streaming one ``[output_dim]`` row; one cell type ``step`` and one pool ``state``."""

    def __init__(
        self,
        name: str = "fake",
        *,
        version: int = 1,
        multiplier: int = 3,
        vocab_size: int = 50,
        output_dim: int = 8,
        max_len: int = 64,
        runs: bool = False,
    ) -> None:
        """``runs``: its cell runs several steps per plan (multi-step plans)."""
        super().__init__(name, version)
        if multiplier % MODULUS == 0:
            raise ValueError("multiplier must not be a multiple of MODULUS (the state would stop)")
        self.cell = FakeCell(multiplier, output_dim, supports_runs=runs)
        self.vocab_size = vocab_size
        self.max_len = max_len

    @property
    def cells(self) -> Mapping[str, FakeCell]:
        return {"step": self.cell}

    @property
    def pools(self) -> Mapping[str, tuple[str, ...]]:
        # The base class reads torch cells' state specs; the fake's state is opaque.
        return {"state": ("h",)}

    @property
    def signature(self) -> ModelSignature:
        return ModelSignature(
            family="fake",
            inputs=(TensorSignature("tokens", "INT64", (-1,)),),
            outputs=(TensorSignature("scores", "FP32", (self.cell.output_dim,)),),
            max_input_length=self.max_len,
            max_output_length=self.max_len,
            max_top_k=self.cell.output_dim,
            vocab_size=self.vocab_size,
        )

    def validate(self, request: InferRequest) -> None:
        check_token_ids(
            request.inputs, model=self.name, vocab_size=self.vocab_size, max_len=self.max_len
        )
        self._validate_options(request)

    def build_graph(self, request: InferRequest) -> RequestGraph:
        return ChainGraph(
            self.qualify("step"),
            np.asarray(request.inputs, dtype=np.int64),
            self.qualify("state"),
            max_steps=request.max_output_length,
        )

    def reference(self, request: InferRequest) -> np.ndarray:
        """``[T, output_dim]`` float32: what the request streams, run alone (``T``: its
        inputs, or its ``max_output_length`` if fewer)."""
        cap = request.max_output_length or len(request.inputs)
        rows = []
        h = 0
        for x in list(request.inputs)[:cap]:
            h = (h * self.cell.multiplier + int(x) + 1) % MODULUS
            rows.append([(h * (j + 1) + j) % MODULUS for j in range(self.cell.output_dim)])
        return np.array(rows, dtype=np.float32)
