"""Cells and state pools on their own: gather/scatter by slot row, and one step of the
stacked cell against the whole-sequence torch module."""

from __future__ import annotations

import pytest
import torch

from cells import RecurrentStackCell, StatePool, StateSpec


def test_pool_gather_scatter_by_row_and_arity() -> None:
    pool = StatePool([StateSpec("h", (2, 3)), StateSpec("c", (4,))], num_rows=6, device="cpu")
    h = torch.arange(2 * 2 * 3, dtype=torch.float32).view(2, 2, 3) + 1
    c = torch.arange(2 * 4, dtype=torch.float32).view(2, 4) + 1
    pool.scatter(torch.tensor([4, 2]), (h, c))
    gh, gc = pool.gather(torch.tensor([2, 0, 4]))
    assert torch.equal(gh, torch.stack([h[1], torch.zeros(2, 3), h[0]]))
    assert torch.equal(gc, torch.stack([c[1], torch.zeros(4), c[0]]))
    # Arity 2 (tree nodes): [B, k] rows give [B, k, *shape].
    th, tc = pool.gather(torch.tensor([[4, 2], [0, 4]]))
    assert th.shape == (2, 2, 2, 3)
    assert tc.shape == (2, 2, 4)
    assert torch.equal(th[0, 1], h[1])
    assert torch.equal(th[1, 0], torch.zeros(2, 3))
    assert torch.equal(pool.tensors[0][0], torch.zeros(2, 3))  # row 0 is never written
    pool.reset()
    assert all(not t.any() for t in pool.tensors)


def test_pool_needs_the_reserved_rows() -> None:
    with pytest.raises(ValueError, match="reserved"):
        StatePool([StateSpec("h", (3,))], num_rows=2, device="cpu")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_stepping_the_cell_equals_the_sequence_module(kind: str, num_layers: int) -> None:
    torch.manual_seed(0)
    cell = RecurrentStackCell(
        kind, hidden_size=16, num_layers=num_layers, vocab_size=30, output_dim=30
    ).eval()
    tokens = torch.randint(0, 30, (9,))
    pool = StatePool(cell.state_specs, num_rows=4, device="cpu")
    outs = []
    with torch.inference_mode():
        for t in range(len(tokens)):
            states = pool.gather(torch.tensor([0 if t == 0 else 3]))
            out, new = cell(tokens[t : t + 1], states)
            pool.scatter(torch.tensor([3]), new)
            outs.append(out)
        y, _ = cell.rnn(cell.embedding(tokens).unsqueeze(1))
        want = cell.proj(y.squeeze(1))
    assert (torch.cat(outs) - want).abs().max().item() < 1e-5


def test_loading_a_state_dict_repacks_the_step_weights() -> None:
    torch.manual_seed(1)
    a = RecurrentStackCell("lstm", hidden_size=8, num_layers=2, vocab_size=10, output_dim=10)
    b = RecurrentStackCell("lstm", hidden_size=8, num_layers=2, vocab_size=10, output_dim=10)
    b.load_state_dict(a.state_dict())
    x = torch.tensor([1, 2])
    states = tuple(torch.zeros(2, *s.shape) for s in a.state_specs)
    with torch.inference_mode():
        assert torch.equal(a(x, states)[0], b(x, states)[0])


def test_cell_rejects_ambiguous_inputs() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        RecurrentStackCell("lstm", hidden_size=4, vocab_size=3, input_dim=2)
    with pytest.raises(ValueError, match="kind"):
        RecurrentStackCell("rnn", hidden_size=4, vocab_size=3)  # type: ignore[arg-type]
