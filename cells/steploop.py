"""The recurrent stack's step loop on the CPU: oneDNN's GEMMs and a table for the first layer.

Why not the kernels torch gives (``torch.lstm_cell`` per step, ``nn.LSTM`` over a run):

- **The GEMM.** ``torch.lstm_cell``, ``nn.Linear`` and the native ``nn.LSTM`` multiply through
  MKL, which on this project's AMD EPYC takes its generic path: a ``[64, 512] x [512, 2048]``
  product in 1.17 ms, where oneDNN's (``torch.ops.mkldnn._linear_pointwise``, what
  ``torch.compile`` lowers ``nn.Linear`` to on the CPU) takes 0.56 ms. On an Intel CPU the
  two are about even, so nothing is lost there.
- **Packed runs.** oneDNN's fused ``nn.LSTM`` (2.3 ms a step at 64 rows of a 2 x 512 stack)
  takes no packed sequence: a plan whose rows end at different steps fell back to the native
  kernel, 5.2 ms a step, and pays about 1.3 ms per call to reorder the weights besides.
- **The first layer's input projection** of a token is a row of ``embedding @ W_ih.T + b``,
  the same for every request: computed once (``table``), it turns that GEMM into a gather.

So this loop runs the stack layer by layer, as cuDNN does: each layer's input projection
for every live step of the plan is one GEMM (a gather for the first layer of a token
model), then one ``h @ W_hh.T`` GEMM and the gates' pointwise ops per step. Rows are
sorted longest first, so the rows still running at a step are a prefix and each row's
state stops at its own last step, exactly as a packed ``nn.LSTM`` gives it. At 64 rows of
the 2 x 512 LSTM with 10k tokens a step costs 2.2 ms against ``torch.lstm_cell``'s 5.5;
at one row 0.19 against 0.26. It only loses to the fused call on long runs of few rows
(one request's 100 tokens: the loop's Python per step), which is why ``forward_run``
times both per shape (``KernelChooser``).

It computes the same function as ``nn.LSTM``/``nn.GRU`` in float32: the sums run in
another order, about 1e-7 apart.
"""

from __future__ import annotations

from typing import Literal

import torch

TABLE_MAX_BYTES = 256 * 2**20
"""The largest first-layer table built (``vocab x gates x 4`` bytes): a 10k vocabulary into
a 512-wide LSTM takes 80 MiB. Above it the first layer multiplies its embeddings instead."""


def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's linear op (every x86 and ARM CPU build does)."""
    available = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
    return bool(available) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias``: through oneDNN for float32 on the CPU (see the module's
    docstring for why), else ``F.linear`` (cuBLAS on a GPU). ``weight`` is ``[out, in]``,
    detached: the oneDNN op has no autograd."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and _ONEDNN:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), weight, bias, "none", [], ""
        )
        return out
    return torch.nn.functional.linear(x, weight, bias)


_ONEDNN = onednn_linear_available()


