"""Cells and state pools on their own, without the engine or the scheduler.

``StatePool`` gathers and scatters state rows by slot index, for chains
(arity 1) and tree nodes (arity 2), and never writes its zero row. Stepping a
``RecurrentStackCell`` through a pool, however sequences interleave in its
batches, gives what ``nn.LSTM``/``nn.GRU`` give over each whole sequence alone.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from harness import engine_config, small_model, torch_executor
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import TOL, max_abs_diff, run_alone

from batchmaker import Engine, InferRequest
from cells import RecurrentStackCell, StatePool, StateSpec
from cells.recurrent import KERNEL_TRIALS, KERNELS
from scheduler import NUM_RESERVED_SLOTS, ZERO_SLOT

LSTM_STATE = (StateSpec("h", (2, 3)), StateSpec("c", (2, 3)))
GRU_STATE = (StateSpec("h", (2, 3)),)


def rows(n: int, shape: tuple[int, ...], start: float) -> torch.Tensor:
    """``n`` distinct nonzero rows of ``shape``."""
    size = int(np.prod(shape))
    return torch.arange(n * size, dtype=torch.float32).view(n, *shape) + start


@pytest.mark.parametrize("specs", [LSTM_STATE, GRU_STATE], ids=["two-states", "one-state"])
def test_pool_gather_returns_what_scatter_wrote_by_row(specs: tuple[StateSpec, ...]) -> None:
    pool = StatePool(specs, num_rows=6, device="cpu")
    written = tuple(rows(2, s.shape, start=1 + 100 * i) for i, s in enumerate(specs))
    pool.scatter(torch.tensor([4, 2]), written)

    got = pool.gather(torch.tensor([2, ZERO_SLOT, 4, 4]))

    assert len(got) == len(specs)
    for g, w, s in zip(got, written, specs, strict=True):
        assert g.shape == (4, *s.shape)
        assert torch.equal(g[0], w[1])
        assert torch.equal(g[1], torch.zeros(s.shape))
        assert torch.equal(g[2], w[0])
        assert torch.equal(g[3], w[0])


@pytest.mark.parametrize("specs", [LSTM_STATE, GRU_STATE], ids=["two-states", "one-state"])
def test_pool_gathers_arity_two_reads_as_batch_by_child(specs: tuple[StateSpec, ...]) -> None:
    pool = StatePool(specs, num_rows=6, device="cpu")
    written = tuple(rows(3, s.shape, start=1 + 100 * i) for i, s in enumerate(specs))
    pool.scatter(torch.tensor([2, 3, 5]), written)

    # Two tree nodes: the first reads children in rows 5 and 2, the second has one
    # absent child (the zero row) and one in row 3.
    got = pool.gather(torch.tensor([[5, 2], [ZERO_SLOT, 3]]))

    for g, w, s in zip(got, written, specs, strict=True):
        assert g.shape == (2, 2, *s.shape)
        assert torch.equal(g[0, 0], w[2])
        assert torch.equal(g[0, 1], w[0])
        assert torch.equal(g[1, 0], torch.zeros(s.shape))
        assert torch.equal(g[1, 1], w[1])


def test_pool_zero_row_stays_zero_through_traffic() -> None:
    pool = StatePool(LSTM_STATE, num_rows=8, device="cpu")
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        targets = torch.randperm(8 - NUM_RESERVED_SLOTS, generator=gen)[:3] + NUM_RESERVED_SLOTS
        states = tuple(torch.randn(3, *s.shape, generator=gen) for s in LSTM_STATE)
        pool.scatter(targets, states)
        for g in pool.gather(torch.tensor([ZERO_SLOT, ZERO_SLOT])):
            assert not g.any()
    assert all(not t[ZERO_SLOT].any() for t in pool.tensors)
    assert all(t[NUM_RESERVED_SLOTS:].any() for t in pool.tensors)
    pool.reset()
    assert all(not t.any() for t in pool.tensors)


def test_pool_needs_the_reserved_rows_and_preallocates_them() -> None:
    with pytest.raises(ValueError, match="reserved"):
        StatePool(GRU_STATE, num_rows=2, device="cpu")
    pool = StatePool(LSTM_STATE, num_rows=5, device="cpu")
    assert [tuple(t.shape) for t in pool.tensors] == [(5, 2, 3), (5, 2, 3)]
    assert pool.nbytes == 2 * 5 * 6 * 4


def make_cell(kind: str, num_layers: int, vectors: bool, project: bool) -> RecurrentStackCell:
    torch.manual_seed(7)
    return RecurrentStackCell(
        kind,  # type: ignore[arg-type]
        hidden_size=16,
        num_layers=num_layers,
        vocab_size=None if vectors else 30,
        input_dim=5 if vectors else None,
        output_dim=(9 if vectors else 30) if project else None,
    ).eval()


def make_sequence(cell: RecurrentStackCell, rng: np.random.Generator, n: int) -> np.ndarray:
    if cell.input_kind == "tokens":
        return rng.integers(0, cell.input_dim, n)
    return rng.standard_normal((n, cell.input_dim)).astype(np.float32)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("vectors", [False, True], ids=["tokens", "vectors"])
def test_stepping_one_sequence_equals_the_sequence_module(
    kind: str, num_layers: int, vectors: bool
) -> None:
    cell = make_cell(kind, num_layers, vectors, project=True)
    seq = make_sequence(cell, np.random.default_rng(1), 12)
    pool = StatePool(cell.state_specs, num_rows=3, device="cpu")
    slot = NUM_RESERVED_SLOTS
    outs = []
    with torch.inference_mode():
        for t in range(len(seq)):
            states = pool.gather(torch.tensor([ZERO_SLOT if t == 0 else slot]))
            out, new = cell(torch.as_tensor(seq[t : t + 1]), states)
            pool.scatter(torch.tensor([slot]), new)
            outs.append(out)
    assert max_abs_diff(torch.cat(outs).numpy(), run_alone(cell, seq)) < TOL
    # The final state in the pool is the sequence module's final state, layer by layer.
    with torch.no_grad():
        x = torch.as_tensor(seq)
        x = cell.embedding(x) if cell.embedding is not None else x
        _, final = cell.rnn(x.unsqueeze(1))
    h_n = final[0] if kind == "lstm" else final
    assert max_abs_diff(pool.tensors[0][slot].numpy(), h_n[:, 0].numpy()) < TOL
    if kind == "lstm":
        assert max_abs_diff(pool.tensors[1][slot].numpy(), final[1][:, 0].numpy()) < TOL


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["lstm", "gru"]),
    num_layers=st.integers(1, 2),
    vectors=st.booleans(),
    project=st.booleans(),
    lengths=st.lists(st.integers(1, 15), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_interleaved_batches_through_a_pool_equal_each_sequence_alone(
    kind: str, num_layers: int, vectors: bool, project: bool, lengths: list[int], seed: int
) -> None:
    """Cellular batching at the cell level: each batch takes a random subset of the
    unfinished sequences, in random order, each at its own position."""
    cell = make_cell(kind, num_layers, vectors, project)
    rng = np.random.default_rng(seed)
    seqs = [make_sequence(cell, rng, n) for n in lengths]
    slots = rng.permutation(len(seqs)) + NUM_RESERVED_SLOTS
    pool = StatePool(cell.state_specs, num_rows=NUM_RESERVED_SLOTS + len(seqs), device="cpu")
    pos = [0] * len(seqs)
    outs: list[list[np.ndarray]] = [[] for _ in seqs]
    with torch.inference_mode():
        while live := [i for i, s in enumerate(seqs) if pos[i] < len(s)]:
            batch = rng.permutation(live)[: rng.integers(1, len(live) + 1)]
            x = torch.as_tensor(np.stack([seqs[i][pos[i]] for i in batch]))
            reads = torch.tensor([ZERO_SLOT if pos[i] == 0 else slots[i] for i in batch])
            out, new = cell(x, pool.gather(reads))
            pool.scatter(torch.as_tensor(slots[batch]), new)
            for row, i in enumerate(batch):
                outs[i].append(out[row].numpy().copy())
                pos[i] += 1
    for seq, got in zip(seqs, outs, strict=True):
        assert max_abs_diff(np.stack(got), run_alone(cell, seq)) < TOL


def test_moving_the_cell_repacks_its_step_weights() -> None:
    """``.to()`` replaces the parameters; the step must use the new ones (here float64)."""
    cell = make_cell("lstm", 2, False, project=True).double()
    seq = np.arange(9) % 30
    states = tuple(torch.zeros(1, *s.shape, dtype=torch.float64) for s in cell.state_specs)
    outs = []
    with torch.inference_mode():
        for t in range(len(seq)):
            out, states = cell(torch.tensor(seq[t : t + 1]), states)
            outs.append(out)
    got = torch.cat(outs)
    assert got.dtype == torch.float64
    assert max_abs_diff(got.numpy(), run_alone(cell, seq)) < 1e-12


def test_loading_a_state_dict_repacks_the_step_weights() -> None:
    a = make_cell("gru", 2, False, project=True)
    torch.manual_seed(99)
    b = RecurrentStackCell("gru", hidden_size=16, num_layers=2, vocab_size=30, output_dim=30)
    x = torch.tensor([1, 2, 3])
    states = tuple(torch.zeros(3, *s.shape) for s in a.state_specs)
    with torch.inference_mode():
        assert not torch.equal(a(x, states)[0], b(x, states)[0])
        b.load_state_dict(a.state_dict())
        assert torch.equal(a(x, states)[0], b(x, states)[0])


def test_state_specs_follow_the_kind_and_stack() -> None:
    lstm = make_cell("lstm", 2, False, project=False)
    gru = make_cell("gru", 1, True, project=False)
    assert lstm.state_specs == (StateSpec("h", (2, 16)), StateSpec("c", (2, 16)))
    assert gru.state_specs == (StateSpec("h", (1, 16)),)
    assert (lstm.input_kind, lstm.input_dim, lstm.output_dim) == ("tokens", 30, 16)
    assert (gru.input_kind, gru.input_dim, gru.output_dim) == ("vectors", 5, 16)


def test_cell_rejects_ambiguous_configuration() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        RecurrentStackCell("lstm", hidden_size=4, vocab_size=3, input_dim=2)
    with pytest.raises(ValueError, match="exactly one"):
        RecurrentStackCell("lstm", hidden_size=4)
    with pytest.raises(ValueError, match="kind"):
        RecurrentStackCell("rnn", hidden_size=4, vocab_size=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_layers"):
        RecurrentStackCell("gru", hidden_size=4, num_layers=0, vocab_size=3)


# ---- runs: several steps of each row in one fused call ------------------------------------


def step_by_step(
    cell: RecurrentStackCell, x: torch.Tensor, lengths: list[int], states: tuple[torch.Tensor, ...]
) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
    """Each row's steps one at a time through ``forward``: its outputs, and its state after
    its own last step."""
    outs, finals = [], []
    for i, n in enumerate(lengths):
        st_i = tuple(s[i : i + 1] for s in states)
        rows_i = []
        for t in range(n):
            y, st_i = cell(x[i : i + 1, t], st_i)
            rows_i.append(y[0])
        outs.extend(rows_i)
        finals.append(st_i)
    return outs, tuple(torch.cat([f[k] for f in finals]) for k in range(len(states)))


def assert_run_matches_steps(
    cell: RecurrentStackCell, x: torch.Tensor, lengths: list[int], states: tuple[torch.Tensor, ...]
) -> None:
    """``forward_run`` gives each row's outputs, row after row, and its state after its own
    last step: what ``step_by_step`` gives."""
    with torch.inference_mode():
        got, got_states = cell.forward_run(x, torch.tensor(lengths), states)
        want, want_states = step_by_step(cell, x, lengths, states)
    assert got.shape == (sum(lengths), cell.output_dim)
    assert max_abs_diff(got.numpy(), torch.stack(want).numpy()) < TOL
    for g, w in zip(got_states, want_states, strict=True):
        assert g.shape == w.shape
        assert max_abs_diff(g.numpy(), w.numpy()) < TOL


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("vectors", [False, True], ids=["tokens", "vectors"])
@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    num_layers=st.integers(1, 2),
    seed=st.integers(0, 2**16),
    kernel=st.sampled_from(["auto", "native", "onednn", "loop"]),
)
def test_a_run_equals_its_steps_one_at_a_time(
    kind: str, vectors: bool, lengths: list[int], num_layers: int, seed: int, kernel: str
) -> None:
    """``forward_run`` (packed: each row stops at its own end) gives each row's outputs, row
    after row, and its state after its own last step, from any starting state: what
    stepping ``forward`` gives."""
    torch.manual_seed(seed)
    cell = RecurrentStackCell(
        kind,  # type: ignore[arg-type]
        hidden_size=12,
        num_layers=num_layers,
        vocab_size=None if vectors else 20,
        input_dim=5 if vectors else None,
        output_dim=7,
    ).eval()
    cell.kernels.mode = kernel  # type: ignore[assignment]
    b, k = len(lengths), max(lengths)
    x = torch.randn(b, k, 5) if vectors else torch.randint(0, 20, (b, k))
    states = tuple(torch.randn(b, *s.shape) for s in cell.state_specs)
    assert cell.output_dim == 7
    assert_run_matches_steps(cell, x, lengths, states)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("kernel", ["native", "onednn", "loop"])
def test_a_padded_run_computes_every_row_for_all_steps(kind: str, kernel: str) -> None:
    """``pad_to_longest``: the padded batch's cost, and its outputs for each row's own
    steps are still exact; only the state of a shorter row moves past its end."""
    torch.manual_seed(3)
    cell = RecurrentStackCell(kind, hidden_size=8, vocab_size=11, output_dim=6).eval()  # type: ignore[arg-type]
    cell.kernels.mode = kernel  # type: ignore[assignment]
    lengths = [5, 2, 3]
    x = torch.randint(0, 11, (3, 5))
    zero = tuple(torch.zeros(3, *s.shape) for s in cell.state_specs)
    with torch.inference_mode():
        packed, packed_states = cell.forward_run(x, torch.tensor(lengths), zero)
        padded, padded_states = cell.forward_run(
            x, torch.tensor(lengths), zero, pad_to_longest=True
        )
    assert max_abs_diff(padded.numpy(), packed.numpy()) < TOL
    # The longest row ends with the batch: its state agrees; a shorter one ran on.
    assert max_abs_diff(padded_states[0][0].numpy(), packed_states[0][0].numpy()) < TOL
    assert max_abs_diff(padded_states[0][1].numpy(), packed_states[0][1].numpy()) > 1e-3


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_run_where_every_row_runs_every_step_skips_packing(
    kind: str, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One request alone, or a batch whose rows all run K steps: the unpacked call, with no
    sort, gathers or masks, gives exactly what stepping gives."""
    import cells.recurrent as recurrent

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("packed a run in which every row runs every step")

    monkeypatch.setattr(recurrent, "pack_padded_sequence", refuse)
    torch.manual_seed(4)
    cell = RecurrentStackCell(kind, hidden_size=8, num_layers=2, vocab_size=11, output_dim=6)  # type: ignore[arg-type]
    cell.kernels.mode = "native"  # the fused kernel's call; the step loop never packs
    lengths = [5] * batch
    x = torch.randint(0, 11, (batch, 5))
    states = tuple(torch.randn(batch, *s.shape) for s in cell.eval().state_specs)
    assert_run_matches_steps(cell, x, lengths, states)
    with pytest.raises(AssertionError, match="packed"):  # a ragged batch still packs
        cell.forward_run(x, torch.tensor([5] * (batch - 1) + [4]), states)


