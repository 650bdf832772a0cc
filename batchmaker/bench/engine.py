"""``batchmaker bench``: cellular vs the baselines on one recorded trace, in one run.

Three model families (``--family``), each a ``Workload``: the model, a trace of
its requests, and how request ``i`` of the trace is sent.

- ``chain``: an LSTM language model over token sequences (the default);
- ``seq2seq``: an LSTM encoder-decoder, greedy, decoding each request's recorded
  target length (its output cap), with an EOS id the random decoder all but
  never emits;
- ``tree``: a binary TreeLSTM classifier over random binarised-parse-shaped trees.

What it measures, all on the same cells, weights and trace (DESIGN.md, "Measuring"):

1. The isolated kernel of each cell type: its forward on a preformed batch of its
   max batch, with no gather, scatter or scheduling; the denominator of *efficiency*.
2. The idle server: each request run alone (mode ``none``). Its p99 sets the SLO
   (twice it), and its outputs are the reference every later run is checked
   against; the reference itself is checked against the model's plain torch.
3. Saturation: a closed loop keeping many requests live. Efficiency is the time
   the isolated kernels would need for the cell-steps done (each cell type's rows
   at its kernel's per-row cost) over the wall time.
4. For each mode, the *sustainable throughput*: the highest open-loop Poisson rate
   whose p99 stays under the SLO (bracketed by doubling, then bisected).
5. For each baseline the family names (``padded``; for trees also ``level``):
   cellular and the baseline at half of, and at, the baseline's sustainable rate.

A run whose outputs disagree with the idle reference is reported invalid. A greedy
decoder feeds its own output back, so two correct runs may part ways where two
tokens tie within float noise (batched and single-row matmuls round differently);
such a request is checked up to that step and counted in ``num_ties``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from batchmaker.bench.kernels import isolated_step_seconds
from batchmaker.bench.openloop import Replay, replay
from batchmaker.bench.sweep import find_sustainable, num_requests
from batchmaker.bench.trace import (
    Arrival,
    Trace,
    make_trace,
    make_tree_trace,
    tree_depth,
    tree_leaves,
)
from batchmaker.config import MODES, EngineConfig
from batchmaker.models.base import Model
from batchmaker.models.builtin import benchmark_model
from batchmaker.models.seq2seq import Seq2SeqModel, seq2seq_model
from batchmaker.models.sequence import SequenceModel, recurrent_model
from batchmaker.models.tree import TreeModel, tree_model
from batchmaker.runtime.engine import Engine
from batchmaker.runtime.executor import CellSet
from batchmaker.runtime.torch_executor import TorchExecutor
from batchmaker.types import InferRequest, StepOutput, TreeInput

FAMILIES: tuple[str, ...] = ("chain", "seq2seq", "tree")

HALF_LOAD_P50_MAX = 0.3
"""Target: at half the baseline's sustainable rate, cellular p50 <= this x the baseline's."""

LENGTHS = (20.0, 100.0)
"""Median and p99 of request lengths (tokens, target tokens, leaves): sentence-shaped."""
TINY_LENGTHS = (6.0, 20.0)
"""``--tiny``: short requests, for smoke tests."""

_LOADS: dict[str, tuple[str, str]] = {
    "padded": ("half_load", "padded_load"),
    "level": ("level_half_load", "level_load"),
}
"""Baseline -> the report fields holding cellular and it at half of and at its sustainable rate."""


@dataclass
class RunResult:
    """One load point of one mode."""

    mode: str
    rate: float
    num_requests: int
    num_completed: int = 0
    num_rejected: int = 0
    num_failed: int = 0
    num_late: int = 0
    overloaded: bool = False
    """Stopped early: more than 1% of requests had already missed the SLO."""
    valid: bool = True
    """Every completed request's outputs matched the idle reference."""
    p50: float = math.inf
    p90: float = math.inf
    p99: float = math.inf
    ttft_p50: float = math.inf
    ttft_p99: float = math.inf
    throughput_rps: float = 0.0
    cell_steps_per_s: float = 0.0
    mean_batch: float = 0.0
    mean_padded_batch: float = 0.0
    wall_s: float = 0.0
    mean_batch_per_cell: dict[str, float] = field(default_factory=dict)
    """Real rows per step of each (local) cell type, e.g. ``encoder`` and ``decoder``."""
    mean_padded_batch_per_cell: dict[str, float] = field(default_factory=dict)
    """Rows per step including padding rows, per cell type."""
    num_ties: int = 0
    """Checked requests whose greedy decode took the other branch of a near-tie (the
    best scores equal within float noise): matched up to that step, not after."""

    def meets(self, slo: float) -> bool:
        return (
            not self.overloaded
            and self.num_rejected == 0
            and self.num_failed == 0
            and self.num_completed == self.num_requests
            and self.p99 <= slo
        )

    def check(self, ref: Fingerprint, got: Fingerprint, *, feeds_back: bool) -> None:
        """Counts one request's outputs against the idle reference (``compare``)."""
        verdict = compare(ref, got, feeds_back=feeds_back)
        if verdict == "differ":
            self.valid = False
        elif verdict == "tie":
            self.num_ties += 1

    @classmethod
    def from_replay(cls, mode: str, rep: Replay) -> RunResult:
        """Counts and latency percentiles of one replay; outputs and batches are the caller's."""
        r = cls(
            mode=mode,
            rate=rep.rate,
            num_requests=rep.num_requests,
            num_completed=rep.num_completed,
            num_rejected=rep.num_rejected,
            num_failed=rep.num_failed,
            num_late=rep.num_late,
            overloaded=rep.overloaded,
            throughput_rps=rep.throughput_rps,
            wall_s=rep.wall_s,
        )
        r.p50, r.p90, r.p99 = rep.percentiles((50, 90, 99))
        r.ttft_p50, r.ttft_p99 = rep.percentiles((50, 99), first_output=True)
        return r


