"""The demo tasks: number words, counting, expression trees, splits and the s-expression syntax."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchmaker.demos import tasks
from batchmaker.demos.tasks import (
    ARITH_VOCABULARY,
    Expr,
    format_sexpr,
    number_to_words,
    parse_sexpr,
    words_to_number,
)


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (40, "forty"),
        (42, "forty two"),
        (100, "one hundred"),
        (342, "three hundred forty two"),
        (7011, "seven thousand eleven"),
        (120_000, "one hundred twenty thousand"),
        (100_001, "one hundred thousand one"),
        (999_999, "nine hundred ninety nine thousand nine hundred ninety nine"),
    ],
)
def test_number_words(n: int, words: str) -> None:
    assert number_to_words(n) == words
    assert words_to_number(words) == n


@given(st.integers(0, tasks.MAX_NUMBER))
def test_number_words_round_trip(n: int) -> None:
    words = number_to_words(n).split()
    assert len(words) <= tasks.MAX_NUMBER_WORDS
    assert set(words) <= set(tasks.WORDS_VOCABULARY)
    assert words_to_number(" ".join(words)) == n


@pytest.mark.parametrize("n", [-1, tasks.MAX_NUMBER + 1, True, 2.0])
def test_number_out_of_range(n: object) -> None:
    with pytest.raises(ValueError, match="integer in"):
        number_to_words(n)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text", ["", "twenty twenty", "hundred", "one hundred and one", "zero zero", "ten one"]
)
def test_words_not_canonical(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a number|not a number word"):
        words_to_number(text)


def test_encode_decode() -> None:
    ids = tasks.encode("three hundred forty two", tasks.WORDS_VOCABULARY)
    assert tasks.decode(ids, tasks.WORDS_VOCABULARY) == ["three", "hundred", "forty", "two"]
    assert tasks.digits_target(340) == [6, 7, 3, tasks.EOS]
    assert tasks.DIGITS_VOCABULARY[tasks.BOS] == "<s>"
    with pytest.raises(ValueError, match="token 1 'and'"):
        tasks.encode("one and", tasks.WORDS_VOCABULARY)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tasks.decode([30], tasks.WORDS_VOCABULARY)


def test_splits_are_disjoint_and_stable() -> None:
    rng = np.random.default_rng(0)
    train = set(tasks.sample_numbers(rng, 2000, "train"))
    test = set(tasks.sample_numbers(rng, 500, "test"))
    assert not train & test
    assert all(tasks.split_of("words-to-digits", str(n)) == "test" for n in test)
    share = np.mean([tasks.split_of("t", str(k)) == "test" for k in range(20_000)])
    assert share == pytest.approx(tasks.TEST_FRACTION, abs=0.01)
    # The same draw from the same seed.
    again = tasks.sample_numbers(np.random.default_rng(7), 50, "test")
    assert again == tasks.sample_numbers(np.random.default_rng(7), 50, "test")


def test_counting() -> None:
    assert " ".join(tasks.counting_tokens(19, 3)) == "nineteen , twenty , twenty one"
    seq = tasks.counting_tokens(999, 2)
    assert seq == ["nine", "hundred", "ninety", "nine", ",", "one", "thousand"]
    assert tasks.predictable_from(seq) == 5
    with pytest.raises(ValueError, match="cannot count"):
        tasks.counting_tokens(tasks.MAX_NUMBER, 2)
    rng = np.random.default_rng(0)
    for s in tasks.sample_counting(rng, 50, "test"):
        numbers = [words_to_number(w) for w in " ".join(s).split(" , ")]
        assert tasks.MIN_COUNT <= len(numbers) <= tasks.MAX_COUNT
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        assert tasks.split_of("counting-lm", str(numbers[0])) == "test"
        assert set(s) <= set(tasks.COUNTING_VOCABULARY)


def test_expressions() -> None:
    e = Expr("-", Expr("3"), Expr("*", Expr("4"), Expr("5")))
    assert e.sexpr() == "(- 3 (* 4 5))"
    assert (e.value(), e.label(), e.depth) == (-17, 3, 2)  # Python's %: -17 % 10 == 3
    rng = np.random.default_rng(0)
    for depth in range(5):
        for x in tasks.sample_exprs(rng, 20, depth, "train"):
            assert x.depth == depth
            assert tasks.tree_to_expr(*x.tree()) == x
    held_out = tasks.sample_exprs(rng, 1000, 1, "test", distinct=True)
    assert 0 < len(held_out) < 300  # depth 1 has 300 trees; a tenth or so are held out
    assert len({x.sexpr() for x in held_out}) == len(held_out)


def test_parse_and_format_sexpr() -> None:
    tokens, children = parse_sexpr("(+ 3 (* 4 5))", ARITH_VOCABULARY)
    assert tokens == [10, 3, 12, 4, 5]
    assert children == [[1, 2], [], [3, 4], [], []]
    assert format_sexpr(tokens, children, ARITH_VOCABULARY) == "(+ 3 (* 4 5))"
    assert parse_sexpr("  7 ", ARITH_VOCABULARY) == ([7], [[]])
    assert parse_sexpr("(+(- 1 2)3)", ARITH_VOCABULARY)[0] == [10, 11, 1, 2, 3]
    # Any node order: the root is the node nobody lists as a child.
    assert format_sexpr([4, 5, 12], [[], [], [0, 1]], ARITH_VOCABULARY) == "(* 4 5)"
    # Any vocabulary, any arity.
    words = ("S", "NP", "VP", "dogs", "bark", "loudly")
    tree = "(S dogs (VP bark loudly))"
    assert format_sexpr(*parse_sexpr(tree, words), words) == tree


@given(st.integers(0, 4), st.integers(0, 2**32 - 1))
def test_sexpr_round_trip(depth: int, seed: int) -> None:
    e = tasks.random_expr(np.random.default_rng(seed), depth)
    tokens, children = parse_sexpr(e.sexpr(), ARITH_VOCABULARY, max_children=2)
    assert format_sexpr(tokens, children, ARITH_VOCABULARY) == e.sexpr()
    assert tasks.tree_to_expr(tokens, children).value() == e.value()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty tree"),
        ("   ", "empty tree"),
        ("(+ 1 2", r"unclosed '\(' at offset 0"),
        ("(+ 1 2))", r"unexpected '\)' at offset 7 after the complete tree"),
        (")", r"unexpected '\)' at offset 0"),
        ("()", r"'\(' at offset 0 must be followed by a token"),
        ("((+ 1 2) 3)", r"'\(' at offset 0 must be followed by a token"),
        ("(+ 1 x)", "unknown token 'x' at offset 5"),
        ("(+ 1 12)", "unknown token '12' at offset 5"),
        ("1 2", "unexpected '2' at offset 2"),
        ("(+ 1 2 3)", r"'\+' at offset 1 has more than 2 children"),
        ("(+", "unclosed"),
    ],
)
def test_parse_sexpr_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sexpr(text, ARITH_VOCABULARY, max_children=2)


@pytest.mark.parametrize(
    ("tokens", "children", "message"),
    [
        ([], [], "no nodes"),
        ([1, 2], [[]], "2 tokens but 1 child lists"),
        ([10, 1, 2], [[1, 2], [], [5]], "outside"),
        ([10, 1, 2], [[1, 2], [2], []], "two parents"),
        ([1, 2], [[], []], "exactly one root, found 2"),
        ([10, 11, 12, 1], [[], [2], [1], []], "exactly one root|cycle"),
        ([10, 1, 2], [[1, 2], [], []], None),
        ([10, 1, 99], [[1, 2], [], []], "outside the vocabulary"),
    ],
)
def test_format_sexpr_errors(
    tokens: list[int], children: list[list[int]], message: str | None
) -> None:
    if message is None:
        assert format_sexpr(tokens, children, ARITH_VOCABULARY) == "(+ 1 2)"
        return
    with pytest.raises(ValueError, match=message):
        format_sexpr(tokens, children, ARITH_VOCABULARY)


def test_format_sexpr_cycle() -> None:
    # Node 0 is the root; nodes 1 and 2 list each other, so nobody reaches them.
    with pytest.raises(ValueError, match="cycle"):
        format_sexpr([10, 11, 12], [[], [2], [1]], ARITH_VOCABULARY)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("(3 1 2)", "digit '3' \\(node 0\\) is a leaf, but has 2 children"),
        ("(+ 1)", "needs 2 children, has 1"),
        ("(+ (1 2) 3)", "is a leaf"),
    ],
)
def test_tree_to_expr_errors(text: str, message: str) -> None:
    tokens, children = parse_sexpr(text, ARITH_VOCABULARY)
    with pytest.raises(ValueError, match=message):
        tasks.tree_to_expr(tokens, children)
    with pytest.raises(ValueError, match="neither a digit nor"):
        tasks.tree_to_expr([0], [[]], ("x",))
