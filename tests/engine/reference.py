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
from batchmaker.models.seq2seq import Seq2SeqModel
from batchmaker.models.tree import TreeModel
from batchmaker.types import TreeInput
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


# ---- seq2seq and TreeLSTM ------------------------------------------------------------
#
# The same rule as ``run_alone``: plain torch over the model's own modules (``nn.LSTM``/
# ``nn.GRU``, ``nn.Embedding``, ``nn.Linear``) or, for the TreeLSTM, its raw parameters,
# one request alone. No ``cells`` forward, no packed weights, no ``Model.reference``.


def run_seq2seq_alone(
    model: Seq2SeqModel,
    tokens: Sequence[int] | np.ndarray,
    max_len: int,
    *,
    follow: Sequence[int] | None = None,
) -> np.ndarray:
    """``[T, target_vocab]`` decoder scores of greedy decoding run alone.

    ``follow``: the tokens the engine decoded. Where the engine's token scores within
    ``TOL`` of this step's best (two ids tied to rounding: different kernels may break
    the tie either way), the reference feeds the engine's token on, so a tie does not
    fork the two decodes; anywhere else it feeds its own argmax, as greedy decoding does.

    The encoder's ``nn.LSTM``/``nn.GRU`` reads the whole source at once; its final
    state starts the decoder's, which is stepped one token at a time from ``bos``, each
    step fed the argmax of the previous one, and stops after the step whose argmax is
    ``eos`` or after ``max_len`` steps.
    """
    enc, dec = model.encoder, model.decoder
    assert enc.embedding is not None
    assert dec.embedding is not None
    assert dec.proj is not None
    rows: list[np.ndarray] = []
    with torch.no_grad():
        src = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
        _, state = enc.rnn(enc.embedding(src).unsqueeze(1))  # [T, 1, E]: the whole source
        token = model.bos
        for step in range(max_len):
            x = dec.embedding(torch.tensor([[token]]))  # [1, 1, E]
            y, state = dec.rnn(x, state)
            scores = dec.proj(y[0, 0])
            rows.append(scores.numpy())
            token = int(scores.argmax())
            if follow is not None and step < len(follow):
                theirs = follow[step]
                if 0 <= theirs < len(scores) and scores[theirs] >= scores[token] - TOL:
                    token = theirs
            if token == model.eos:
                break
    return np.stack(rows)


def seq2seq_cap(model: Seq2SeqModel, max_output_length: int | None) -> int:
    """Decoder steps a request may take: its own cap, else the model's."""
    return max_output_length or model.max_decode_len


def assert_seq2seq_matches_alone(
    model: Seq2SeqModel,
    tokens: Sequence[int] | np.ndarray,
    outputs: Sequence[StepOutput],
    *,
    max_output_length: int | None = None,
) -> np.ndarray:
    """``outputs`` are the whole stream: one step per decoded token, each equal to
    ``run_seq2seq_alone`` within ``TOL``, and the top-1 ids are the reference's tokens.

    Returns the reference scores.
    """
    want = run_seq2seq_alone(
        model, tokens, seq2seq_cap(model, max_output_length), follow=decoded(outputs)
    )
    assert [o.step for o in outputs] == list(range(len(want))), (
        f"{len(outputs)} steps, reference decodes {len(want)}"
    )
    if outputs and outputs[0].vector is not None:
        got = np.stack([o.vector for o in outputs])
        assert max_abs_diff(got, want) < TOL
    for out, row in zip(outputs, want, strict=True):
        if out.top_ids is not None:
            assert row[int(out.top_ids[0])] >= row.max() - TOL, "top-1 is not the best id"
            assert_top_k(out, len(out.top_ids), row)
    return want


def decoded(outputs: Sequence[StepOutput]) -> list[int] | None:
    """The tokens an engine's decoder fed back: each step's top-1, from its ids or its
    scores; ``None`` when the stream carries neither."""
    tokens = []
    for out in outputs:
        if out.top_ids is not None and len(out.top_ids):
            tokens.append(int(out.top_ids[0]))
        elif out.vector is not None:
            tokens.append(int(np.argmax(out.vector)))
        else:
            return None
    return tokens


def run_tree_alone(model: TreeModel, tree: TreeInput) -> np.ndarray:
    """``[1, num_classes]``: the N-ary TreeLSTM equations, node by node from the root down.

    Written from the cell's parameters (``embedding.weight``, ``W``, ``U``, ``classifier``)
    with no call into the cell: for a node with token ``x`` and children ``(h_l, c_l)``,
    ``(h_r, c_r)`` (zeros where absent),
    ``i, f_l, f_r, o, u = W e(x) + b + U [h_l; h_r]``,
    ``c = s(i) t(u) + s(f_l) c_l + s(f_r) c_r`` and ``h = s(o) t(c)``.
    """
    cell = model.cell
    hidden = cell.hidden_size
    emb = cell.embedding.weight
    w, b, u = cell.W.weight, cell.W.bias, cell.U.weight
    zero = torch.zeros(hidden, dtype=emb.dtype)
    children = [[int(c) for c in ch] for ch in tree.children]

    def node(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        kids = [node(c) for c in children[i]]
        kids += [(zero, zero)] * (cell.arity - len(kids))
        (h_l, c_l), (h_r, c_r) = kids
        x = emb[int(tree.tokens[i])]
        z = w @ x + b + u @ torch.cat([h_l, h_r])
        i_g, f_l, f_r, o_g, u_g = (z[k * hidden : (k + 1) * hidden] for k in range(5))
        c = (
            torch.sigmoid(i_g) * torch.tanh(u_g)
            + torch.sigmoid(f_l) * c_l
            + torch.sigmoid(f_r) * c_r
        )
        return torch.sigmoid(o_g) * torch.tanh(c), c

    named = {c for ch in children for c in ch}
    (root,) = [i for i in range(len(children)) if i not in named]
    with torch.no_grad():
        h, _ = node(root)
        scores = cell.classifier.weight @ h + cell.classifier.bias
    return scores.unsqueeze(0).numpy()


def assert_tree_matches_alone(
    model: TreeModel, tree: TreeInput, outputs: Sequence[StepOutput]
) -> np.ndarray:
    """``outputs`` are the tree's whole stream: one step, the root's scores, equal to
    ``run_tree_alone`` within ``TOL`` (and its top-k to the reference's). Returns the row."""
    (want,) = run_tree_alone(model, tree)
    assert [o.step for o in outputs] == [0]
    (out,) = outputs
    if out.vector is not None:
        assert max_abs_diff(out.vector, want) < TOL
    if out.top_ids is not None:
        assert int(out.top_ids[0]) == int(want.argmax())
        assert_top_k(out, len(out.top_ids), want)
    return want