@dataclass
class Fingerprint:
    """Top-1 id and score per step: enough to tell whether two runs computed the same thing."""

    ids: np.ndarray
    scores: np.ndarray


@dataclass
class BenchReport:
    config: dict[str, object]
    kernel_seconds_at_max_batch: float = 0.0
    """The family's main cell type (chain ``step``, seq2seq ``decoder``, tree ``node``)."""
    kernel_cell_steps_per_s: float = 0.0
    idle: dict[str, float] = field(default_factory=dict)
    slo_s: float = 0.0
    saturation: dict[str, RunResult] = field(default_factory=dict)
    efficiency: dict[str, float] = field(default_factory=dict)
    """Median over rounds of the kernels' time for the saturated cell-steps over the wall
    time, with the kernels timed around each round (for one cell type: saturated
    cell-steps/s over the kernel's)."""
    efficiency_rounds: dict[str, list[float]] = field(default_factory=dict)
    sweeps: dict[str, list[RunResult]] = field(default_factory=dict)
    sustainable_rps: dict[str, float] = field(default_factory=dict)
    half_load: dict[str, RunResult] = field(default_factory=dict)
    """Cellular and padded at half of padded's sustainable rate."""
    padded_load: dict[str, RunResult] = field(default_factory=dict)
    """Cellular and padded at padded's sustainable rate."""
    ratios: dict[str, float] = field(default_factory=dict)
    valid: bool = True
    kernel_seconds_per_cell: dict[str, float] = field(default_factory=dict)
    """Each cell type's fastest isolated forward at its max batch."""
    level_half_load: dict[str, RunResult] = field(default_factory=dict)
    """Trees: cellular and level at half of level's sustainable rate."""
    level_load: dict[str, RunResult] = field(default_factory=dict)
    """Trees: cellular and level at level's sustainable rate."""
    targets: dict[str, dict[str, float | bool]] = field(default_factory=dict)
    """Per baseline: the half-load p50 and sustainable-throughput ratios, their bounds,
    and whether each is met."""


@dataclass(frozen=True)
class RequestSpec:
    """What request ``i`` of a trace sends, built once per trace (not per replay)."""

    inputs: np.ndarray | TreeInput
    max_output_length: int | None = None
    """seq2seq: the recorded target length; ``None``: the model's own limit."""


class Workload(ABC):
    """One model family under benchmark: its model, its trace, and its requests.

    The ``Bench`` is the same for every family; what differs is here.
    """

    family: ClassVar[str]
    main_cell: ClassVar[str]
    """The local cell type whose kernel the report's ``kernel_*`` headline figures time."""
    default_modes: ClassVar[tuple[str, ...]] = ("cellular", "padded", "none")
    baselines: ClassVar[tuple[str, ...]] = ("padded",)
    """The modes cellular is compared with at half and full load, and whose targets count."""
    sustainable_min: ClassVar[float] = 1.5
    """Target: cellular's sustainable throughput >= this x each baseline's."""
    feeds_back: ClassVar[bool] = False
    """Whether outputs feed later steps (greedy decoders): a near-tie may then fork a run."""

    def __init__(self, model: Model, description: str) -> None:
        self.model = model
        self.description = description

    @abstractmethod
    def make_trace(self, n: int, *, seed: int, arrival: Arrival) -> Trace:
        """Draw this family's trace: same arguments, same trace."""

    @abstractmethod
    def specs(self, trace: Trace) -> list[RequestSpec]:
        """Each request of ``trace``, ready to send (the trace's kind is already checked)."""

    @abstractmethod
    def trace_stats(self, trace: Trace) -> dict[str, float]:
        """Shape of the trace's requests, for the report."""

    def output_stats(self, refs: list[Fingerprint]) -> dict[str, float]:
        """Shape of the idle run's outputs, for the report (decode lengths, EOS)."""
        return {}

    def max_slots_per_request(self, trace: Trace) -> int:
        """The most state slots one request of ``trace`` holds (a tree: one per leaf)."""
        return 1


