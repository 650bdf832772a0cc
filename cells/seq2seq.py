"""An encoder-decoder as two cells that share one state pool.

The encoder reads the source one token per step; the greedy decoder emits one
target token per step and feeds it back to its own next step *on the device*:
the token is a state (``token``, int64), gathered and scattered with the
hidden state like any other. The host learns each step's tokens from one copy
per step (the executor's), which it needs anyway to stream them and to stop
at EOS, but never builds a request's next input itself.

Both cells carry the same states so that the decoder's first step can read the
encoder's last state from the same pool row: the encoder passes ``token``
through untouched.

A decoder input ``>= 0`` is forced (the first step's BOS); ``FEEDBACK`` (-1)
means "the token this request's previous step emitted".
"""

from __future__ import annotations

import torch

from cells.base import StateSpec
from cells.recurrent import RecurrentStackCell

FEEDBACK = -1
"""A decoder input meaning: read the token the previous step emitted, from the state."""

TOKEN_STATE = StateSpec("token", (), torch.int64)


class _TokenStateStack(RecurrentStackCell):
    """A recurrent stack whose state also carries the request's last emitted token."""

    @property
    def state_specs(self) -> tuple[StateSpec, ...]:
        return (*super().state_specs, TOKEN_STATE)


class EncoderCell(_TokenStateStack):
    """One source token through the stack; no projection, no output used."""

    def forward(
        self, inputs: torch.Tensor, states: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        out, new = super().forward(inputs, states[:-1])
        return out, (*new, states[-1])

    def forward_run(
        self,
        inputs: torch.Tensor,
        lengths: torch.Tensor,
        states: tuple[torch.Tensor, ...],
        *,
        pad_to_longest: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        out, new = super().forward_run(inputs, lengths, states[:-1], pad_to_longest=pad_to_longest)
        return out, (*new, states[-1])


class GreedyDecoderCell(_TokenStateStack):
    """One target step: embed the fed-back (or forced) token, step the stack, score, argmax."""

    token_state = "token"
    supports_runs = False  # each step's input is the token the last one emitted

    def forward(
        self, inputs: torch.Tensor, states: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        tokens = torch.where(inputs >= 0, inputs, states[-1])
        logits, new = super().forward(tokens, states[:-1])
        return logits, (*new, logits.argmax(dim=1))

    def forward_run(
        self,
        inputs: torch.Tensor,
        lengths: torch.Tensor,
        states: tuple[torch.Tensor, ...],
        *,
        pad_to_longest: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        raise NotImplementedError(
            "GreedyDecoderCell runs one step at a time: each step's input is the last output"
        )
