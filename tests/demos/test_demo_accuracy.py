"""The shipped demo models, served by a real engine: they answer well, and batching changes nothing.

Held-out examples (never in any training sample, by ``tasks.split_of``) go to one
engine all at once, so they batch cell by cell across requests and models, and
then to an engine that runs one request at a time. Each model must reach its
accuracy floor (a little under what ``python -m batchmaker.demos.train`` measured,
see ``docs/demo-models.md``), and every answer must be the same in both modes.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from batchmaker import Engine, EngineConfig, InferRequest
from batchmaker.demos import DEMO_MODEL_NAMES, DEMO_REPOSITORY, tasks
from batchmaker.models.base import Model
from batchmaker.models.seq2seq import Seq2SeqModel
from batchmaker.models.sequence import SequenceModel
from batchmaker.models.tree import TreeModel
from batchmaker.repository.store import ModelRepository
from batchmaker.types import TreeInput

SEED = 20_240_601
"""Draws the test sample; any seed gives held-out examples."""

GUARD_S = 120.0
"""Bound on a run that only a broken engine would never end."""

FLOORS = {"words-to-digits": 0.98, "arith-mod10": 0.98, "counting-lm": 0.98}
"""Least accuracy on this test's sample, a little under the training script's figures."""


@dataclass(frozen=True)
class Case:
    """One held-out request and how to score its answer (the top id of every step)."""

    request: InferRequest
    score: Callable[[list[int]], tuple[int, int]]
    """Answer -> (right, out of)."""


def _words_to_digits(rng: np.random.Generator, n: int) -> list[Case]:
    def case(k: int) -> Case:
        want = tasks.digits_target(k)
        ids = tasks.encode(tasks.number_to_words(k), tasks.WORDS_VOCABULARY)
        return Case(InferRequest("words-to-digits", ids, top_k=1), lambda a: (int(a == want), 1))

    return [case(k) for k in tasks.sample_numbers(rng, n, "test")]


def _arith_mod10(rng: np.random.Generator, n: int) -> list[Case]:
    def case(e: tasks.Expr) -> Case:
        tokens, children = e.tree()
        tree = TreeInput(tokens, children)
        return Case(
            InferRequest("arith-mod10", tree, top_k=1), lambda a: (int(a == [e.label()]), 1)
        )

    per_depth = n // 4
    return [case(e) for d in (1, 2, 3, 4) for e in tasks.sample_exprs(rng, per_depth, d, "test")]


def _counting_lm(rng: np.random.Generator, n: int) -> list[Case]:
    def case(words: list[str]) -> Case:
        ids = tasks.encode(words, tasks.COUNTING_VOCABULARY)
        first = tasks.predictable_from(words)

        def score(answer: list[int]) -> tuple[int, int]:
            # Step i's output guesses token i + 1.
            right = sum(answer[i - 1] == ids[i] for i in range(first, len(ids)))
            return right, len(ids) - first

        return Case(InferRequest("counting-lm", ids, top_k=1), score)

    return [case(words) for words in tasks.sample_counting(rng, n, "test")]


SAMPLES: dict[str, tuple[Callable[[np.random.Generator, int], list[Case]], int]] = {
    "words-to-digits": (_words_to_digits, 300),
    "arith-mod10": (_arith_mod10, 300),  # 75 of each depth, 1 to 4
    "counting-lm": (_counting_lm, 200),  # about 18 predictable words each
}
"""Per model: how to draw held-out cases, and how many (sized to keep the test near 10 s)."""


@functools.cache
def demo_models() -> tuple[Model, ...]:
    models, failed = ModelRepository(DEMO_REPOSITORY).load_all()
    assert not failed, failed
    return tuple(models)


@functools.cache
def cases() -> tuple[Case, ...]:
    rng = np.random.default_rng(SEED)
    return tuple(c for name in DEMO_MODEL_NAMES for c in SAMPLES[name][0](rng, SAMPLES[name][1]))


@dataclass(frozen=True)
class Served:
    answers: tuple[tuple[int, ...], ...]
    """Per case, the top id of every step, in order."""
    mean_batch: float


@functools.cache
def serve(mode: str) -> Served:
    """Every case through one engine in ``mode``, all submitted at once."""
    config = EngineConfig(
        mode=mode,  # type: ignore[arg-type]
        max_batch=64,
        num_slots=4096,
        max_num_live_requests=1024,
        num_threads=1,
    )

    async def main() -> Served:
        async with Engine(config, demo_models()) as engine:
            streams = [engine.submit(c.request) for c in cases()]
            outputs = await asyncio.wait_for(
                asyncio.gather(*(s.collect() for s in streams)), GUARD_S
            )
            stats = engine.device_stats()[0].worker
        answers = []
        for steps in outputs:
            assert [o.step for o in steps] == list(range(len(steps)))
            answers.append(tuple(int(o.top_ids[0]) for o in steps if o.top_ids is not None))
            assert len(answers[-1]) == len(steps)
        return Served(tuple(answers), stats.num_rows / max(stats.num_steps, 1))

    return asyncio.run(main())


def test_shipped_repository() -> None:
    models = {m.name: m for m in demo_models()}
    assert sorted(models) == sorted(DEMO_MODEL_NAMES)
    assert all(m.version == 1 for m in models.values())
    w2d, arith, lm = models["words-to-digits"], models["arith-mod10"], models["counting-lm"]
    assert isinstance(w2d, Seq2SeqModel)
    assert w2d.source_vocabulary == tasks.WORDS_VOCABULARY
    assert w2d.target_vocabulary == tasks.DIGITS_VOCABULARY
    assert (w2d.bos, w2d.eos) == (tasks.BOS, tasks.EOS)
    assert isinstance(arith, TreeModel)
    assert (arith.vocabulary, arith.classes) == (tasks.ARITH_VOCABULARY, tasks.ARITH_CLASSES)
    assert isinstance(lm, SequenceModel)
    assert lm.cell.kind == "lstm"
    assert lm.vocabulary == lm.output_vocabulary == tasks.COUNTING_VOCABULARY
    report = json.loads((DEMO_REPOSITORY / "ACCURACY.json").read_text())
    for name in DEMO_MODEL_NAMES:
        assert report[name]["accuracy"] >= FLOORS[name]
    total = sum(p.stat().st_size for p in DEMO_REPOSITORY.rglob("*") if p.is_file())
    assert total < 5 * 2**20, f"the demo repository is {total} bytes"


@pytest.mark.parametrize("name", DEMO_MODEL_NAMES)
def test_held_out_accuracy(name: str) -> None:
    right = total = 0
    for c, answer in zip(cases(), serve("cellular").answers, strict=True):
        if c.request.model == name:
            r, t = c.score(list(answer))
            right, total = right + r, total + t
    assert total > 0
    assert right / total >= FLOORS[name], f"{name}: {right}/{total} right"


def _describe(request: InferRequest) -> str:
    x = request.inputs
    if isinstance(x, TreeInput):
        return tasks.format_sexpr(x.tokens, x.children, tasks.ARITH_VOCABULARY)
    return " ".join(demo_vocabulary(request.model)[int(i)] for i in np.asarray(x))


def demo_vocabulary(name: str) -> tuple[str, ...]:
    return tasks.WORDS_VOCABULARY if name == "words-to-digits" else tasks.COUNTING_VOCABULARY


def test_batching_changes_no_answer() -> None:
    batched, alone = serve("cellular"), serve("none")
    assert batched.mean_batch > 2, "the requests were meant to batch"
    differ = [
        f"{c.request.model} {_describe(c.request)!r}: {list(a)} batched, {list(b)} alone"
        for c, a, b in zip(cases(), batched.answers, alone.answers, strict=True)
        if a != b
    ]
    assert not differ, f"{len(differ)} answers changed under batching, e.g. {differ[:3]}"