def _dist(name: str, a: np.ndarray) -> dict[str, float]:
    return {
        f"{name}_median": float(np.median(a)),
        f"{name}_p99": float(np.percentile(a, 99)),
        f"{name}_mean": float(a.mean()),
    }


class ChainWorkload(Workload):
    """The engine benchmark's LSTM language model over sentence-length token sequences."""

    family = "chain"
    main_cell = "step"
    sustainable_min = 2.0  # issue 2's target for chains

    def __init__(self, *, tiny: bool = False) -> None:
        if tiny:
            model = recurrent_model(
                "lstm-tiny", "lstm", vocab_size=64, hidden_size=32, seed=3, max_input_len=64
            )
            super().__init__(model, "LSTM LM, 1 layer x 32 hidden, 64 vocabulary (tiny)")
        else:
            super().__init__(benchmark_model(), "LSTM LM, 2 layers x 512 hidden, 10k vocabulary")
        self._median, self._p99 = TINY_LENGTHS if tiny else LENGTHS

    def make_trace(self, n: int, *, seed: int, arrival: Arrival) -> Trace:
        assert isinstance(self.model, SequenceModel)
        return make_trace(
            n,
            vocab_size=self.model.cell.input_dim,
            seed=seed,
            arrival=arrival,
            max_len=self.model.max_input_len,
            median_len=self._median,
            p99_len=self._p99,
        )

    def specs(self, trace: Trace) -> list[RequestSpec]:
        return [RequestSpec(t) for t in trace.tokens]

    def trace_stats(self, trace: Trace) -> dict[str, float]:
        return _dist("length", trace.lengths)


class Seq2SeqWorkload(Workload):
    """An LSTM encoder-decoder (2 x 256, 8k source and target vocabularies), greedy.

    Sized like a small NMT model (OpenNMT's default is 2 x 500): at batch 64 a
    decoder step is a few ms on one core, three times an encoder step (the decoder
    also scores 8k targets), and a lone step is memory-bound, so batching pays as
    it does for real models. Each request decodes its recorded target length: EOS
    is the target whose best possible score is the lowest, which a random decoder
    all but never emits (the report gives the fraction that did).
    """

    family = "seq2seq"
    main_cell = "decoder"
    feeds_back = True

    def __init__(self, *, tiny: bool = False) -> None:
        hidden, layers, vocab, cap = (16, 1, 48, 32) if tiny else (256, 2, 8000, 128)
        base = seq2seq_model(
            "seq2seq-tiny" if tiny else "seq2seq-lstm",
            "lstm",
            source_vocab=vocab,
            target_vocab=vocab,
            hidden_size=hidden,
            num_layers=layers,
            bos=1,
            eos=2,  # replaced below, once the weights exist
            seed=5,
            max_input_len=cap,
            max_decode_len=cap,
        )
        eos = quietest_token(base)
        model = Seq2SeqModel(
            base.name,
            base.encoder,
            base.decoder,
            bos=base.bos,
            eos=eos,
            max_input_len=cap,
            max_decode_len=cap,
        )
        super().__init__(
            model,
            f"seq2seq LSTM, {layers} layer(s) x {hidden} hidden, {vocab} source and target "
            f"vocabulary, greedy, EOS {eos}, max decode {cap}" + (" (tiny)" if tiny else ""),
        )
        self.eos = eos
        self._median, self._p99 = TINY_LENGTHS if tiny else LENGTHS

    def make_trace(self, n: int, *, seed: int, arrival: Arrival) -> Trace:
        assert isinstance(self.model, Seq2SeqModel)
        return make_trace(
            n,
            vocab_size=self.model.encoder.input_dim,
            seed=seed,
            arrival=arrival,
            max_len=self.model.max_input_len,
            max_output_len=self.model.max_decode_len,
            median_len=self._median,
            p99_len=self._p99,
        )

    def specs(self, trace: Trace) -> list[RequestSpec]:
        assert trace.output_lengths is not None
        return [
            RequestSpec(t, int(k)) for t, k in zip(trace.tokens, trace.output_lengths, strict=True)
        ]

    def trace_stats(self, trace: Trace) -> dict[str, float]:
        assert trace.output_lengths is not None
        return {
            **_dist("source_length", trace.lengths),
            **_dist("target_length", trace.output_lengths),
        }

    def output_stats(self, refs: list[Fingerprint]) -> dict[str, float]:
        lengths = np.array([len(r.ids) for r in refs])
        eos = np.array([len(r.ids) > 0 and int(r.ids[-1, 0]) == self.eos for r in refs])
        return {**_dist("decode_length", lengths), "ended_by_eos_fraction": float(eos.mean())}


def quietest_token(model: Seq2SeqModel) -> int:
    """The target id whose score can never be high: the lowest bound ``b_v + |W_v|_1``.

    The decoder's projection reads an LSTM's (or GRU's) output, every element of which
    lies in (-1, 1), so token ``v`` scores at most ``b_v + sum |W_v|``. The id with the
    lowest such bound (other than BOS) almost never wins an argmax over thousands.
    """
    proj = model.decoder.proj
    if proj is None:
        raise ValueError(f"model {model.name!r}: the decoder has no projection to score")
    bound = (proj.bias + proj.weight.abs().sum(dim=1)).detach().numpy().copy()
    bound[model.bos] = np.inf
    return int(bound.argmin())


