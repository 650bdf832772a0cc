"""The binary N-ary TreeLSTM cell (Tai, Socher and Manning, ACL 2015), batched.

A node reads its children's ``(h, c)``, ``[B, 2, H]`` each, gathered from the
pool by slot; an absent child reads the pool's zero row, so leaves, unary and
binary nodes all run the same kernel and batch together whatever their depth
or tree. Every node also takes a token (a word, a digit, an operator).

Gates, with ``h_l, h_r`` the children's hidden states and ``x`` the embedded token::

    i, f_l, f_r, o, u = W x + U [h_l; h_r] + b     (U has no bias)
    c = sigmoid(i) * tanh(u) + sigmoid(f_l) * c_l + sigmoid(f_r) * c_r
    h = sigmoid(o) * tanh(c)

Each child has its own forget gate, and each gate sees both children: the
N-ary variant, which tells left from right (``a - b`` is not ``b - a``).
The output is ``classifier(h)``.
"""

from __future__ import annotations

import torch
from torch import nn

from cells.base import Cell, StateSpec


class BinaryTreeLSTMCell(Cell):
    """One tree node for a batch of nodes: ``(tokens [B], (h [B,2,H], c [B,2,H]))``."""

    arity = 2

    def __init__(
        self, *, vocab_size: int, hidden_size: int, num_classes: int, embedding_dim: int = 0
    ) -> None:
        super().__init__()
        if min(vocab_size, hidden_size, num_classes) < 1:
            raise ValueError(
                "vocab_size, hidden_size and num_classes must be >= 1, got "
                f"{vocab_size}, {hidden_size}, {num_classes}"
            )
        emb = embedding_dim or hidden_size
        self.input_kind = "tokens"
        self.input_dim = vocab_size
        self.output_dim = num_classes
        self.hidden_size = hidden_size
        self.embedding = nn.Embedding(vocab_size, emb)
        self.W = nn.Linear(emb, 5 * hidden_size)
        self.U = nn.Linear(2 * hidden_size, 5 * hidden_size, bias=False)
        self.classifier = nn.Linear(hidden_size, num_classes)

    @property
    def state_specs(self) -> tuple[StateSpec, ...]:
        return (StateSpec("h", (self.hidden_size,)), StateSpec("c", (self.hidden_size,)))

    def forward(
        self, inputs: torch.Tensor, states: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        h_children, c_children = states
        gates = self.W(self.embedding(inputs)) + self.U(h_children.flatten(1))
        i, f_l, f_r, o, u = gates.chunk(5, dim=1)
        c = (
            torch.sigmoid(i) * torch.tanh(u)
            + torch.sigmoid(f_l) * c_children[:, 0]
            + torch.sigmoid(f_r) * c_children[:, 1]
        )
        h = torch.sigmoid(o) * torch.tanh(c)
        return self.classifier(h), (h, c)
