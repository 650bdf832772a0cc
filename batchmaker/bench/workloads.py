"""The engine benchmark's model families (``--family``), one ``Workload`` each.

A workload is what differs between families: the model, a trace of its requests, how
request ``i`` of the trace is sent, and the shape figures the report gives. The
benchmark itself (``engine.Bench``) is the same for every family.

- ``chain``: an LSTM language model over token sequences (the default);
- ``seq2seq``: an LSTM encoder-decoder, greedy, decoding each request's recorded
  target length (its output cap), with an EOS id the random decoder all but
  never emits (``quietest_token``);
- ``tree``: a binary TreeLSTM classifier over random binarised-parse-shaped trees.

Builds models and traces, never an engine: nothing here runs a request.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from batchmaker.bench.openloop import Send
from batchmaker.bench.reference import TOP_K, Fingerprint
from batchmaker.bench.trace import (
    Arrival,
    Trace,
    make_trace,
    make_tree_trace,
    tree_depth,
    tree_leaves,
)
from batchmaker.models.base import Model
from batchmaker.models.builtin import benchmark_model
from batchmaker.models.seq2seq import Seq2SeqModel, seq2seq_model
from batchmaker.models.sequence import SequenceModel, recurrent_model
from batchmaker.models.tree import TreeModel, tree_model
from batchmaker.runtime.engine import Engine
from batchmaker.runtime.stream import RequestStream
from batchmaker.types import InferRequest, StepOutput, TreeInput

FAMILIES: tuple[str, ...] = ("chain", "seq2seq", "tree")

LENGTHS = (20.0, 100.0)
"""Median and p99 of request lengths (tokens, target tokens, leaves): sentence-shaped."""
TINY_LENGTHS = (6.0, 20.0)
"""``--tiny``: short requests, for smoke tests."""


@dataclass(frozen=True)
class RequestSpec:
    """What request ``i`` of a trace sends, built once per trace (not per replay)."""

    inputs: np.ndarray | TreeInput
    max_output_length: int | None = None
    """seq2seq: the recorded target length; ``None``: the model's own limit."""


def engine_sender(
    engine: Engine,
    model: Model,
    specs: Sequence[RequestSpec],
    *,
    top_k: int = TOP_K,
    vectors: bool = False,
    on_end: Callable[[int, RequestStream], None] | None = None,
) -> Send:
    """Request ``i`` of ``specs`` to an in-process engine, for an open-loop replay
    (``openloop.replay``): its steps as they arrive, cancelled if the replay stops it.
    ``on_end(i, stream)`` sees each stream once it has ended, for what the engine
    measured of it (its ``queue_time``).

    Each asks for its top ``top_k`` ids and scores only, not the output vectors (unless
    ``vectors``), as the step-cost profiles are measured (``stepcost.measure_profile``):
    a vector of the benchmark LM is 40 KB a step, which the device would copy out and a
    replay of thousands of requests would keep."""

    async def send(i: int) -> AsyncGenerator[list[StepOutput], None]:
        spec = specs[i]
        request = InferRequest(
            model.name,
            spec.inputs,
            top_k=top_k,
            max_output_length=spec.max_output_length,
            return_vectors=vectors,
        )
        stream = engine.submit(request)
        try:
            while chunk := await stream.next_chunk():
                yield chunk
        finally:
            stream.cancel()
            if on_end is not None:
                on_end(i, stream)

    return send


class Workload(ABC):
    """One model family under benchmark: its model, its trace, and its requests.

    ``engine.Bench`` is the same for every family; what differs is here.
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
