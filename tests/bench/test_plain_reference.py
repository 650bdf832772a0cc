"""The benchmarks' check of the idle reference against plain torch (``check_reference``):
it passes the truth, fails a corrupted idle run of every family (a wrong step of a chain,
a wrong decoded token, a corrupted tree root), and for trees it is independent of the cell
the engine runs (``plain.tree_reference``), so a bug in that cell cannot pass its own
check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from batchmaker.bench.plain import plain_torch, tree_reference
from batchmaker.bench.reference import Fingerprint, check_reference, top_of
from batchmaker.bench.trace import make_tree_trace
from batchmaker.bench.workloads import make_workload
from batchmaker.models.base import Model
from batchmaker.models.tree import tree_model
from batchmaker.types import InferRequest, TreeInput

N = 6


def _requests(family: str) -> tuple[Model, dict[int, InferRequest], bool]:
    w = make_workload(family, tiny=True)
    specs = w.specs(w.make_trace(N, seed=1, arrival="poisson"))
    requests = {
        i: InferRequest(w.model.name, s.inputs, max_output_length=s.max_output_length)
        for i, s in enumerate(specs)
    }
    return w.model, requests, w.feeds_back


def _truth(model: Model, requests: dict[int, InferRequest]) -> dict[int, Fingerprint]:
    return {i: top_of(model.reference(r)) for i, r in requests.items()}


@pytest.mark.parametrize("family", ["chain", "seq2seq", "tree"])
def test_the_truth_passes_and_a_corrupted_idle_run_fails(family: str) -> None:
    model, requests, feeds_back = _requests(family)
    truth = _truth(model, requests)
    check_reference(model, requests, truth, feeds_back=feeds_back)
    # The last step of request 3 (a tree's root, its only step): its best id replaced
    # by the worst-scored one, then separately its best score moved.
    for field in ("ids", "scores"):
        bad = dict(truth)
        fp = Fingerprint(ids=truth[3].ids.copy(), scores=truth[3].scores.copy())
        if field == "ids":
            rows = model.reference(requests[3])
            fp.ids[-1, 0] = int(rows[-1].argmin())
        else:
            fp.scores[-1, 0] += 0.05
        bad[3] = fp
        with pytest.raises(RuntimeError, match="request 3"):
            check_reference(model, requests, bad, feeds_back=feeds_back)
    # A step missing at the end.
    bad = dict(truth)
    bad[0] = Fingerprint(ids=truth[0].ids[:-1], scores=truth[0].scores[:-1])
    with pytest.raises(RuntimeError, match="request 0"):
        check_reference(model, requests, bad, feeds_back=feeds_back)


def test_the_tree_reference_agrees_with_the_model_and_the_cell() -> None:
    model = tree_model("t", vocab_size=50, hidden_size=24, num_classes=7, seed=2)
    trace = make_tree_trace(
        12, vocab_size=50, seed=4, arrival="poisson", max_leaves=20, median_leaves=6, p99_leaves=18
    )
    assert trace.children is not None
    for tokens, children in zip(trace.tokens, trace.children, strict=True):
        tree = TreeInput(tokens=tokens, children=[[int(c) for c in r if c >= 0] for r in children])
        request = InferRequest("t", tree)
        want = model.reference(request)
        got = tree_reference(model, request)
        assert got.shape == want.shape == (1, 7)
        assert np.allclose(got, want, atol=1e-5)
    # One node, no children; and the plain_torch dispatch picks it.
    leaf = InferRequest("t", TreeInput(tokens=[3], children=[[]]))
    assert np.allclose(plain_torch(model, leaf), model.reference(leaf), atol=1e-5)


def test_a_bug_in_the_tree_cell_does_not_pass_its_own_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine and ``TreeModel.reference`` both run ``BinaryTreeLSTMCell.forward``; with
    that forward broken (the two forget gates swapped), the idle run is wrong, and the
    check must say so rather than compare the bug with itself."""
    model, requests, _ = _requests("tree")
    cell = model.cell  # type: ignore[attr-defined]
    forward = type(cell).forward

    def swapped(self: torch.nn.Module, inputs: torch.Tensor, states: tuple[torch.Tensor, ...]):  # type: ignore[no-untyped-def]
        h, c = states
        return forward(self, inputs, (h, c.flip(1)))

    monkeypatch.setattr(type(cell), "forward", swapped)
    broken = _truth(model, requests)  # what the broken engine would compute
    monkeypatch.undo()
    assert any(not np.allclose(broken[i].scores, _truth(model, requests)[i].scores) for i in broken)
    monkeypatch.setattr(type(cell), "forward", swapped)
    with pytest.raises(RuntimeError, match="disagrees with plain torch"):
        check_reference(model, requests, broken, feeds_back=False)