def test_the_kernel_chooser_times_each_kernel_then_keeps_the_fastest() -> None:
    """Per bucket of batch, steps and raggedness: the kernels in turn for three trials each,
    then the fastest by median, every call after; a forced mode runs its kernel and times
    nothing."""
    from cells.recurrent import KernelChooser

    now = [0.0]
    cost = {"native": 2.0, "onednn": 1.0, "loop": 1.5}
    slow_once = [True]  # one slow oneDNN trial: the median holds

    def kernel(name: str) -> Callable[[], str]:
        def call() -> str:
            now[0] += cost[name]
            if name == "onednn" and slow_once:
                now[0] += 10.0 * slow_once.pop()
            return name

        return call

    kernels = {name: kernel(name) for name in ("native", "onednn", "loop")}
    chooser = KernelChooser(clock=lambda: now[0])
    ran = [chooser.run(64, 25, kernels) for _ in range(11)]
    assert ran == ["native", "onednn", "loop"] * 3 + ["onednn"] * 2
    assert chooser.chosen == {(64, 32, False): "onednn"}
    assert chooser.num_trials == 9  # the calls after the choice are no trials
    cost["onednn"] = 3.0  # another bucket, where the loop wins
    assert [chooser.run(1, 1, kernels) for _ in range(10)][-1] == "loop"
    # Rows that end apart are a bucket of their own, where oneDNN's kernel cannot pack.
    ragged = [chooser.run(64, 25, kernels, ragged=True) for _ in range(10)]
    assert ragged == ["native", "onednn", "loop"] * 3 + ["loop"]
    assert chooser.chosen == {
        (64, 32, False): "onednn",
        (1, 1, False): "loop",
        (64, 32, True): "loop",
    }
    forced = KernelChooser("native", clock=lambda: now[0])
    assert [forced.run(64, 25, kernels) for _ in range(3)] == ["native"] * 3
    assert not forced.chosen
    assert forced.num_trials == 0


