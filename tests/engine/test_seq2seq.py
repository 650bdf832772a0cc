"""Encoder-decoder models in the engine: every mode decodes what plain torch decodes alone.

Greedy decoding feeds each emitted token back on the device, so one wrong row anywhere
(a state read from another request's slot, a token fed back from another row) changes
every later step of that request. Each stream is therefore compared, step by step,
with ``run_seq2seq_alone`` (the encoder's and decoder's own ``nn.LSTM``/``nn.GRU`` run
on one request), vectors within ``TOL`` and top-1 ids exactly.

The random-weight models below were picked (seed and EOS id) so that greedy decoding
ends at EOS for some sources and runs to the cap for others; a test pins that, so the
properties cover both endings.
"""

from __future__ import annotations

import asyncio
import functools

import numpy as np
import pytest
from harness import (
    Arrival,
    GatedExecutor,
    collect,
    drain,
    engine_config,
    free_slots,
    next_output,
    serve_staggered,
    serving,
    small_model,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    TOL,
    assert_matches_alone,
    assert_seq2seq_matches_alone,
    max_abs_diff,
    run_seq2seq_alone,
)

from batchmaker import (
    Engine,
    EngineConfig,
    InferRequest,
    InvalidRequestError,
    RequestCancelledError,
    StepOutput,
)
from batchmaker.config import MODES
from batchmaker.models.seq2seq import Seq2SeqModel, seq2seq_model
from batchmaker.types import TreeInput
from scheduler import PolicyConfig

SOURCE_VOCAB, TARGET_VOCAB = 30, 12
MAX_INPUT_LEN, MAX_DECODE_LEN = 32, 24
BOS = 1
SHAPES = [("lstm", 1), ("lstm", 2), ("gru", 1), ("gru", 2)]
SEED_AND_EOS = {("lstm", 1): (22, 4), ("lstm", 2): (24, 6), ("gru", 1): (0, 0), ("gru", 2): (8, 6)}
"""Per shape, a weight seed and an EOS id with which greedy decoding of short random
sources ends at EOS for some and at the cap for others."""
NUM_SLOTS = 16


@functools.cache
def model(kind: str, num_layers: int) -> Seq2SeqModel:
    seed, eos = SEED_AND_EOS[kind, num_layers]
    return seq2seq_model(
        f"s2s-{kind}{num_layers}",
        kind,  # type: ignore[arg-type]
        source_vocab=SOURCE_VOCAB,
        target_vocab=TARGET_VOCAB,
        hidden_size=24,
        num_layers=num_layers,
        bos=BOS,
        eos=eos,
        seed=seed,
        max_input_len=MAX_INPUT_LEN,
        max_decode_len=MAX_DECODE_LEN,
    )


def models() -> list[Seq2SeqModel]:
    return [model(*shape) for shape in SHAPES]


def sources(rng: np.random.Generator, n: int, max_len: int = 14) -> list[list[int]]:
    return [rng.integers(0, SOURCE_VOCAB, rng.integers(1, max_len + 1)).tolist() for _ in range(n)]


def decoded_length(m: Seq2SeqModel, src: list[int], cap: int | None = None) -> int:
    return len(run_seq2seq_alone(m, src, cap or m.max_decode_len))


def source_ending(m: Seq2SeqModel, *, at_eos: bool, seed: int = 0, min_len: int = 1) -> list[int]:
    """A source whose greedy decoding ends at EOS (after at least ``min_len`` steps), or
    runs to the cap."""
    rng = np.random.default_rng(seed)
    for src in sources(rng, 500):
        n = decoded_length(m, src)
        if (min_len <= n < m.max_decode_len) if at_eos else n == m.max_decode_len:
            return src
    raise AssertionError(f"{m.name}: no source found")


def config(mode: str, **overrides: object) -> EngineConfig:
    fields: dict[str, object] = {"num_slots": NUM_SLOTS, "max_num_live_requests": NUM_SLOTS}
    fields.update(overrides)
    return engine_config(mode, **fields)


