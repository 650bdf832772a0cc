"""Input checks the model families share: token ids, vocabularies, tree child lists.

Each raises ``InvalidRequestError`` naming the field and the problem, so a caller
in-process and a client over any protocol get the same message. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from batchmaker.errors import InvalidRequestError
from batchmaker.types import TreeInput


def child_lists(children: object) -> list[list[int]]:
    """A tree's child lists as ints, refusing anything that is not exactly that: ``int()``
    would quietly turn ``1.5``, ``True`` or ``"1"`` into node 1, a different tree."""
    bad = InvalidRequestError("tree.children: expected one list of integer node indices per node")
    if isinstance(children, str | bytes) or not isinstance(children, Sequence | np.ndarray):
        raise bad
    out = []
    for node, ch in enumerate(children):
        if isinstance(ch, str | bytes) or not isinstance(ch, Sequence | np.ndarray):
            raise bad
        row = []
        for c in ch:
            if isinstance(c, bool | np.bool_) or not isinstance(c, int | np.integer):
                raise InvalidRequestError(
                    f"tree.children: node {node} names child {c!r}, not an integer node index"
                )
            row.append(int(c))
        out.append(row)
    return out


def check_vocabulary(model: str, field: str, words: Sequence[str], size: int) -> None:
    """A vocabulary is optional, but when given it names every id exactly once."""
    if words and len(words) != size:
        raise ValueError(f"model {model!r}: {field} has {len(words)} entries, not {size}")


def as_array(inputs: object, field: str) -> np.ndarray:
    try:
        return np.asarray(inputs)
    except (ValueError, TypeError) as exc:  # ragged nesting, or not array-like at all
        raise InvalidRequestError(f"{field}: not a rectangular array ({exc})") from None


def check_token_ids(
    inputs: object, *, model: str, vocab_size: int, max_len: int, field: str = "inputs"
) -> np.ndarray:
    """``inputs`` as int64 ids, or ``InvalidRequestError`` naming ``field`` and the problem."""
    if isinstance(inputs, TreeInput):
        raise InvalidRequestError(f"{field}: model {model!r} takes a token sequence, not a tree")
    ids = as_array(inputs, field)
    if ids.ndim == 0:
        raise InvalidRequestError(f"{field}: expected a sequence, got a scalar of {ids.dtype}")
    n = len(ids)
    if n == 0:
        raise InvalidRequestError(f"{field}: the sequence is empty")
    if n > max_len:
        raise InvalidRequestError(f"{field}: length {n} exceeds model {model!r} limit {max_len}")
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise InvalidRequestError(
            f"{field}: model {model!r} takes a 1-D sequence of integer token ids, "
            f"got shape {list(ids.shape)} of {ids.dtype}"
        )
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise InvalidRequestError(
            f"{field}: token id {bad} is outside the vocabulary [0, {vocab_size})"
        )
    return ids.astype(np.int64, copy=False)