def test_plans_that_ran_a_kernel_on_trial_teach_the_scheduler_nothing() -> None:
    """A lone 8-token request is one 8-step plan. Its first nine in a fresh bucket are the
    kernel chooser's trials, each kernel three times (the slowest among them): learned,
    they would make 8-step plans look as dear as the slowest kernel. Only the plans after
    the choice teach the scheduler their cost."""
    model = small_model("lstm")
    x = [1, 2, 3, 4, 5, 6, 7, 8]

    async def main() -> None:
        async with Engine(engine_config(max_steps_per_plan=8), [model]) as engine:
            cell = torch_executor(engine).cells[model.qualify("step")]
            sched = engine.workers[0].scheduler
            for n in range(1, 12):
                await engine.infer(InferRequest(model.name, x))
                taught = sched.costs.table().get(model.qualify("step"), {}).get(1, [])
                counts = {round(steps): count for steps, _, count in taught}
                trials = min(n, len(KERNELS) * KERNEL_TRIALS)
                assert cell.num_kernel_trials == trials
                assert engine.workers[0].stats.num_trial_plans == trials
                assert counts.get(8, 0) == n - trials, (n, counts)

    asyncio.run(main())


def test_the_fused_kernels_restore_the_process_wide_flag() -> None:
    """torch's oneDNN switch is process-wide: a run on either fused kernel leaves it as it was."""
    cell = RecurrentStackCell("lstm", hidden_size=8, vocab_size=11, output_dim=6).eval()
    states = tuple(torch.zeros(2, *s.shape) for s in cell.state_specs)
    before = torch._C._get_mkldnn_enabled()
    with torch.inference_mode():
        for kernel in ("native", "onednn"):
            cell.kernels.mode = kernel  # type: ignore[assignment]
            cell.forward_run(torch.randint(0, 11, (2, 3)), torch.tensor([3, 2]), states)
            assert torch._C._get_mkldnn_enabled() == before