def check_idle(engine: Engine) -> None:
    """Nothing live and every slot of every pool back."""
    (stats,) = engine.device_stats()
    assert stats.num_live == 0
    assert engine.num_live == 0
    assert set(stats.num_free_slots.values()) == {NUM_SLOTS}


def check_steps(gate: GatedExecutor, engine: Engine, mode: str, num_rows: int) -> None:
    """Every node ran once (``num_rows`` in all), in batches as the mode makes them."""
    real = sum(s.num_cell_steps for s in gate.steps)
    assert real == num_rows == engine.device_stats()[0].worker.num_rows
    for s in gate.steps:
        ids = [r for r in s.request_ids if r is not None]
        assert len(ids) == len(set(ids)), "a request ran twice in one step"
        assert len(s.request_ids) <= engine.config.max_batch
        if mode in ("cellular", "level"):
            assert None not in s.request_ids, f"{mode} never pads"
        if mode == "none":
            assert len(s.request_ids) == 1


# ---- the reference and the models ---------------------------------------------------------


def test_independent_reference_agrees_with_the_models_own() -> None:
    rng = np.random.default_rng(3)
    for m in models():
        for src, cap in zip(sources(rng, 6), [None, 1, 3, None, 24, 7], strict=True):
            want = m.reference(InferRequest(m.name, src, max_output_length=cap))
            got = run_seq2seq_alone(m, src, cap or m.max_decode_len)
            assert max_abs_diff(got, want) < TOL


def stream_of(scores: np.ndarray) -> list[StepOutput]:
    """An engine's stream that decoded exactly these scores, top-1 and vectors."""
    return [top1(i, row, int(row.argmax())) for i, row in enumerate(scores)]


def top1(step: int, row: np.ndarray, token: int) -> StepOutput:
    return StepOutput(step=step, vector=row, top_ids=np.array([token]), top_scores=row[[token]])


def test_the_check_takes_a_tie_either_way_and_nothing_else() -> None:
    """Two ids tied to rounding may come out in either order from different kernels, and
    the decode goes on from whichever was fed back. Made exact here: id ``b``'s projection
    row is a copy of ``a``'s, so ``a`` and ``b`` tie at every step."""
    import copy

    import torch

    m = copy.deepcopy(models()[0])
    src = source_ending(m, at_eos=False)
    want = run_seq2seq_alone(m, src, MAX_DECODE_LEN)
    a = int(want[0].argmax())
    b = next(i for i in range(want.shape[1]) if i not in (a, m.eos, m.bos))
    with torch.no_grad():
        m.decoder.proj.weight[b] = m.decoder.proj.weight[a]
        m.decoder.proj.bias[b] = m.decoder.proj.bias[a]
    tied = run_seq2seq_alone(m, src, MAX_DECODE_LEN)
    assert tied[0][a] == tied[0][b]
    assert_seq2seq_matches_alone(m, src, stream_of(tied))
    # The engine broke the first tie the other way and fed that id on: a valid decode.
    loser = b if int(tied[0].argmax()) == a else a
    other = run_seq2seq_alone(m, src, MAX_DECODE_LEN, follow=[loser])
    assert other.shape != tied.shape or not np.array_equal(other, tied)  # it forked
    stream = stream_of(other)
    stream[0] = top1(0, other[0], loser)
    assert_seq2seq_matches_alone(m, src, stream)
    # A token that is not tied with the best is wrong, and so is what follows it.
    c = int(np.argsort(want[0])[-3])
    wrong = run_seq2seq_alone(m, src, MAX_DECODE_LEN, follow=[c])
    assert np.array_equal(wrong, tied)  # the reference refuses to follow ``c``
    bad = stream_of(tied)
    bad[0] = top1(0, tied[0], c)
    with pytest.raises(AssertionError, match="top-1"):
        assert_seq2seq_matches_alone(m, src, bad)


