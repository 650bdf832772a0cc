"""The benchmarks' validity check (``bench/reference.compare``): it passes a run that
computed what the reference did, and fails a run with a wrong id, a wrong score or a
missing or extra step, telling a true tie from a wrong answer by the reference's second
best; and ``check_reference`` fails an idle run that plain torch disagrees with."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from batchmaker.bench.reference import Fingerprint, compare, concat, top_of


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


# --- Each corruption, one at a time, at a step that is not a tie (issue 17) ----------------


def _copy(fp: Fingerprint) -> Fingerprint:
    return Fingerprint(ids=fp.ids.copy(), scores=fp.scores.copy())


def _not_a_tie(ref: Fingerprint) -> int:
    """A step whose best two scores are far apart."""
    gaps = ref.scores[:, 0] - ref.scores[:, 1]
    k = int(np.argmax(gaps))
    assert gaps[k] > 1e-2
    return k


def _wrong_id(ref: Fingerprint) -> Fingerprint:
    bad = _copy(ref)  # the right score under an id that is neither of the best two
    k = _not_a_tie(ref)
    bad.ids[k, 0] = next(i for i in range(9) if i not in ref.ids[k])
    return bad


def _wrong_score(ref: Fingerprint) -> Fingerprint:
    bad = _copy(ref)
    bad.scores[2, 0] += 1e-2
    return bad


def _wrong_runner_up_score(ref: Fingerprint) -> Fingerprint:
    bad = _copy(ref)  # the best id and score right, the second best's score wrong
    bad.scores[2, 1] -= 1e-2
    return bad


def _missing_step(ref: Fingerprint) -> Fingerprint:
    return Fingerprint(ids=ref.ids[:-1], scores=ref.scores[:-1])


def _missing_first_step(ref: Fingerprint) -> Fingerprint:
    return Fingerprint(ids=ref.ids[1:], scores=ref.scores[1:])


def _extra_step(ref: Fingerprint) -> Fingerprint:
    return Fingerprint(
        ids=np.concatenate([ref.ids, ref.ids[-1:]]),
        scores=np.concatenate([ref.scores, ref.scores[-1:]]),
    )


def _swapped_at_a_non_tie(ref: Fingerprint) -> Fingerprint:
    bad = _copy(ref)  # the best two ids swapped where their scores are far apart
    k = _not_a_tie(ref)
    bad.ids[k] = bad.ids[k, ::-1]
    return bad


def _no_steps(ref: Fingerprint) -> Fingerprint:
    return concat([])


def _nan(ref: Fingerprint) -> Fingerprint:
    bad = outputs()
    bad[1, 0] = np.nan
    return top_of(bad)


CORRUPTIONS = [
    _wrong_id,
    _wrong_score,
    _wrong_runner_up_score,
    _missing_step,
    _missing_first_step,
    _extra_step,
    _swapped_at_a_non_tie,
    _no_steps,
    _nan,
]


@pytest.mark.parametrize("feeds_back", [False, True])
@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_every_corruption_differs(
    corrupt: Callable[[Fingerprint], Fingerprint], feeds_back: bool
) -> None:
    assert compare(REF, corrupt(REF), feeds_back=feeds_back) == "differ"
    # And the other way round: the corrupted run as the reference.
    if corrupt not in (_no_steps, _nan):
        assert compare(corrupt(REF), REF, feeds_back=feeds_back) == "differ"


def test_a_true_tie_is_still_accepted_step_by_step() -> None:
    tied = outputs()
    a, b = REF.ids[2]
    tied[2, b] = tied[2, a] - 1e-6  # equal within float noise, not exactly
    ref = top_of(tied)
    run = _copy(ref)
    run.ids[2] = run.ids[2, ::-1]
    run.scores[2] = run.scores[2, ::-1]
    assert compare(ref, run, feeds_back=False) == "tie"
    assert compare(ref, run, feeds_back=True) == "tie"
    # The same fork with a wrong score at that step is not a tie.
    run.scores[2, 0] += 1e-2
    assert compare(ref, run, feeds_back=False) == "differ"
    assert compare(ref, run, feeds_back=True) == "differ"


def test_a_top1_run_is_compared_on_its_one_column() -> None:
    one = Fingerprint(ids=REF.ids[:, :1].copy(), scores=REF.scores[:, :1].copy())
    assert compare(REF, one, feeds_back=False) == "same"
    assert compare(one, one, feeds_back=False) == "same"
    one.scores[3, 0] += 1e-2
    assert compare(REF, one, feeds_back=False) == "differ"
    assert compare(_copy(REF), _copy(REF), feeds_back=False) == "same"


def test_top_of_is_a_stable_sort_of_the_rows() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        rows = rng.integers(0, 4, (5, 7)).astype(np.float32)  # many exact ties
        want = np.argsort(-rows, axis=1, kind="stable")[:, :2]
        got = top_of(rows)
        assert np.array_equal(got.ids, want)
        assert np.array_equal(got.scores, np.take_along_axis(rows, want, axis=1))
