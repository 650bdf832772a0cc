"""What the transform and SageMaker tests share: the demo models, files of records, the
answers read back as ``StepOutput``s, and each answer checked against its request run
alone in plain torch (``reference``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from reference import (
    TOL,
    decoded,
    run_alone,
    run_seq2seq_alone,
    run_tree_alone,
    seq2seq_cap,
)

from batchmaker.demos import DEMO_REPOSITORY
from batchmaker.models.base import Model
from batchmaker.models.seq2seq import Seq2SeqModel
from batchmaker.models.sequence import SequenceModel
from batchmaker.models.tree import TreeModel
from batchmaker.repository.store import ModelRepository
from batchmaker.types import StepOutput, TreeInput
from batchmaker.wire.text import encode, parse_sexpr

REPO = Path(__file__).resolve().parents[2]


@cache
def demo_models() -> dict[str, Model]:
    """The shipped demo models by name (loaded once per test process)."""
    models, failed = ModelRepository(DEMO_REPOSITORY).load_all()
    assert not failed
    return {m.name: m for m in models}


def write_jsonl(path: Path, docs: Sequence[Any]) -> Path:
    """One JSON document per line; a ``str`` is written as it is (a bad line, a blank)."""
    with path.open("w") as f:
        for d in docs:
            f.write((d if isinstance(d, str) else json.dumps(d)) + "\n")
    return path


def read_answers(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def steps_of(answer: dict[str, Any]) -> list[StepOutput]:
    """An answer's outputs as the ``StepOutput``s a stream would have carried."""
    ids, scores = answer.get("top_ids"), answer.get("top_scores")
    vectors = answer.get("vectors")
    return [
        StepOutput(
            step=i,
            vector=None if vectors is None else np.array(vectors[i], dtype=np.float32),
            top_ids=None if ids is None else np.array(ids[i], dtype=np.int64),
            top_scores=None if scores is None else np.array(scores[i], dtype=np.float32),
        )
        for i in range(answer["steps"])
    ]


def inputs_of(model: Model, record: dict[str, Any]) -> np.ndarray | TreeInput:
    """A record's input as its model reads it."""
    sig = model.signature
    if "text" in record:
        return np.array(encode(record["text"], sig.input_vocabulary), dtype=np.int64)
    if "tree" in record:
        tree = record["tree"]
        if isinstance(tree, str):
            tokens, children = parse_sexpr(tree, sig.input_vocabulary)
            return TreeInput(tokens=np.array(tokens), children=children)
        return TreeInput(tokens=np.array([n[0] for n in tree]), children=[n[1] for n in tree])
    return np.array(record["tokens"], dtype=np.int64)


def tolerance(scores: np.ndarray) -> np.ndarray:
    """``TOL`` relative to the scores' size: the trained demo models score up to ~20, where
    a float32 step is 2e-6 and batched and lone kernels round a few steps apart."""
    return TOL * np.maximum(1.0, np.abs(scores))


def assert_steps_match(steps: Sequence[StepOutput], want: np.ndarray) -> None:
    """Each step's top-k are the best of its reference row, best first, with its scores."""
    assert len(steps) == len(want), f"{len(steps)} steps, reference {len(want)}"
    for out, row in zip(steps, want, strict=True):
        assert out.top_ids is not None
        assert out.top_scores is not None
        ids, scores = out.top_ids, out.top_scores
        assert len(set(ids.tolist())) == len(ids)
        assert np.all(np.diff(scores) <= 0), "scores must come best first"
        assert np.all(np.abs(scores - row[ids]) <= tolerance(row[ids])), (scores, row[ids])
        rest = np.delete(row, ids)
        if rest.size:
            assert rest.max() <= scores[-1] + 2 * tolerance(scores[-1:])[0]
        if out.vector is not None:
            assert np.all(np.abs(out.vector - row) <= tolerance(row))


def assert_answer_is_plain_torch(record: dict[str, Any], answer: dict[str, Any]) -> None:
    """The answer is the record's request run alone in plain torch (``reference``): each
    step's top-k (and vector, when asked) within ``tolerance``."""
    model = demo_models()[record.get("model", "counting-lm")]
    assert "error" not in answer, answer
    assert answer["model"] == model.name
    inputs = inputs_of(model, record)
    steps = steps_of(answer)
    cap = record.get("max_output_length") or None
    if isinstance(model, Seq2SeqModel):
        assert isinstance(inputs, np.ndarray)
        want = run_seq2seq_alone(model, inputs, seq2seq_cap(model, cap), follow=decoded(steps))
    elif isinstance(model, TreeModel):
        assert isinstance(inputs, TreeInput)
        want = run_tree_alone(model, inputs)
    else:
        assert isinstance(model, SequenceModel)
        assert isinstance(inputs, np.ndarray)
        want = run_alone(model, inputs[:cap])
    assert_steps_match(steps, want)


def assert_same_answers(got: Sequence[dict[str, Any]], want: Sequence[dict[str, Any]]) -> None:
    """Two runs answered alike: the same lines, ids, errors and top ids (but where the
    scores tie within ``tolerance``), and scores within it (the requests ran in different
    batches, whose sums may round apart)."""
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert (a.get("line"), a.get("id")) == (b.get("line"), b.get("id"))
        assert a.get("error") == b.get("error")
        if "error" in a:
            continue
        assert (a["steps"], a["finish_reason"], a["model"]) == (
            b["steps"],
            b["finish_reason"],
            b["model"],
        )
        sa, sb = np.array(a["top_scores"]), np.array(b["top_scores"])
        assert np.all(np.abs(sa - sb) <= tolerance(sb))
        tied = np.ptp(sb, axis=1) < 2 * tolerance(sb[:, 0]) if sb.size else np.array([])
        for row, (ia, ib) in enumerate(zip(a["top_ids"], b["top_ids"], strict=True)):
            assert ia == ib or tied[row], (a["line"], row, ia, ib)


def batchmaker_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "batchmaker", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a ``batchmaker`` subprocess: this one's, without any
    ``BATCHMAKER_*`` setting of the caller's shell, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHMAKER_", "SAGEMAKER_"))}
    env.update(extra)
    return env


def run_cli(
    *args: str, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        batchmaker_cmd(*args),
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env=subprocess_env(),
        cwd=REPO,
        check=False,
    )