def test_the_models_end_at_eos_for_some_sources_and_at_the_cap_for_others() -> None:
    """What makes the properties below cover both endings."""
    for m in models():
        lengths = [decoded_length(m, src) for src in sources(np.random.default_rng(0), 30)]
        assert MAX_DECODE_LEN in lengths, m.name
        assert min(lengths) < MAX_DECODE_LEN, m.name
        assert len(set(lengths)) >= 4, (m.name, sorted(lengths))


# ---- every mode equals the reference ------------------------------------------------------


@st.composite
def arrivals(draw: st.DrawFn, n: int) -> list[Arrival]:
    return [Arrival(0, 0)] + [
        Arrival(draw(st.integers(0, j - 1)), draw(st.integers(0, 12))) for j in range(1, n)
    ]


@st.composite
def batching(draw: st.DrawFn, mode: str) -> EngineConfig:
    max_batch = draw(st.integers(1, 6))
    return config(
        mode,
        max_batch=max_batch,
        padded_max_batch=draw(st.integers(1, max_batch)),
        padded_timeout_s=draw(st.sampled_from([0.0, 0.001])),
        # Encoders run in multi-step plans (or fused whole, padded and none) or one step each.
        max_steps_per_plan=draw(st.sampled_from([1, 3, 32])),
        fused_baselines=draw(st.booleans()),
        # Plan k+1 while plan k is in flight (the worker's launch/settle path).
        overlap_steps=draw(st.booleans()),
    )


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_mode_decodes_what_plain_torch_decodes_alone(mode: str, data: st.DataObject) -> None:
    """LSTM and GRU, 1 and 2 layers, in one engine; random sources, caps, top-k and
    arrivals (each request submitted once an earlier one has streamed a drawn number of
    steps), so requests join and leave running batches in the encoder and the decoder."""
    ms = models()
    n = data.draw(st.integers(1, 6), label="num_requests")
    picks = data.draw(st.lists(st.sampled_from(ms), min_size=n, max_size=n), label="models")
    lengths = data.draw(st.lists(st.integers(1, 14), min_size=n, max_size=n), label="lengths")
    caps = data.draw(
        st.lists(st.one_of(st.none(), st.integers(1, MAX_DECODE_LEN)), min_size=n, max_size=n),
        label="caps",
    )
    plan = data.draw(arrivals(n), label="arrivals")
    cfg = data.draw(batching(mode), label="config")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    requests = [
        InferRequest(
            m.name,
            rng.integers(0, SOURCE_VOCAB, k).tolist(),
            max_output_length=cap,
            top_k=data.draw(st.integers(1, TARGET_VOCAB), label="top_k"),
            return_vectors=data.draw(st.booleans(), label="return_vectors"),
        )
        for m, k, cap in zip(picks, lengths, caps, strict=True)
    ]

    async def main() -> list[list[StepOutput]]:
        async with serving(cfg, ms) as (engine, gate):
            got = await serve_staggered(engine, requests, plan)
            decoded = [len(o) for o in got]
            check_steps(gate, engine, mode, sum(lengths) + sum(decoded))
            check_idle(engine)
            return got

    for m, request, outputs in zip(picks, requests, asyncio.run(main()), strict=True):
        assert all((o.vector is not None) == request.return_vectors for o in outputs)
        assert_seq2seq_matches_alone(
            m, request.inputs, outputs, max_output_length=request.max_output_length
        )


def test_requests_really_share_encoder_and_decoder_steps() -> None:
    """The property would pass with batches of one; this pins real batching in both cells."""
    m = model("gru", 1)
    src = source_ending(m, at_eos=False)
    n = 6

    async def main() -> None:
        # One step per plan: this pins the batches of every step.
        cfg = config("cellular", max_batch=8, max_steps_per_plan=1)
        async with serving(cfg, [m], gated=True) as (engine, gate):
            first = engine.submit(InferRequest(m.name, [1], max_output_length=1))
            await gate.wait_entered(1)  # the worker is held inside step 1 ...
            streams = [engine.submit(InferRequest(m.name, src, top_k=1)) for _ in range(n)]
            gate.open()  # ... while these queue up, then run in lockstep
            assert len(await collect(first)) == 1
            for s in streams:
                assert_seq2seq_matches_alone(m, src, await collect(s))
            sizes = [(s.cell_type.rsplit("/", 1)[1], len(s.request_ids)) for s in gate.steps]
            assert len(src) < PolicyConfig().max_wait_steps
            assert sizes == [
                ("encoder", 1),
                *[("encoder", n)] * len(src),
                # The first request's lone decoder step (1 row of 8) waited for a batch as
                # full as the encoders', and joined the new requests' first decoder step.
                ("decoder", n + 1),
                *[("decoder", n)] * (MAX_DECODE_LEN - 1),
            ]
            check_idle(engine)

    asyncio.run(main())