class StepLoop:
    """An L-layer LSTM or GRU over runs of steps, from ``nn.LSTM``/``nn.GRU``'s weights.

    Built from detached copies (``from_rnn``) and rebuilt whenever the weights change, as
    the cell's packed parameters are. Its only state is the table it builds once; two
    threads that race to build it build the same one.
    """

    def __init__(
        self,
        kind: Literal["lstm", "gru"],
        layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
        embedding: torch.Tensor | None,
    ) -> None:
        self.kind = kind
        self.hidden = layers[0][1].shape[1]
        self.embedding = embedding
        self._w_ih = [w_ih for w_ih, _, _, _ in layers]
        self._w_hh = [w_hh for _, w_hh, _, _ in layers]
        # An LSTM's two biases only ever appear summed: fold them into the input side. A
        # GRU's hidden bias sits inside ``r * (h @ W_hn.T + b_hn)``, so it stays apart.
        if kind == "lstm":
            self._b_ih = [b_ih + b_hh for _, _, b_ih, b_hh in layers]
            self._b_hh: list[torch.Tensor | None] = [None] * len(layers)
        else:
            self._b_ih = [b_ih for _, _, b_ih, _ in layers]
            self._b_hh = [b_hh for _, _, _, b_hh in layers]
        self._table: torch.Tensor | None = None
        self._wants_table = embedding is not None and (
            embedding.shape[0] * self._w_ih[0].shape[0] * embedding.element_size()
            <= TABLE_MAX_BYTES
        )

    @property
    def table(self) -> torch.Tensor | None:
        """``[vocab, gates]``: the first layer's input projection of every token, or ``None``
        (vector inputs, or over ``TABLE_MAX_BYTES``). Built on first use, not when the
        weights are packed: a model is packed at construction, again when its weights load
        and when it moves, and a cell bound for a GPU never needs it (0.1 s for 10k tokens
        into a 512-wide LSTM)."""
        if self._table is None and self._wants_table:
            assert self.embedding is not None
            with torch.no_grad():
                self._table = linear(self.embedding, self._w_ih[0], self._b_ih[0])
        return self._table

    @classmethod
    def from_rnn(
        cls, rnn: torch.nn.LSTM | torch.nn.GRU, embedding: torch.nn.Embedding | None
    ) -> StepLoop:
        kind: Literal["lstm", "gru"] = "lstm" if isinstance(rnn, torch.nn.LSTM) else "gru"
        with torch.no_grad():
            layers = [
                tuple(
                    getattr(rnn, f"{n}_l{k}").detach().contiguous()
                    for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                )
                for k in range(rnn.num_layers)
            ]
            emb = embedding.weight.detach().contiguous() if embedding is not None else None
            return cls(kind, layers, emb)

    def run(
        self,
        inputs: torch.Tensor,
        lengths: torch.Tensor | None,
        states: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Each row's first ``lengths[b]`` steps (all ``K`` when ``lengths`` is ``None``).

        ``inputs``: ``[B, K]`` tokens or ``[B, K, D]`` vectors; ``states``: ``h`` (and an
        LSTM's ``c``), each ``[B, L, H]``. Returns the last layer's output of every live
        step, row after row (``[sum(lengths), H]``), and each row's states after its own
        last step, ``[B, L, H]`` each.
        """
        batch, k = inputs.shape[0], inputs.shape[1]
        ragged = lengths is not None and int(lengths.min()) < k
        if ragged:
            assert lengths is not None
            lengths = lengths.to(torch.int64)
            sorted_lengths, order = torch.sort(lengths, descending=True, stable=True)
            inputs = inputs.index_select(0, order)
            states = tuple(s.index_select(0, order) for s in states)
            steps = torch.arange(k)
            live = steps.unsqueeze(1) < sorted_lengths.unsqueeze(0)  # [K, B], time-major
            alive = live.sum(dim=1).tolist()  # rows still running at each step: a prefix
            x = inputs.transpose(0, 1)[live]  # the live steps, time-major, packed
        else:
            alive = [batch] * k
            x = inputs.transpose(0, 1).reshape(k * batch, *inputs.shape[2:])

        table = self.table
        if table is not None:
            ih = table.index_select(0, x)
        else:
            if self.embedding is not None:
                x = torch.nn.functional.embedding(x, self.embedding)
            ih = linear(x, self._w_ih[0], self._b_ih[0])
        finals: list[list[torch.Tensor]] = [[] for _ in states]
        y = ih
        for layer in range(len(self._w_ih)):
            if layer:
                ih = linear(y, self._w_ih[layer], self._b_ih[layer])
            y, last = self._layer(layer, ih, alive, tuple(s[:, layer] for s in states))
            for f, t in zip(finals, last, strict=True):
                f.append(t)
        new_states = tuple(torch.stack(f, dim=1) for f in finals)

        if not ragged:
            out = y.view(k, batch, -1).transpose(0, 1).reshape(k * batch, -1)
            return out, new_states
        assert lengths is not None
        # Packed position (step s, sorted row j) -> row-major position start[order[j]] + s.
        start = torch.cumsum(lengths, 0) - lengths
        where = (start.index_select(0, order).unsqueeze(0) + steps.unsqueeze(1))[live]
        out = torch.empty_like(y).index_copy_(0, where, y)
        unsort = torch.empty_like(order).index_copy_(0, order, torch.arange(batch))
        return out, tuple(s.index_select(0, unsort) for s in new_states)

    def _layer(
        self,
        layer: int,
        ih: torch.Tensor,
        alive: list[int],
        states: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """One layer over every step: ``ih`` is its input projection, packed time-major.
        Returns its outputs, packed the same way, and each row's last states."""
        w_hh, b_hh, hidden = self._w_hh[layer], self._b_hh[layer], self.hidden
        h = states[0]
        c = states[1] if self.kind == "lstm" else None
        # Rows are sorted longest first, so the rows still running are always a prefix.
        # When rows end, their states are set aside as they are and the running ones are
        # a view of the prefix: nothing is copied per step. (A ``cat`` of the running and
        # the ended rows' states at every later step made a 16-row, 32-step ragged run of
        # the 2 x 512 LSTM take 114 ms against 71 ms now, one thread of this project's
        # CPU; at 8 rows and fewer the two were within noise.)
        ended: list[tuple[torch.Tensor, ...]] = []
        outs = []
        at, running = 0, h.shape[0]
        for n in alive:
            if n < running:
                ended.append((h[n:],) if c is None else (h[n:], c[n:]))
                h = h[:n]
                c = None if c is None else c[:n]
                running = n
            g, at = ih[at : at + n], at + n
            gh = linear(h, w_hh, b_hh)
            if c is not None:
                gates = gh.add_(g)
                sig = torch.sigmoid(gates)
                c = torch.addcmul(
                    sig[:, hidden : 2 * hidden] * c,
                    sig[:, :hidden],
                    torch.tanh(gates[:, 2 * hidden : 3 * hidden]),
                )
                h = sig[:, 3 * hidden :] * torch.tanh(c)
            else:
                rz = torch.sigmoid(g[:, : 2 * hidden] + gh[:, : 2 * hidden])
                cand = torch.tanh(
                    torch.addcmul(g[:, 2 * hidden :], rz[:, :hidden], gh[:, 2 * hidden :])
                )
                h = torch.lerp(cand, h, rz[:, hidden:])
            outs.append(h)
        # The last rows to end come right after the ones that ran every step.
        last = (h,) if c is None else (h, c)
        finals = tuple(
            torch.cat([t, *(e[i] for e in reversed(ended))]) if ended else t
            for i, t in enumerate(last)
        )
        y = torch.cat(outs) if len(outs) > 1 else outs[0]
        return y, finals
