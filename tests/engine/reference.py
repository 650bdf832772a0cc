"""The one "run alone" reference every engine test compares against.

Plain torch over the whole sequence, one request alone: the model's own
``nn.Embedding`` -> ``nn.LSTM``/``nn.GRU`` (the multi-layer sequence module, not
the step kernels the engine runs) -> ``nn.Linear``. It shares the weights with
the engine and nothing else: no ``cells`` step code, no packed weights, no
``Model.reference``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from batchmaker import SequenceModel, StepOutput
from cells import RecurrentStackCell

TOL = 1e-5
"""Largest absolute difference allowed between a served output and the reference."""


def run_alone(
    model: SequenceModel | RecurrentStackCell, inputs: Sequence[int] | np.ndarray
) -> np.ndarray:
    """``[T, output_dim]`` outputs of plain torch run on this one sequence (batch of one)."""
    cell = model.cell if isinstance(model, SequenceModel) else model
    dtype = cell.rnn.weight_ih_l0.dtype
    with torch.no_grad():
        x = torch.as_tensor(np.asarray(inputs))
        x = cell.embedding(x.long()) if cell.embedding is not None else x.to(dtype)
        y, _ = cell.rnn(x.unsqueeze(1))  # [T, 1, H]: the whole sequence at once
        y = y.squeeze(1)
        if cell.proj is not None:
            y = cell.proj(y)
    return y.numpy()


def max_abs_diff(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, f"shape {got.shape}, reference {want.shape}"
    return float(np.abs(got - want).max())


def assert_matches_alone(
    model: SequenceModel, inputs: Sequence[int] | np.ndarray, outputs: Sequence[StepOutput]
) -> None:
    """``outputs`` are the whole stream of ``inputs``: steps 0..T-1, each equal to plain torch.

    Checks the vectors when the stream carries them and the top-k when it does.
    """
    want = run_alone(model, inputs)
    assert [o.step for o in outputs] == list(range(len(want)))
    if outputs[0].vector is not None:
        got = np.stack([o.vector for o in outputs])
        assert max_abs_diff(got, want) < TOL
    for out, row in zip(outputs, want, strict=True):
        if out.top_ids is not None:
            assert_top_k(out, len(out.top_ids), row)


def assert_top_k(out: StepOutput, k: int, want_row: np.ndarray) -> None:
    """``out``'s top-k agrees with its own vector's argsort and with the reference row.

    Exact ties in the vector may be ordered either way (it happens: two float32
    outputs can round to the same value); against the reference, so may near-ties.
    """
    ids, scores = out.top_ids, out.top_scores
    assert ids is not None
    assert scores is not None
    assert ids.shape == (k,)
    assert scores.shape == (k,)
    assert ids.dtype == np.int64
    assert len(set(ids.tolist())) == k
    if out.vector is not None:
        order = np.argsort(-out.vector, kind="stable")[:k]
        assert np.array_equal(out.vector[ids], out.vector[order]), (ids, order)
        assert np.array_equal(scores, out.vector[ids])
    assert np.all(np.diff(scores) <= 0), "scores must come best first"
    assert np.abs(scores - want_row[ids]).max() < TOL
    rest = np.delete(want_row, ids)
    if rest.size:
        assert rest.max() <= scores[-1] + 2 * TOL, "a better id was left out of the top-k"
