"""Batched cell math in torch.

Cells know tensors and nothing about requests: no request ids, no scheduler,
no serving runtime. See docs/architecture.md for the layering.
"""

from cells.base import Cell, InputKind, StateSpec
from cells.pool import StatePool
from cells.recurrent import RecurrentKind, RecurrentStackCell
from cells.seq2seq import FEEDBACK, EncoderCell, GreedyDecoderCell
from cells.tree import BinaryTreeLSTMCell

__all__ = [
    "FEEDBACK",
    "BinaryTreeLSTMCell",
    "Cell",
    "EncoderCell",
    "GreedyDecoderCell",
    "InputKind",
    "RecurrentKind",
    "RecurrentStackCell",
    "StatePool",
    "StateSpec",
]