class TreeWorkload(Workload):
    """A binary TreeLSTM sentiment classifier sized like SST's (Tai et al., 2015).

    Hidden 300 with 300-d embeddings (GloVe's size), a 20k vocabulary (SST has about
    21.7k words), 5 classes. A node's step is two 300 x 1500 matmuls: about 1 ms at
    batch 64 on one core, a few ms on this shared machine, while a lone node costs
    more in engine overhead than in math, which is the regime trees are served in.
    """

    family = "tree"
    main_cell = "node"
    default_modes = ("cellular", "padded", "level", "none")
    baselines = ("padded", "level")

    def __init__(self, *, tiny: bool = False) -> None:
        hidden, vocab, self._max_leaves = (16, 64, 24) if tiny else (300, 20_000, 128)
        model = tree_model(
            "treelstm-tiny" if tiny else "treelstm-sst",
            vocab_size=vocab,
            hidden_size=hidden,
            num_classes=5,
            seed=6,
            max_nodes=2 * self._max_leaves - 1,
            max_depth=self._max_leaves,
        )
        super().__init__(
            model,
            f"binary TreeLSTM, {hidden} hidden and embedding, {vocab} vocabulary, 5 classes"
            + (" (tiny)" if tiny else ""),
        )
        self._median, self._p99 = TINY_LENGTHS if tiny else LENGTHS

    def make_trace(self, n: int, *, seed: int, arrival: Arrival) -> Trace:
        assert isinstance(self.model, TreeModel)
        return make_tree_trace(
            n,
            vocab_size=self.model.cell.input_dim,
            seed=seed,
            arrival=arrival,
            max_leaves=self._max_leaves,
            median_leaves=self._median,
            p99_leaves=self._p99,
        )

    def specs(self, trace: Trace) -> list[RequestSpec]:
        assert trace.children is not None
        return [
            RequestSpec(
                TreeInput(tokens=t, children=[[int(c) for c in row if c >= 0] for row in ch])
            )
            for t, ch in zip(trace.tokens, trace.children, strict=True)
        ]

    def max_slots_per_request(self, trace: Trace) -> int:
        assert trace.children is not None
        return max(tree_leaves(c) for c in trace.children)

    def trace_stats(self, trace: Trace) -> dict[str, float]:
        assert trace.children is not None
        depths = np.array([tree_depth(c) for c in trace.children])
        return {
            **_dist("leaves", np.array([tree_leaves(c) for c in trace.children])),
            **_dist("nodes", trace.lengths),
            **_dist("depth", depths),
            "depth_max": float(depths.max()),
        }


def make_workload(family: str, *, tiny: bool = False) -> Workload:
    """The workload of ``--family``; ``tiny``: small models and requests (smoke tests)."""
    workloads: dict[str, type[ChainWorkload | Seq2SeqWorkload | TreeWorkload]] = {
        "chain": ChainWorkload,
        "seq2seq": Seq2SeqWorkload,
        "tree": TreeWorkload,
    }
    if family not in workloads:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return workloads[family](tiny=tiny)


class _Snapshot:
    """Steps, real rows and padding rows per qualified cell type, at one moment."""

    def __init__(self, engine: Engine) -> None:
        # list() copies under the GIL: the worker thread may add a cell type meanwhile.
        cells = list(engine.workers[0].stats.per_cell_type.items())
        self.cells = {n: (c.num_steps, c.num_rows, c.num_padding_rows) for n, c in cells}

    def delta(self, engine: Engine) -> dict[str, tuple[int, int, int]]:
        now = _Snapshot(engine).cells
        zero = (0, 0, 0)
        return {
            n: (v[0] - b[0], v[1] - b[1], v[2] - b[2])
            for n, v in now.items()
            for b in (self.cells.get(n, zero),)
        }


Verdict = Literal["same", "tie", "differ"]


def compare(ref: Fingerprint, got: Fingerprint, *, feeds_back: bool) -> Verdict:
    """Whether ``got`` computed what ``ref`` did.

    Equal best scores with different ids can only be a tie within float noise, so
    scores are what is compared. With ``feeds_back`` (greedy decoding), a tie picks
    the next step's input: the runs then legitimately part ways, so they are compared
    up to and including the first step whose ids differ, and that step must be a tie.
    """
    if not feeds_back:
        same = ref.ids.shape == got.ids.shape and _close(ref.scores, got.scores)
        return "same" if same else "differ"
    n = min(len(ref.ids), len(got.ids))
    forks = np.flatnonzero(ref.ids[:n, 0] != got.ids[:n, 0])
    if len(forks) == 0:
        same = len(ref.ids) == len(got.ids) and _close(ref.scores, got.scores)
        return "same" if same else "differ"
    k = int(forks[0]) + 1
    return "tie" if _close(ref.scores[:k], got.scores[:k]) else "differ"


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=1e-4, rtol=1e-4))


