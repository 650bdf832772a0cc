"""LSTM and GRU stacks as single cells: embedding -> L layers -> projection.

The whole per-step stack is one cell, so one scheduler node per token runs all
layers (the BatchMaker paper's choice for stacked RNNs): fewer, fuller batches
than one node per layer, and a request's layers never wait on each other.

Weights live in a real ``nn.LSTM``/``nn.GRU`` (and ``nn.Embedding``/``nn.Linear``)
so a user's trained ``state_dict`` loads unchanged and plain torch over the
same modules is the reference the tests compare against. On the CPU a step runs
through ``cells.steploop`` (oneDNN's GEMMs, a precomputed first-layer table: 2.5 x
``torch.lstm_cell`` at 64 rows); a run of steps through whichever of the loop and
the fused ``nn.LSTM``/``nn.GRU`` kernels is faster at its shape (``KernelChooser``).
On a GPU a step calls the fused ``torch.lstm_cell``/``torch.gru_cell`` kernels (what
the CUDA graphs capture) and a run calls cuDNN.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Literal, TypeVar

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from cells.base import Cell, InputKind, StateSpec
from cells.graphs import bucket
from cells.steploop import StepLoop, linear, onednn_linear_available

RecurrentKind = Literal["lstm", "gru"]
_T = TypeVar("_T")


RnnKernel = Literal["auto", "native", "onednn", "loop"]

KERNELS: tuple[str, ...] = ("native", "onednn", "loop")
"""The CPU's ways to run a run of steps: torch's two ``nn.LSTM``/``nn.GRU`` kernels and
``cells.steploop``."""

KERNEL_TRIALS = 3
"""Timed calls of each CPU kernel per shape bucket before ``auto`` keeps the fastest."""


@contextlib.contextmanager
def onednn(enabled: bool) -> Iterator[None]:
    """torch's CPU RNN kernel for one call: oneDNN's or torch's native one. The flag is
    process-wide, so it is set around the call and restored."""
    before = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(enabled)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(before)


class KernelChooser:
    """Which CPU kernel runs a run of steps, per power-of-two bucket of batch size and steps,
    and apart for runs whose rows end at different steps (``run``'s ``ragged``).

    None wins everywhere (docs/benchmarks.md, "torch's two CPU kernels" and "The step
    loop"): oneDNN's fused ``nn.LSTM`` pays a fixed cost per call (about 3-7 ms at one row
    and one step of a 512-wide layer, against native's 1 ms) but is about twice as fast
    per step over long runs; it takes no packed sequence, so a run whose rows end apart
    falls back to the native kernel; the step loop has no fixed cost and the fastest
    GEMMs, but pays Python per step, which only long runs of few rows feel. So ``auto``
    times each kernel ``KERNEL_TRIALS`` times on the first calls of a bucket, in turn,
    then keeps the fastest by median, as cuDNN's benchmark mode does on a GPU. All compute
    the same function; a trial call's outputs are used like any other's. ``clock`` is a
    seam for tests."""

    def __init__(self, mode: RnnKernel = "auto", clock: Callable[[], float] = time.perf_counter):
        self.mode: RnnKernel = mode
        self._clock = clock
        self._trials: dict[tuple[int, int, bool], dict[str, list[float]]] = {}
        self.chosen: dict[tuple[int, int, bool], str] = {}
        """(batch bucket, steps bucket, ragged) -> the kernel that won, once decided."""
        self.num_trials = 0
        """Calls run on trial so far (``Cell.num_kernel_trials``)."""

    def run(
        self,
        batch: int,
        steps: int,
        kernels: Mapping[str, Callable[[], _T]],
        *,
        ragged: bool = False,
    ) -> _T:
        """Run one of ``kernels`` (name -> the call on that kernel) for a run of ``batch``
        rows and ``steps`` steps: the forced one, the bucket's winner, or its next trial.

        ``ragged``: the rows end at different steps. Such a run is its own bucket: oneDNN's
        fused kernel, often the fastest when every row runs every step, takes no packed
        sequence and falls back to the native one, about twice as slow, so the winner of
        the one is no guide to the other."""
        if self.mode != "auto":
            return kernels[self.mode]()
        key = (bucket(batch), bucket(steps), ragged)
        chosen = self.chosen.get(key)
        if chosen is not None:
            return kernels[chosen]()
        times = self._trials.setdefault(key, {name: [] for name in kernels})
        trial = min(times, key=lambda name: len(times[name]))  # in turn, in the given order
        self.num_trials += 1
        t0 = self._clock()
        out = kernels[trial]()
        times[trial].append(self._clock() - t0)
        if all(len(t) >= KERNEL_TRIALS for t in times.values()):
            self.chosen[key] = min(times, key=lambda name: statistics.median(times[name]))
            del self._trials[key]
        return out


def _live(lengths: torch.Tensor, k: int, device: torch.device) -> torch.Tensor:
    """``[B, K]`` mask of the steps each row runs: its first ``lengths[b]``."""
    return torch.arange(k, device=device) < lengths.to(device).unsqueeze(1)


class RecurrentStackCell(Cell):
    """One timestep of an L-layer LSTM or GRU, with optional embedding and projection."""

    supports_runs = True

    def __init__(
        self,
        kind: RecurrentKind,
        *,
        hidden_size: int,
        num_layers: int = 1,
        vocab_size: int | None = None,
        input_dim: int | None = None,
        embedding_dim: int | None = None,
        output_dim: int | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("lstm", "gru"):
            raise ValueError(f"kind must be 'lstm' or 'gru', got {kind!r}")
        if (vocab_size is None) == (input_dim is None):
            raise ValueError("give exactly one of vocab_size (token input) or input_dim (vectors)")
        if hidden_size < 1 or num_layers < 1:
            raise ValueError(
                f"hidden_size and num_layers must be >= 1, got {hidden_size}, {num_layers}"
            )
        self.kind: RecurrentKind = kind
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.embedding: nn.Embedding | None
        if vocab_size is not None:
            self.input_kind: InputKind = "tokens"
            self.input_dim = vocab_size
            emb = embedding_dim or hidden_size
            self.embedding = nn.Embedding(vocab_size, emb)
            rnn_in = emb
        else:
            assert input_dim is not None
            self.input_kind = "vectors"
            self.input_dim = input_dim
            self.embedding = None
            rnn_in = input_dim
        rnn_cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = rnn_cls(rnn_in, hidden_size, num_layers=num_layers)
        self.proj = nn.Linear(hidden_size, output_dim) if output_dim else None
        self.output_dim = output_dim or hidden_size
        self.kernels = KernelChooser()
        """The CPU kernel of ``forward_run``: ``kernels.mode`` is ``auto`` (timed per shape
        bucket) or one of ``KERNELS``."""
        self._layer_params: list[tuple[torch.Tensor, ...]] = []
        self._proj: tuple[torch.Tensor, torch.Tensor] | None = None
        self._loop: StepLoop | None = None
        self._pack()
        self.register_load_state_dict_post_hook(  # type: ignore[no-untyped-call]
            lambda module, _: module._pack()
        )

    @property
    def num_kernel_trials(self) -> int:
        return self.kernels.num_trials

    def _pack(self) -> None:
        """Rebuild what the steps compute with from the module's parameters: on the CPU in
        float32 the step loop (its table built on first use); elsewhere detached copies for
        ``torch.lstm_cell``/``gru_cell`` (no autograd there). Never both: the copies are as
        large as the recurrent weights, and the loop never reads them."""
        with torch.no_grad():
            on_cpu = self.rnn.weight_hh_l0.device.type == "cpu"
            floats = self.rnn.weight_hh_l0.dtype == torch.float32
            self._loop = (
                StepLoop.from_rnn(self.rnn, self.embedding)
                if on_cpu and floats and onednn_linear_available()
                else None
            )
            self._layer_params = []
            for k in range(self.num_layers if self._loop is None else 0):
                w_ih, w_hh, b_ih, b_hh = (
                    getattr(self.rnn, f"{n}_l{k}").detach()
                    for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                )
                # Row-major [in, out] handed over as transposed views: cuBLAS and MKL take
                # either, and MKL was 1.5-2 x faster in this layout at small batches.
                self._layer_params.append(
                    (w_ih.t().contiguous().t(), w_hh.t().contiguous().t(), b_ih, b_hh)
                )
            if self.proj is not None:
                self._proj = (self.proj.weight.detach(), self.proj.bias.detach())

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .to()/.cuda()/.half() replace the parameters: pack the new ones.
        out = super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        self._pack()
        return out

    @property
    def state_specs(self) -> tuple[StateSpec, ...]:
        shape = (self.num_layers, self.hidden_size)
        if self.kind == "lstm":
            return (StateSpec("h", shape), StateSpec("c", shape))
        return (StateSpec("h", shape),)

    def prepare(self) -> None:
        if self._loop is not None:
            self._loop.table  # noqa: B018 (built on first use)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return x if self._proj is None else linear(x, *self._proj)

    def forward(
        self, inputs: torch.Tensor, states: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        if self._loop is not None:
            y, new_states = self._loop.run(inputs.unsqueeze(1), None, states)
            return self._project(y), new_states
        x = self.embedding(inputs) if self.embedding is not None else inputs
        h = states[0]
        new_h = []
        if self.kind == "lstm":
            c = states[1]
            new_c = []
            for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(self._layer_params):
                x, ck = torch.lstm_cell(x, (h[:, k], c[:, k]), w_ih, w_hh, b_ih, b_hh)
                new_h.append(x)
                new_c.append(ck)
            new_states = (torch.stack(new_h, dim=1), torch.stack(new_c, dim=1))
        else:
            for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(self._layer_params):
                x = torch.gru_cell(x, h[:, k], w_ih, w_hh, b_ih, b_hh)
                new_h.append(x)
            new_states = (torch.stack(new_h, dim=1),)
        return self._project(x), new_states

    def forward_run(
        self,
        inputs: torch.Tensor,
        lengths: torch.Tensor,
        states: tuple[torch.Tensor, ...],
        *,
        pad_to_longest: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Each row's run in one call, from its gathered state, so the host pays for one call
        instead of K: on a GPU through cuDNN's fused ``nn.LSTM``/``nn.GRU``; on the CPU
        through whichever of the step loop and torch's two fused kernels is fastest at this
        shape (``KernelChooser``). Each row stops at its own last step with its exact state
        (packed); ``pad_to_longest`` runs them all K steps instead, as a padded
        request-level batch does, projection included. When every row runs all K steps
        (one request alone, or a full batch of long ones) the two are the same, and the
        fused kernel's unpacked call skips packing's sort, gathers and masks: about 0.3 ms a
        plan at batch 1, a quarter of a short plan."""
        batch, k = inputs.shape[0], inputs.shape[1]
        full = int(lengths.min()) == k
        pad_to_longest = pad_to_longest or full
        loop = self._loop
        if loop is None:  # cuDNN on a GPU; the CPU kernels' choice does not apply
            y, hns = self._fused(inputs, lengths, states, pad_to_longest)
        else:
            to_run = None if pad_to_longest else lengths
            y, hns = self.kernels.run(
                batch,
                k,
                ragged=not pad_to_longest,
                kernels={
                    "native": lambda: self._fused(
                        inputs, lengths, states, pad_to_longest, onednn_kernel=False
                    ),
                    "onednn": lambda: self._fused(
                        inputs, lengths, states, pad_to_longest, onednn_kernel=True
                    ),
                    "loop": lambda: loop.run(inputs, to_run, states),
                },
            )
        out = self._project(y)
        if pad_to_longest and not full:
            out = out.view(batch, k, -1)[_live(lengths, k, out.device)]
        return out, hns

    def _fused(
        self,
        inputs: torch.Tensor,
        lengths: torch.Tensor,
        states: tuple[torch.Tensor, ...],
        pad_to_longest: bool,
        onednn_kernel: bool | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The run through ``nn.LSTM``/``nn.GRU`` (on the CPU on torch's oneDNN or native
        kernel, by ``onednn_kernel``): the last layer's outputs, row after row, every row's
        K steps (``pad_to_longest``) or only its live ones, and the final states."""
        batch, k = inputs.shape[0], inputs.shape[1]
        x = self.embedding(inputs) if self.embedding is not None else inputs
        x = x.transpose(0, 1)  # [K, B, E]: the kernel's time-major layout
        h0 = states[0].transpose(0, 1).contiguous()  # [B, L, H] -> [L, B, H]
        hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] = h0
        if self.kind == "lstm":
            hx = (h0, states[1].transpose(0, 1).contiguous())
        with contextlib.nullcontext() if onednn_kernel is None else onednn(onednn_kernel):
            if pad_to_longest:
                y, hn = self.rnn(x, hx)
            else:
                seq = pack_padded_sequence(x, lengths, enforce_sorted=False)
                packed, hn = self.rnn(seq, hx)
                y, _ = pad_packed_sequence(packed, total_length=k)
        y = y.transpose(0, 1)  # [B, K, H]
        rows = y.reshape(batch * k, -1) if pad_to_longest else y[_live(lengths, k, y.device)]
        hns = hn if isinstance(hn, tuple) else (hn,)
        return rows, tuple(t.transpose(0, 1) for t in hns)

    def reference(self, inputs: torch.Tensor) -> torch.Tensor:
        """Plain torch over a whole sequence run alone: ``[T]`` or ``[T, D]`` in, ``[T, out]`` out.

        The ground truth every batching mode must match.
        """
        x = self.embedding(inputs) if self.embedding is not None else inputs
        y, _ = self.rnn(x.unsqueeze(1))
        y = y.squeeze(1)
        out: torch.Tensor = self.proj(y) if self.proj is not None else y
        return out
