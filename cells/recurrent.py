"""LSTM and GRU stacks as single cells: embedding -> L layers -> projection.

The whole per-step stack is one cell, so one scheduler node per token runs all
layers (the BatchMaker paper's choice for stacked RNNs): fewer, fuller batches
than one node per layer, and a request's layers never wait on each other.

Weights live in a real ``nn.LSTM``/``nn.GRU`` (and ``nn.Embedding``/``nn.Linear``)
so a user's trained ``state_dict`` loads unchanged and plain torch over the
same modules is the reference the tests compare against. Each step calls the
fused ``torch.lstm_cell``/``torch.gru_cell`` kernels on *packed* copies of
those parameters: row-major ``[in, out]`` matrices handed over as transposed
views. At the small batches that low load produces, the CPU GEMM is 1.5-2x
faster in that layout than with nn.LSTM's ``[out, in]`` weights (2 x 512 LSTM
+ 10k projection, batch 8: 1.9 ms against 4.2 ms on one core).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from cells.base import Cell, InputKind, StateSpec
from cells.graphs import bucket

RecurrentKind = Literal["lstm", "gru"]
_T = TypeVar("_T")


RnnKernel = Literal["auto", "native", "onednn"]

KERNEL_TRIALS = 3
"""Timed calls of each CPU kernel per shape bucket before ``auto`` keeps the faster."""


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
    """Which CPU kernel runs ``nn.LSTM``/``nn.GRU`` over a run, per power-of-two bucket of
    batch size and steps.

    Neither wins everywhere (docs/benchmarks.md, "torch's two CPU kernels"; one 512-wide
    layer on this project's CPU): oneDNN pays a fixed cost per call (about 3-7 ms at one
    row and one step, against native's 1 ms) but is about twice as fast per step from a
    few rows and steps up (64 rows x 25 steps: 40 ms against 82). So ``auto`` times each
    kernel ``KERNEL_TRIALS`` times on the first calls of a bucket, alternating, then keeps the
    faster by median, as cuDNN's benchmark mode does on a GPU. Both compute the same
    function; a trial call's outputs are used like any other's. ``clock`` is a seam for
    tests."""

    def __init__(self, mode: RnnKernel = "auto", clock: Callable[[], float] = time.perf_counter):
        self.mode: RnnKernel = mode
        self._clock = clock
        self._trials: dict[tuple[int, int], dict[bool, list[float]]] = {}
        self.chosen: dict[tuple[int, int], bool] = {}
        """(batch bucket, steps bucket) -> whether oneDNN won, once decided."""

    def run(self, batch: int, steps: int, fn: Callable[[], _T]) -> _T:
        if self.mode != "auto":
            with onednn(self.mode == "onednn"):
                return fn()
        key = (bucket(batch), bucket(steps))
        chosen = self.chosen.get(key)
        if chosen is not None:
            with onednn(chosen):
                return fn()
        times = self._trials.setdefault(key, {False: [], True: []})
        trial = len(times[True]) < len(times[False])  # native first, then in turn
        t0 = self._clock()
        with onednn(trial):
            out = fn()
        times[trial].append(self._clock() - t0)
        if len(times[True]) >= KERNEL_TRIALS:
            self.chosen[key] = statistics.median(times[True]) < statistics.median(times[False])
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
        """The CPU kernel of ``forward_run``'s fused calls: ``kernels.mode`` is ``auto`` (timed
        per shape bucket), ``native`` or ``onednn``."""
        self._layer_params: list[tuple[torch.Tensor, ...]] = []
        self._proj_weight_t: torch.Tensor | None = None
        self._pack()
        self.register_load_state_dict_post_hook(  # type: ignore[no-untyped-call]
            lambda module, _: module._pack()
        )

    def _pack(self) -> None:
        """Rebuild the packed step weights from the module's parameters."""
        with torch.no_grad():
            self._layer_params = []
            for k in range(self.num_layers):
                w_ih, w_hh, b_ih, b_hh = (
                    getattr(self.rnn, f"{n}_l{k}").detach()
                    for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                )
                self._layer_params.append(
                    (w_ih.t().contiguous().t(), w_hh.t().contiguous().t(), b_ih, b_hh)
                )
            if self.proj is not None:
                self._proj_weight_t = self.proj.weight.detach().t().contiguous()

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

    def forward(
        self, inputs: torch.Tensor, states: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
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
            new_states: tuple[torch.Tensor, ...] = (
                torch.stack(new_h, dim=1),
                torch.stack(new_c, dim=1),
            )
        else:
            for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(self._layer_params):
                x = torch.gru_cell(x, h[:, k], w_ih, w_hh, b_ih, b_hh)
                new_h.append(x)
            new_states = (torch.stack(new_h, dim=1),)
        if self.proj is None or self._proj_weight_t is None:
            return x, new_states
        return torch.addmm(self.proj.bias, x, self._proj_weight_t), new_states

    def forward_run(
        self,
        inputs: torch.Tensor,
        lengths: torch.Tensor,
        states: tuple[torch.Tensor, ...],
        *,
        pad_to_longest: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Each row's run through the fused ``nn.LSTM``/``nn.GRU`` (MKL or cuDNN), from its
        gathered state: the layers' input projections for all K steps are one GEMM each,
        inside the kernel, and the host pays for one call instead of K. Rows are packed
        (``pack_padded_sequence``), so each stops at its own last step with its exact state;
        ``pad_to_longest`` runs them all K steps instead, as a padded request-level batch
        does, projection included. When every row runs all K steps (one request alone, or a
        full batch of long ones) the two are the same, and the unpacked call skips packing's
        sort, gathers and masks: about 0.3 ms a plan at batch 1, a quarter of a short plan."""
        batch, k = inputs.shape[0], inputs.shape[1]
        full = int(lengths.min()) == k
        pad_to_longest = pad_to_longest or full
        x = self.embedding(inputs) if self.embedding is not None else inputs
        x = x.transpose(0, 1)  # [K, B, E]: the kernel's time-major layout
        h0 = states[0].transpose(0, 1).contiguous()  # [B, L, H] -> [L, B, H]
        hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] = h0
        if self.kind == "lstm":
            hx = (h0, states[1].transpose(0, 1).contiguous())
        if pad_to_longest:
            y, hn = self._rnn_run(batch, k, lambda: self.rnn(x, hx))
        else:
            seq = pack_padded_sequence(x, lengths, enforce_sorted=False)
            packed, hn = self._rnn_run(batch, k, lambda: self.rnn(seq, hx))
            y, _ = pad_packed_sequence(packed, total_length=k)
        y = y.transpose(0, 1)  # [B, K, H]
        if pad_to_longest:
            flat = y.reshape(batch * k, -1)
            if self.proj is not None and self._proj_weight_t is not None:
                flat = torch.addmm(self.proj.bias, flat, self._proj_weight_t)
            out = flat if full else flat.view(batch, k, -1)[_live(lengths, k, y.device)]
        else:
            out = y[_live(lengths, k, y.device)]
            if self.proj is not None and self._proj_weight_t is not None:
                out = torch.addmm(self.proj.bias, out, self._proj_weight_t)
        hns = hn if isinstance(hn, tuple) else (hn,)
        return out, tuple(t.transpose(0, 1) for t in hns)

    def _rnn_run(self, batch: int, steps: int, fn: Callable[[], _T]) -> _T:
        if self.rnn.weight_hh_l0.device.type != "cpu":
            return fn()  # cuDNN on a GPU; the CPU kernels' choice does not apply
        return self.kernels.run(batch, steps, fn)

    def reference(self, inputs: torch.Tensor) -> torch.Tensor:
        """Plain torch over a whole sequence run alone: ``[T]`` or ``[T, D]`` in, ``[T, out]`` out.

        The ground truth every batching mode must match.
        """
        x = self.embedding(inputs) if self.embedding is not None else inputs
        y, _ = self.rnn(x.unsqueeze(1))
        y = y.squeeze(1)
        out: torch.Tensor = self.proj(y) if self.proj is not None else y
        return out