def check_reference(
    model: Model,
    requests: dict[int, InferRequest],
    reference: dict[int, Fingerprint],
    *,
    feeds_back: bool,
) -> None:
    """Raises unless the idle run's outputs (``reference``) for ``requests`` are what the
    model's plain torch computes: the reference is checked before anything is checked
    against it."""
    for i, request in requests.items():
        ref = model.reference(request)
        expect = Fingerprint(ids=ref.argmax(axis=1)[:, None], scores=ref.max(axis=1)[:, None])
        if compare(expect, reference[i], feeds_back=feeds_back) == "differ":
            raise RuntimeError(f"idle run disagrees with plain torch on request {i}")


def idle_stats(latencies: list[float]) -> dict[str, float]:
    """Latency of requests run one at a time: p50, p99, mean, and the rate one server
    running them back to back would reach (``capacity_rps``), where sweeps start from."""
    a = np.array(latencies)
    return {
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "capacity_rps": float(1.0 / a.mean()),
    }


class Bench:
    """One benchmark run: every mode of ``args.modes`` on one workload, trace and config."""

    def __init__(self, args: argparse.Namespace, base: EngineConfig) -> None:
        self.args = args
        self.base = base
        self.workload = make_workload(args.family, tiny=args.tiny)
        self.model: Model = self.workload.model
        if args.trace_in:
            self.trace = Trace.load(args.trace_in)
            if self.trace.kind != self.workload.family:
                raise ValueError(
                    f"--trace-in: {args.trace_in} is a {self.trace.kind} trace, "
                    f"but --family is {self.workload.family}"
                )
        else:
            self.trace = self.workload.make_trace(
                args.requests, seed=args.seed, arrival=args.arrival
            )
        if args.trace_out:
            self.trace.save(args.trace_out)
        self.specs = self.workload.specs(self.trace)
        # Saturation keeps 4 x max batch requests live; trees hold a slot per leaf, so
        # their pools must be that many times larger or admission refuses the load.
        per_request = self.workload.max_slots_per_request(self.trace)
        if per_request > 1:
            mb = max(
                base.max_batch_for(self.model.qualify(c), self.model.max_batch.get(c))
                for c in self.model.cells
            )
            self.base = replace(base, num_slots=max(base.num_slots, 4 * mb * per_request))
        modes = args.modes or ",".join(self.workload.default_modes)
        self.modes = [m.strip() for m in modes.split(",") if m.strip()]
        for m in self.modes:
            if m not in MODES:
                raise ValueError(f"--modes: unknown mode {m!r}; known: {', '.join(MODES)}")
        self.engines: dict[str, Engine] = {}
        self.reference: dict[int, Fingerprint] = {}
        self.slo = math.inf

    def _config(self, mode: str) -> EngineConfig:
        return EngineConfig(**{**asdict(self.base), "mode": mode})

    def _request(self, i: int, tag: str, *, vectors: bool = False) -> InferRequest:
        """Top-1 per step (the fingerprint), or the cell's raw output vectors."""
        spec = self.specs[i]
        return InferRequest(
            self.model.name,
            spec.inputs,
            request_id=f"{tag}-{i}",
            top_k=0 if vectors else 1,
            return_vectors=vectors,
            max_output_length=spec.max_output_length,
        )

    def _check(self, result: RunResult, i: int, got: Fingerprint) -> None:
        result.check(self.reference[i], got, feeds_back=self.workload.feeds_back)

    async def run(self) -> BenchReport:
        report = BenchReport(
            config={
                "family": self.workload.family,
                "model": self.workload.description,
                **{k: v for k, v in asdict(self.base).items() if k != "mode"},
                "trace": {
                    "arrival": self.trace.arrival,
                    "seed": self.trace.seed,
                    "requests": len(self.trace),
                    **self.workload.trace_stats(self.trace),
                },
            }
        )
        for mode in {"none", *self.modes}:
            self.engines[mode] = Engine(self._config(mode), [self.model])
            await self.engines[mode].start()
        try:
            await self._run(report)
        finally:
            for e in self.engines.values():
                await e.shutdown(grace=0)
        return report

    async def _run(self, report: BenchReport) -> None:
        none = self.engines["none"]
        cells = list(self.model.cells)
        mb = {c: none.max_batch_for(self.model, c) for c in cells}
        # The kernels alone, on a device of their own executor: nothing the engine serves.
        kernels = TorchExecutor(self.base.devices[0])
        kernels.load_cells(CellSet.of([self.model], num_slots=1))()

        def kernel() -> dict[str, float]:
            times = {}
            for c in cells:
                t = isolated_step_seconds(kernels, self.model.qualify(c), mb[c], iterations=20)
                _log(
                    f"kernel {c}: batch {mb[c]} in {t * 1e3:.2f} ms = {mb[c] / t:.0f} cell-steps/s"
                )
                times[c] = float(t)
            return times

        idle = await self._idle(report)
        report.idle = idle
        self.slo = report.slo_s = (
            self.args.slo_ms / 1e3 if self.args.slo_ms is not None else 2 * idle["p99"]
        )
        _log(
            f"idle: p50 {_ms(idle['p50'])} ms, p99 {_ms(idle['p99'])} ms -> SLO {_ms(self.slo)} ms"
        )

        # This machine's speed drifts by tens of percent over minutes, so each saturation
        # window is bracketed by kernel timings and divided by the faster of the two (a
        # slow moment can only lower the figure); the median over rounds is reported.
        best: dict[str, float] = {}
        for mode in self.modes:
            for vectors in (True, False):
                key = mode if vectors else f"{mode}+top1"
                rounds = []
                for _ in range(self.args.saturation_rounds):
                    before = kernel()
                    sat, rows = await self._saturation(mode, max(mb.values()), vectors=vectors)
                    after = kernel()
                    t = {c: min(before[c], after[c]) for c in cells}
                    for c in cells:
                        best[c] = min(best.get(c, math.inf), t[c])
                    busy = sum(rows.get(c, 0) * t[c] / mb[c] for c in cells)
                    rounds.append((busy / sat.wall_s, sat))
                    report.valid &= sat.valid
                rounds.sort(key=lambda r: r[0])
                efficiency, sat = rounds[len(rounds) // 2]
                report.saturation[key] = sat
                report.efficiency[key] = efficiency
                report.efficiency_rounds[key] = [r[0] for r in rounds]
                _log(
                    f"saturation {key}: {sat.cell_steps_per_s:.0f} cell-steps/s, mean batch "
                    f"{_per_cell(sat.mean_batch_per_cell)}, efficiency {efficiency:.3f} "
                    f"(rounds {', '.join(f'{r[0]:.3f}' for r in rounds)})"
                )
        report.kernel_seconds_per_cell = best
        main = self.workload.main_cell
        if main in best:
            report.kernel_seconds_at_max_batch = best[main]
            report.kernel_cell_steps_per_s = mb[main] / best[main]

        if self.args.saturation_only:
            return
        start = 0.5 * idle["capacity_rps"]
        for mode in self.modes:
            rate, runs = await self._sustainable(mode, start)
            report.sweeps[mode] = runs
            report.sustainable_rps[mode] = rate
            report.valid &= all(r.valid for r in runs)

        for baseline in self.workload.baselines:
            if baseline in self.modes and "cellular" in self.modes:
                await self._compare_with(report, baseline)
        if "none" in self.modes and "cellular" in self.modes:
            report.ratios["sustainable_cellular_over_none"] = report.sustainable_rps[
                "cellular"
            ] / max(report.sustainable_rps["none"], 1e-9)

    async def _compare_with(self, report: BenchReport, baseline: str) -> None:
        """Cellular and ``baseline`` at half of and at the baseline's sustainable rate,
        their ratios, and the targets against it."""
        full = report.sustainable_rps[baseline]
        sustainable = report.sustainable_rps["cellular"] / max(full, 1e-9)
        report.ratios[f"sustainable_cellular_over_{baseline}"] = sustainable
        target: dict[str, float | bool] = {
            "sustainable_ratio": sustainable,
            "sustainable_min": self.workload.sustainable_min,
            "sustainable_met": sustainable >= self.workload.sustainable_min,
        }
        report.targets[baseline] = target
        if full <= 0:
            _log(f"{baseline} sustained no rate under the SLO: no load comparison")
            return
        names = _LOADS[baseline]
        for name, rate in zip(names, (0.5 * full, full), strict=True):
            load: dict[str, RunResult] = getattr(report, name)
            for mode in ("cellular", baseline):
                r = await self._replay(mode, rate)
                load[mode] = r
                report.valid &= r.valid
        for name in names:
            c, b = getattr(report, name)["cellular"], getattr(report, name)[baseline]
            for q in ("p50", "p99", "ttft_p50"):
                report.ratios[f"{name}_{q}_cellular_over_{baseline}"] = getattr(c, q) / getattr(
                    b, q
                )
        p50 = report.ratios[f"{names[0]}_p50_cellular_over_{baseline}"]
        target.update(
            half_load_p50_ratio=p50,
            half_load_p50_max=HALF_LOAD_P50_MAX,
            half_load_p50_met=p50 <= HALF_LOAD_P50_MAX,
        )

    async def _idle(self, report: BenchReport) -> dict[str, float]:
        """Each request alone on an idle server: latency baseline and reference outputs."""
        engine = self.engines["none"]
        loop = asyncio.get_running_loop()
        lat = []
        for i in range(len(self.trace)):
            t0 = loop.time()
            outs = await engine.submit(self._request(i, "idle")).collect()
            lat.append(loop.time() - t0)
            self.reference[i] = fingerprint(outs)
        check_reference(
            self.model,
            {i: self._request(i, "ref") for i in range(min(8, len(self.trace)))},
            self.reference,
            feeds_back=self.workload.feeds_back,
        )
        trace_stats = report.config["trace"]
        assert isinstance(trace_stats, dict)
        trace_stats.update(self.workload.output_stats([self.reference[i] for i in range(len(lat))]))
        return idle_stats(lat)

    async def _saturation(
        self, mode: str, max_batch: int, *, vectors: bool
    ) -> tuple[RunResult, dict[str, int]]:
        """Closed loop with ``4 x max_batch`` live requests: the engine is never short of work.

        Counted over a window that starts after a warm-up and ends while every client
        is still busy, so neither the ramp nor the drain dilutes the batches.
        ``vectors``: clients take the cell's raw outputs, so the step does exactly the
        kernel's work plus the engine's; otherwise they ask for top-1, which adds a
        reduction over the vocabulary to every step. One in eight requests is checked
        against the reference either way. Returns the result and the cell-steps done
        in the window per local cell type.
        """
        engine = self.engines[mode]
        loop = asyncio.get_running_loop()
        concurrency = 4 * max_batch
        result = RunResult(mode=mode, rate=math.inf, num_requests=0)
        stop = False
        next_i = 0
        n = len(self.trace)

        async def client() -> None:
            nonlocal next_i
            while not stop:
                i = next_i % n
                next_i += 1
                stream = engine.submit(self._request(i, f"sat{next_i}", vectors=vectors))
                # Like a server that serialises each chunk and drops it: holding vectors
                # would pin every step's [batch, vocab] output array for the request's life.
                check = next_i % 8 == 0
                parts = []
                while chunk := await stream.next_chunk():
                    if check:
                        parts.append(fingerprint(chunk))
                result.num_requests += 1
                result.num_completed += 1
                if check:
                    self._check(result, i, _concat(parts))

        clients = asyncio.gather(*(client() for _ in range(concurrency)))
        # Warm-up: 0.5 s, or as long as the window itself when that is shorter (smoke tests).
        await asyncio.sleep(min(0.5, self.args.saturation_seconds))
        snap, t_snap = _Snapshot(engine), loop.time()
        await asyncio.sleep(self.args.saturation_seconds)
        t_end = loop.time()
        delta = snap.delta(engine)
        stop = True
        await clients
        result.wall_s = t_end - t_snap
        self._fill_steps(result, delta)
        rows = {self._local(name): d[1] for name, d in delta.items()}
        return result, rows

    def _local(self, cell_type: str) -> str:
        return cell_type.rpartition("/")[2]

    def _fill_steps(self, result: RunResult, delta: dict[str, tuple[int, int, int]]) -> None:
        """Throughput and batch sizes from the worker's per-cell-type counters."""
        steps = sum(d[0] for d in delta.values())
        rows = sum(d[1] for d in delta.values())
        padding = sum(d[2] for d in delta.values())
        result.cell_steps_per_s = rows / result.wall_s
        result.mean_batch = rows / max(steps, 1)
        result.mean_padded_batch = (rows + padding) / max(steps, 1)
        for name, (s, r, p) in sorted(delta.items()):
            if s:
                result.mean_batch_per_cell[self._local(name)] = r / s
                result.mean_padded_batch_per_cell[self._local(name)] = (r + p) / s

    def _num_requests(self, rate: float) -> int:
        a = self.args
        return num_requests(
            rate,
            most=min(a.requests, len(self.trace)),
            fewest=a.min_requests,
            seconds=a.point_seconds,
        )

    async def _sustainable(self, mode: str, start: float) -> tuple[float, list[RunResult]]:
        """The mode's sustainable rate, and every load point run to find it (retries too)."""
        runs: list[RunResult] = []

        async def point(rate: float) -> bool:
            r = await self._replay(mode, rate)
            runs.append(r)
            return r.meets(self.slo)

        a = self.args
        rate = await find_sustainable(point, start, bisections=a.bisections, retries=a.retries)
        return rate, runs

    async def _replay(self, mode: str, rate: float) -> RunResult:
        """One open-loop load point on ``mode``'s engine, checked against the idle reference."""
        engine = self.engines[mode]
        n = self._num_requests(rate)
        tag = f"{mode}-{rate:.3f}"

        async def send(i: int) -> AsyncGenerator[list[StepOutput], None]:
            stream = engine.submit(self._request(i, tag))
            try:
                while chunk := await stream.next_chunk():
                    yield chunk
            finally:
                stream.cancel()  # a no-op once it ended; frees a request the replay stopped

        snap = _Snapshot(engine)
        rep = await replay(send, self.trace.arrivals(rate, n), rate=rate, slo=self.slo, lead_s=0.02)
        result = RunResult.from_replay(mode, rep)
        for i, outs in enumerate(rep.outputs):
            if outs is not None:
                self._check(result, i, fingerprint(outs))
        self._fill_steps(result, snap.delta(engine))
        verdict = (
            "ok" if result.meets(self.slo) else ("overloaded" if result.overloaded else "miss")
        )
        _log(
            f"  {mode:8s} {rate:8.2f} req/s: {result.num_completed}/{n} done, p50 "
            f"{result.p50 * 1e3:7.1f} ms, p99 {result.p99 * 1e3:7.1f} ms, batch "
            f"{_per_cell(result.mean_batch_per_cell)} -> {verdict}"
            f"{'' if result.valid else ' INVALID'}"
            f"{f' ({result.num_ties} ties)' if result.num_ties else ''}"
        )
        return result


def fingerprint(outs: list[StepOutput]) -> Fingerprint:
    """Top-1 per step, from the engine's top-k or, for vector requests, from the vectors."""
    if outs and outs[0].top_ids is None:
        v = np.stack([_present(o.vector) for o in outs])
        return Fingerprint(ids=v.argmax(axis=1)[:, None], scores=v.max(axis=1)[:, None])
    return Fingerprint(
        ids=np.stack([_present(o.top_ids) for o in outs]),
        scores=np.stack([_present(o.top_scores) for o in outs]),
    )


def _present(a: np.ndarray | None) -> np.ndarray:
    if a is None:
        raise RuntimeError("a step output lacks the field this benchmark asked for")
    return a


def _concat(parts: list[Fingerprint]) -> Fingerprint:
    return Fingerprint(
        ids=np.concatenate([p.ids for p in parts]),
        scores=np.concatenate([p.scores for p in parts]),
    )


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _ms(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x * 1e3:.1f}"


def _per_cell(batches: dict[str, float]) -> str:
    """``"12.3"`` for one cell type, ``"encoder 4.1 / decoder 20.3"`` for several."""
    if len(batches) == 1:
        return f"{next(iter(batches.values())):5.1f}"
    return " / ".join(f"{c} {b:.1f}" for c, b in batches.items()) or "-"


def print_table(report: BenchReport) -> None:
    print(f"\n{report.config.get('family', 'chain')}: {report.config.get('model')}")
    print("mode           sustainable  sat. cell-steps/s  efficiency  mean batch")
    for key, sat in report.saturation.items():
        rps = report.sustainable_rps.get(key)
        print(
            f"{key:14s} {'' if rps is None else f'{rps:8.1f} r/s':>12s}  "
            f"{sat.cell_steps_per_s:14.0f}  {report.efficiency[key]:10.3f}  "
            f"{_per_cell(sat.mean_batch_per_cell)}"
        )
    for title, load in (
        ("half of padded's sustainable rate", report.half_load),
        ("padded's sustainable rate", report.padded_load),
        ("half of level's sustainable rate", report.level_half_load),
        ("level's sustainable rate", report.level_load),
    ):
        if not load:
            continue
        print(f"\nat {title}:")
        print("mode      rate r/s  p50 ms  p90 ms  p99 ms  ttft p50  req/s  cell-steps/s  batch")
        for mode, r in load.items():
            print(
                f"{mode:9s} {r.rate:8.1f} {_ms(r.p50):>7s} {_ms(r.p90):>7s} {_ms(r.p99):>7s} "
                f"{_ms(r.ttft_p50):>9s} {r.throughput_rps:6.1f} {r.cell_steps_per_s:13.0f} "
                f"{_per_cell(r.mean_batch_per_cell)}"
            )
    print(
        f"\nkernel at max batch: {report.kernel_cell_steps_per_s:.0f} cell-steps/s; idle p99 "
        f"{_ms(report.idle.get('p99', math.inf))} ms; SLO {_ms(report.slo_s)} ms"
    )
    for k, v in report.ratios.items():
        print(f"{k}: {v:.3f}")
    for baseline, t in report.targets.items():
        parts = [f"sustainable {t['sustainable_ratio']:.2f} x (>= {t['sustainable_min']}): "]
        parts.append("met" if t["sustainable_met"] else "missed")
        if "half_load_p50_ratio" in t:
            parts.append(
                f"; half-load p50 {t['half_load_p50_ratio']:.2f} x (<= {t['half_load_p50_max']}): "
                + ("met" if t["half_load_p50_met"] else "missed")
            )
        print(f"targets against {baseline}: {''.join(parts)}")
    print(f"valid (every mode matched the idle reference): {report.valid}")


def run_bench_cli(args: argparse.Namespace, base: EngineConfig) -> int:
    """``batchmaker bench``: every mode of ``args.modes`` on one trace; ``base`` is each
    mode's engine config but for its mode (from the CLI's flags)."""
    t0 = time.monotonic()
    report = asyncio.run(Bench(args, base).run())
    family = args.family
    out: Path = args.out or Path(f"bench-results/{'engine' if family == 'chain' else family}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = json.loads(json.dumps(asdict(report), default=str))
    payload["command"] = " ".join(sys.argv)
    payload["elapsed_s"] = time.monotonic() - t0
    text = json.dumps(payload, indent=2, allow_nan=True)
    out.write_text(text)
    print(text)
    print_table(report)
    return 0 if report.valid else 1