# ---- how a decode ends --------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_finish_reason_is_completed_at_eos_and_length_at_the_cap(mode: str) -> None:
    m = model("lstm", 1)
    at_eos = source_ending(m, at_eos=True, min_len=3)
    runs_on = source_ending(m, at_eos=False)
    n_eos = decoded_length(m, at_eos)
    cases = [
        (at_eos, None, "completed", n_eos),  # ends at EOS, below the model's cap
        (at_eos, n_eos, "completed", n_eos),  # EOS exactly on the last allowed step
        (at_eos, n_eos - 1, "length", n_eos - 1),  # cut one short of EOS
        (runs_on, None, "length", MAX_DECODE_LEN),  # the model's own cap
        (runs_on, 5, "length", 5),  # the request's cap
        (runs_on, 1, "length", 1),
    ]

    async def main() -> None:
        async with serving(config(mode), [m]) as (engine, _):
            streams = [
                engine.submit(InferRequest(m.name, src, max_output_length=cap, top_k=2))
                for src, cap, _, _ in cases
            ]
            for (src, cap, reason, steps), stream in zip(cases, streams, strict=True):
                outputs = await collect(stream)
                assert len(outputs) == steps
                assert stream.finish_reason == reason, (cap, steps)
                assert_seq2seq_matches_alone(m, src, outputs, max_output_length=cap)
            check_idle(engine)

    asyncio.run(main())


def test_the_eos_step_is_streamed() -> None:
    m = model("gru", 1)
    src = source_ending(m, at_eos=True, min_len=2)

    async def main() -> list[StepOutput]:
        async with serving(config("cellular"), [m]) as (engine, _):
            return await collect(engine.submit(InferRequest(m.name, src, top_k=1)))

    outputs = asyncio.run(main())
    tokens = [int(o.top_ids[0]) for o in outputs]
    assert tokens[-1] == m.eos
    assert m.eos not in tokens[:-1]


# ---- cancellation -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["cellular", "none"])
def test_cancel_mid_decode_frees_the_slot_and_spares_the_others(mode: str) -> None:
    m = model("lstm", 2)
    victim_src = source_ending(m, at_eos=False)
    # The same source as the victim among the others: it must decode in full regardless.
    keep = [source_ending(m, at_eos=True, seed=s) for s in (1, 2)] + [victim_src]

    async def main() -> None:
        # One step per plan, so the gate counts the victim's steps one by one.
        cfg = config(mode, max_steps_per_plan=1, fused_baselines=False)
        async with serving(cfg, [m], gated=True) as (engine, gate):
            start = free_slots(engine)
            victim = engine.submit(InferRequest(m.name, victim_src, request_id="victim", top_k=1))
            others = [engine.submit(InferRequest(m.name, x, top_k=1)) for x in keep]
            # Step until the victim has run its encoder and 3 decoder steps.
            while len(gate.steps_of("victim")) < len(victim_src) + 3:
                await gate.step()
            first = await next_output(victim)
            assert first.step == 0
            victim.cancel()
            gate.open()
            outputs, error = await drain(victim)
            outputs = [first, *outputs]
            assert isinstance(error, RequestCancelledError)
            # Cancelled at a step boundary: at most one step after the cancel reached it.
            assert 3 <= len(outputs) <= 4
            want = run_seq2seq_alone(m, victim_src, MAX_DECODE_LEN)
            assert [o.step for o in outputs] == list(range(len(outputs)))
            assert [int(o.top_ids[0]) for o in outputs] == want[: len(outputs)].argmax(1).tolist()
            assert max_abs_diff(np.stack([o.vector for o in outputs]), want[: len(outputs)]) < TOL
            ran = len(gate.steps_of("victim"))
            assert ran == len(victim_src) + len(outputs)
            for x, stream in zip(keep, others, strict=True):
                assert_seq2seq_matches_alone(m, x, await collect(stream))
                assert stream.finish_reason in ("completed", "length")
            assert free_slots(engine) == start
            check_idle(engine)

    asyncio.run(main())