def test_cells_that_feed_tokens_back_have_no_runs() -> None:
    from cells import EncoderCell, GreedyDecoderCell

    assert RecurrentStackCell.supports_runs
    assert EncoderCell.supports_runs
    assert not GreedyDecoderCell.supports_runs
    decoder = GreedyDecoderCell("lstm", hidden_size=4, vocab_size=5, output_dim=5)
    states = tuple(torch.zeros(1, *s.shape, dtype=s.dtype) for s in decoder.state_specs)
    with pytest.raises(NotImplementedError, match="one step at a time"):
        decoder.forward_run(torch.zeros(1, 2, dtype=torch.int64), torch.tensor([2]), states)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_the_cpu_steps_run_the_loop_with_its_table_and_match_torchs_step_kernels(
    kind: str,
) -> None:
    """On the CPU in float32 a step runs through ``cells.steploop`` (oneDNN GEMMs, the first
    layer's table of token projections); it gives what ``torch.lstm_cell``/``gru_cell``
    give, the path a GPU or another dtype takes."""
    torch.manual_seed(5)
    cell = RecurrentStackCell(kind, hidden_size=12, num_layers=2, vocab_size=20, output_dim=9)  # type: ignore[arg-type]
    cell.eval()
    loop = cell._loop
    assert loop is not None
    assert loop.table is not None
    assert loop.table.shape == (20, (4 if kind == "lstm" else 3) * 12)
    x = torch.randint(0, 20, (5,))
    states = tuple(torch.randn(5, *s.shape) for s in cell.state_specs)
    # The same weights in float64 take torch's step kernels (the loop is float32 only).
    reference = copy.deepcopy(cell).double()
    assert reference._loop is None
    assert not cell._layer_params, "the loop's cell keeps no second copy of its weights"
    with torch.inference_mode():
        got, got_states = cell(x, states)
        want, want_states = reference(x, tuple(s.double() for s in states))
    assert max_abs_diff(got.numpy(), want.float().numpy()) < TOL
    for g, w in zip(got_states, want_states, strict=True):
        assert max_abs_diff(g.numpy(), w.float().numpy()) < TOL


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_vocabulary_too_large_for_the_table_embeds_and_multiplies(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over ``TABLE_MAX_BYTES`` the loop's first layer multiplies its embeddings instead
    of reading the table; a ragged run is still each row's steps one at a time."""
    import cells.steploop as steploop

    monkeypatch.setattr(steploop, "TABLE_MAX_BYTES", 0)
    torch.manual_seed(6)
    cell = RecurrentStackCell(kind, hidden_size=12, num_layers=2, vocab_size=20, output_dim=9)  # type: ignore[arg-type]
    cell.eval()
    assert cell._loop is not None
    assert cell._loop.table is None
    cell.kernels.mode = "loop"
    lengths = [4, 1, 6, 6, 2]
    x = torch.randint(0, 20, (5, 6))
    states = tuple(torch.randn(5, *s.shape) for s in cell.state_specs)
    assert_run_matches_steps(cell, x, lengths, states)


def test_the_executor_builds_the_table_while_loading_not_on_the_first_request() -> None:
    """The first-layer table is built on first use, and the executor uses it first while
    loading (``Cell.prepare``, on the loading thread): a device's copy of the cell holds
    it before its first step, and the model's own copy never built one."""
    from batchmaker.models.sequence import recurrent_model
    from batchmaker.runtime.executor import CellSet
    from batchmaker.runtime.torch_executor import TorchExecutor

    model = recurrent_model("lm", "lstm", vocab_size=30, hidden_size=8, output_dim=30)
    mine = model.cell._loop
    assert mine is not None
    assert mine._table is None
    executor = TorchExecutor("cpu")
    executor.load_cells(CellSet.of([model], num_slots=4))()
    loaded = executor.cells[model.qualify("step")]
    assert isinstance(loaded, RecurrentStackCell)
    assert loaded._loop is not None
    assert loaded._loop._table is not None
    assert mine._table is None
