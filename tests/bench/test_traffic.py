"""Generated traffic and recorded arrival times (``bench/trace.py``), for ``plan`` and
``simulate`` when no recorded trace is given. Pure numpy: no model, no engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from batchmaker.bench.trace import MAX_LEN, generate, make_trace, read_timestamps


def test_a_generated_chain_trace_is_the_benchmarks_of_the_same_seed() -> None:
    # The repository's recorded trace is make_trace(400, seed=0): generating with the
    # defaults gives the same requests, so a simulation without --trace is comparable.
    a = generate("chain", 50, seed=0)
    b = make_trace(50, vocab_size=1000, seed=0, max_len=MAX_LEN["chain"])
    assert np.array_equal(a.offsets, b.offsets)
    assert all(np.array_equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))


@pytest.mark.parametrize("family", ["chain", "seq2seq", "tree"])
def test_each_family_gets_its_kind_of_trace(family: str) -> None:
    trace = generate(family, 30, seed=1, median=8, p99=16)
    assert trace.kind == family
    assert len(trace) == 30
    if family == "seq2seq":
        assert trace.output_lengths is not None
        assert max(trace.output_lengths) <= MAX_LEN["seq2seq"]


def test_lengths_follow_the_median_asked_for() -> None:
    short = generate("chain", 400, seed=2, median=5, p99=10)
    long = generate("chain", 400, seed=2, median=40, p99=80)
    assert np.median([len(t) for t in short.tokens]) == pytest.approx(5, abs=1)
    assert np.median([len(t) for t in long.tokens]) == pytest.approx(40, abs=4)


def test_burstiness_makes_the_gaps_more_uneven() -> None:
    def cv(trace) -> float:
        gaps = np.diff(trace.offsets)
        return float(gaps.std() / gaps.mean())

    poisson = generate("chain", 2000, seed=3)
    bursty = generate("chain", 2000, seed=3, arrival="mmpp", burstiness=16)
    assert cv(poisson) == pytest.approx(1.0, abs=0.1)  # exponential gaps
    assert cv(bursty) > 1.3


@pytest.mark.parametrize("family", ["chain", "tree"])
def test_the_default_burstiness_is_the_one_named(family: str) -> None:
    """``--burstiness 8`` is the documented default: it must give the very trace that
    leaving it out gives, and another ratio another trace."""
    default = generate(family, 200, seed=4, arrival="mmpp")
    named = generate(family, 200, seed=4, arrival="mmpp", burstiness=8.0)
    other = generate(family, 200, seed=4, arrival="mmpp", burstiness=2.0)
    assert np.array_equal(default.offsets, named.offsets)
    assert not np.array_equal(default.offsets, other.offsets)


def test_timestamps_are_sorted_from_zero(tmp_path: Path) -> None:
    lines = tmp_path / "t.txt"
    lines.write_text("# epoch seconds\n1700000002.5\n\n1700000001.0\n1700000001.0 # twice\n")
    assert read_timestamps(lines).tolist() == [0.0, 0.0, 1.5]
    listed = tmp_path / "t.json"
    listed.write_text("[3, 1, 2]")
    assert read_timestamps(listed).tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no timestamps"),
        ("1\n2\nlater\n", "line 3: 'later' is not a number"),
        ('[1, "x"]', "not a JSON list of numbers"),
        ("1\ninf\n", "not finite"),
    ],
)
def test_bad_timestamps_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_timestamps(path)