# ---- other families beside it ---------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_seq2seq_and_a_plain_lstm_share_one_engine(mode: str) -> None:
    s2s = models()
    lm = small_model("lstm", num_layers=2, name="lm")
    rng = np.random.default_rng(11)
    jobs = [(m, src) for m in s2s for src in sources(rng, 2)] + [
        (lm, rng.integers(0, 50, k).tolist()) for k in (5, 30, 17)
    ]
    order = rng.permutation(len(jobs))
    jobs = [jobs[i] for i in order]

    async def main() -> None:
        async with serving(config(mode, max_batch=6, padded_max_batch=4), [*s2s, lm]) as (
            engine,
            _,
        ):
            streams = [
                engine.submit(InferRequest(m.name, x, top_k=1, return_vectors=True))
                for m, x in jobs
            ]
            for (m, x), stream in zip(jobs, streams, strict=True):
                outputs = await collect(stream)
                if m is lm:
                    assert_matches_alone(lm, x, outputs)
                else:
                    assert_seq2seq_matches_alone(m, x, outputs)
            check_idle(engine)

    asyncio.run(main())


# ---- bad input ------------------------------------------------------------------------------


def bad(name: str, inputs: object, says: str, **options: object):
    return pytest.param(inputs, options, says, id=name)


BAD = [
    bad("empty-source", [], "inputs: the sequence is empty"),
    bad("token-too-big", [1, SOURCE_VOCAB], f"inputs: token id {SOURCE_VOCAB}"),
    bad("token-negative", [3, -1], "inputs: token id -1"),
    bad("source-too-long", [1] * (MAX_INPUT_LEN + 1), f"inputs: length {MAX_INPUT_LEN + 1}"),
    bad("source-2d", [[1, 2], [3, 4]], "inputs:"),
    bad("source-floats", [1.0, 2.0], "inputs:"),
    bad("a-tree", TreeInput([1, 2, 3], [[1, 2], [], []]), "inputs:"),
    bad("vectors", np.zeros((3, 4), np.float32), "inputs:"),
    bad("cap-zero", [1, 2], "max_output_length:", max_output_length=0),
    bad("cap-over-decode-limit", [1, 2], "max_output_length:", max_output_length=25),
    bad("top-k-over-target-vocab", [1, 2], "top_k:", top_k=TARGET_VOCAB + 1),
    bad("negative-timeout", [1, 2], "timeout:", timeout=-1.0),
]


@pytest.mark.parametrize(("inputs", "options", "says"), BAD)
def test_bad_seq2seq_input_is_refused_naming_the_field(
    inputs: object, options: dict, says: str
) -> None:
    m = model("gru", 2)
    good = source_ending(m, at_eos=True)

    async def main() -> None:
        async with serving(config("cellular"), [m], gated=True) as (engine, gate):
            start = free_slots(engine)
            with pytest.raises(InvalidRequestError) as info:
                engine.submit(InferRequest(m.name, inputs, **options))  # type: ignore[arg-type]
            assert info.value.message.startswith(says), info.value.message
            # Nothing was queued: nothing live, no slot taken, no step asked for.
            assert engine.num_live == 0
            assert free_slots(engine) == start
            gate.open()
            assert_seq2seq_matches_alone(
                m, good, await collect(engine.submit(InferRequest(m.name, good)))
            )
            assert sum(s.num_cell_steps for s in gate.steps) == len(good) + decoded_length(m, good)
            check_idle(engine)

    asyncio.run(main())
