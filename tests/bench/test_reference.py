"""The benchmarks' validity check (``bench/reference.compare``): it passes a run that
computed what the reference did, and fails a run with a wrong id, a wrong score or a
missing step, telling a true tie from a wrong answer by the reference's second best."""

from __future__ import annotations

import numpy as np
import pytest

from batchmaker.bench.reference import Fingerprint, compare, top_of


def outputs(seed: int = 0, steps: int = 6, dim: int = 9) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((steps, dim)).astype(np.float32)


REF = top_of(outputs())


def test_the_same_outputs_are_the_same() -> None:
    assert REF.ids.shape == (6, 2)
    for feeds_back in (False, True):
        assert compare(REF, top_of(outputs()), feeds_back=feeds_back) == "same"
        assert compare(REF, top_of(outputs() + 1e-6), feeds_back=feeds_back) == "same"


@pytest.mark.parametrize("feeds_back", [False, True])
def test_a_corrupted_output_is_caught(feeds_back: bool) -> None:
    # A wrong best score at one step.
    bad = outputs()
    bad[3, REF.ids[3, 0]] += 0.5
    assert compare(REF, top_of(bad), feeds_back=feeds_back) == "differ"
    # The right scores under the wrong ids (a permuted output row), which a check on
    # scores alone would pass.
    swapped = Fingerprint(ids=REF.ids.copy(), scores=REF.scores.copy())
    swapped.ids[2, 0] = (swapped.ids[2, 0] + 1) % 9
    assert compare(REF, swapped, feeds_back=feeds_back) == "differ"
    # A step missing at the end.
    short = Fingerprint(ids=REF.ids[:-1], scores=REF.scores[:-1])
    assert compare(REF, short, feeds_back=feeds_back) == "differ"


def test_a_true_tie_may_go_either_way() -> None:
    tied = outputs()
    a, b = REF.ids[4]
    tied[4, b] = tied[4, a]  # the best two now tie exactly
    ref = top_of(tied)
    other = top_of(tied)
    other.ids[4] = other.ids[4, ::-1]  # the run took the other of the two
    assert compare(ref, other, feeds_back=False) == "tie"
    # A decoder fed the other token back: its later steps may differ; checked up to the tie.
    later = top_of(np.concatenate([tied[:5], outputs(seed=1, steps=3)]))
    later.ids[4] = later.ids[4, ::-1]
    assert compare(ref, later, feeds_back=True) == "tie"
    # Not a tie: the reference's best two are far apart, yet the run took the second.
    far = Fingerprint(ids=REF.ids.copy(), scores=REF.scores.copy())
    far.ids[4] = far.ids[4, ::-1]
    if not np.isclose(REF.scores[4, 0], REF.scores[4, 1], atol=1e-4):
        assert compare(REF, far, feeds_back=False) == "differ"
