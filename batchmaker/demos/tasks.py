"""The demo models' synthetic tasks: data, vocabularies, held-out splits, and tree syntax.

Pure Python and numpy, no torch: the training script and the tests draw the same
examples from here. The text handling itself (tokens and s-expressions <-> ids) is
the client's, ``batchmaker.client.text``, re-exported here for the tasks' users.

Held-out splits are a property of the example, not of a sampling run: an example
is held out when a salted hash of its key (the number, the counting sequence's
first number, the tree's s-expression) falls in the test bucket. So training
never sees a test example whatever seed or sample size it uses, and any run can
draw a fresh test sample that is still disjoint from every training sample.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

# Re-exported: the tasks' users (training, tests) speak of tasks.encode and the like.
from batchmaker.client.text import decode as decode
from batchmaker.client.text import encode as encode
from batchmaker.client.text import format_sexpr as format_sexpr
from batchmaker.client.text import parse_sexpr as parse_sexpr
from batchmaker.client.text import tree_root as tree_root

Split = Literal["train", "test"]

TEST_FRACTION = 0.1
"""Share of each task's examples held out for testing (by hash of the example)."""

# ---- number words --------------------------------------------------------------------

ONES: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
"""0..19: the words below twenty."""
TENS: tuple[str, ...] = (
    "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
)  # fmt: skip
"""20, 30, ..., 90."""
NUMBER_WORDS: tuple[str, ...] = (*ONES, *TENS, "hundred", "thousand")
"""Every word of a number in 0..``MAX_NUMBER`` (30 words, no "and")."""

MAX_NUMBER = 999_999
"""The largest number the number tasks use."""

MAX_NUMBER_WORDS = 9
"""Words in the longest numbers up to ``MAX_NUMBER``, such as 777777: "seven hundred seventy
seven thousand seven hundred seventy seven"."""

_WORD_VALUE = {w: i for i, w in enumerate(ONES)} | {w: 20 + 10 * i for i, w in enumerate(TENS)}


def _below_thousand(n: int) -> list[str]:
    words = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [ONES[hundreds], "hundred"]
    if rest >= 20:
        words.append(TENS[rest // 10 - 2])
        if rest % 10:
            words.append(ONES[rest % 10])
    elif rest:
        words.append(ONES[rest])
    return words


def number_to_words(n: int) -> str:
    """``342`` -> ``"three hundred forty two"``; ``7011`` -> ``"seven thousand eleven"``."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"number must be an integer in [0, {MAX_NUMBER}], got {n!r}")
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    words = [*_below_thousand(thousands), "thousand"] if thousands else []
    return " ".join(words + _below_thousand(rest))


def words_to_number(text: str) -> int:
    """The inverse of ``number_to_words``; ``ValueError`` unless ``text`` is exactly its form."""
    words = text.split()
    total = current = 0
    for w in words:
        if w in _WORD_VALUE:
            current += _WORD_VALUE[w]
        elif w == "hundred":
            current *= 100
        elif w == "thousand":
            total, current = total + current * 1000, 0
        else:
            raise ValueError(f"{w!r} is not a number word (known: {', '.join(NUMBER_WORDS)})")
    value = total + current
    if not words or value > MAX_NUMBER or number_to_words(value) != " ".join(words):
        raise ValueError(f"{text!r} is not a number written as number_to_words writes it")
    return value


# ---- vocabularies and tokenisation ---------------------------------------------------------

WORDS_VOCABULARY: tuple[str, ...] = NUMBER_WORDS
"""``words-to-digits`` source tokens."""
DIGITS_VOCABULARY: tuple[str, ...] = ("<pad>", "<s>", "</s>", *"0123456789")
"""``words-to-digits`` target tokens: the decoder starts from ``<s>`` and ends with ``</s>``."""
PAD, BOS, EOS = 0, 1, 2
"""Special ids of ``DIGITS_VOCABULARY``."""
COUNTING_VOCABULARY: tuple[str, ...] = (*NUMBER_WORDS, ",")
"""``counting-lm`` input and output tokens."""
ARITH_OPERATORS: tuple[str, ...] = ("+", "-", "*")
ARITH_VOCABULARY: tuple[str, ...] = (*"0123456789", *ARITH_OPERATORS)
"""``arith-mod10`` node tokens: digits are leaves, operators have two children."""
ARITH_CLASSES: tuple[str, ...] = tuple("0123456789")
"""``arith-mod10`` classes: the expression's value mod 10."""


def digits_target(n: int) -> list[int]:
    """The decoder's expected output for ``n``: its digits' ids, then ``EOS``."""
    return [*encode(list(str(n)), DIGITS_VOCABULARY), EOS]


# ---- held-out splits -------------------------------------------------------------------------


def split_of(task: str, key: str) -> Split:
    """``"test"`` for the ``TEST_FRACTION`` of keys whose salted hash lands in the test bucket.

    A cryptographic hash (not ``hash()``, which is salted per process) makes it the
    same on every machine and in every run.
    """
    digest = hashlib.blake2b(f"{task}\0{key}".encode(), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "big") / 2.0**64 < TEST_FRACTION else "train"


def random_number(rng: np.random.Generator, max_number: int = MAX_NUMBER) -> int:
    """A number whose digit count is uniform (1..6): short numbers are not drowned out."""
    num_digits = int(rng.integers(1, len(str(max_number)) + 1))
    lo = 0 if num_digits == 1 else 10 ** (num_digits - 1)
    return int(rng.integers(lo, min(10**num_digits - 1, max_number) + 1))


def sample_numbers(
    rng: np.random.Generator, n: int, split: Split, max_number: int = MAX_NUMBER
) -> list[int]:
    """``n`` numbers of ``split`` for ``words-to-digits`` (repeats possible among short ones)."""
    out: list[int] = []
    while len(out) < n:
        k = random_number(rng, max_number)
        if split_of("words-to-digits", str(k)) == split:
            out.append(k)
    return out


# ---- the counting corpus ------------------------------------------------------------------

MIN_COUNT, MAX_COUNT = 3, 5
"""Numbers per counting sequence."""


def counting_tokens(start: int, count: int) -> list[str]:
    """``start, start + 1, ...`` (``count`` numbers) in words, separated by ``","``."""
    if count < 1 or start < 0 or start + count - 1 > MAX_NUMBER:
        raise ValueError(f"cannot count {count} numbers from {start} within [0, {MAX_NUMBER}]")
    tokens: list[str] = []
    for k in range(start, start + count):
        if tokens:
            tokens.append(",")
        tokens += number_to_words(k).split()
    return tokens


def predictable_from(tokens: Sequence[str]) -> int:
    """The first position whose token the prefix determines: just after the first ``","``.

    The first number (and whether it ends where it does) is anyone's guess; every
    token of the second and later numbers follows from the numbers before it.
    """
    return list(tokens).index(",") + 1


def random_counting_start(rng: np.random.Generator, count: int) -> int:
    """A first number: half of them uniform in digit count, half just before a carry
    (``...9``, ``...99``, ..., ``99999``) that the sequence then crosses, which uniform starts
    would hardly ever do. The digits above the carry are uniform in digit count too, so
    short carries (1999 -> 2000) come up as often as long ones (841999 -> 842000)."""
    top = MAX_NUMBER - count + 1
    if rng.random() < 0.5:
        return min(random_number(rng), top)
    scale = int(10 ** int(rng.integers(1, 6)))
    base = max(1, random_number(rng, MAX_NUMBER // scale)) * scale
    return max(0, min(base - int(rng.integers(1, count)), top))


def sample_counting(rng: np.random.Generator, n: int, split: Split) -> list[list[str]]:
    """``n`` counting sequences of ``split`` (split by their first number)."""
    out: list[list[str]] = []
    while len(out) < n:
        count = int(rng.integers(MIN_COUNT, MAX_COUNT + 1))
        start = random_counting_start(rng, count)
        if split_of("counting-lm", str(start)) == split:
            out.append(counting_tokens(start, count))
    return out


# ---- arithmetic expression trees -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expr:
    """A binary expression tree: a digit leaf, or an operator with two children."""

    token: str
    left: Expr | None = None
    right: Expr | None = None

    @property
    def depth(self) -> int:
        """Operator levels on the longest root-to-leaf path (a digit: 0)."""
        if self.left is None or self.right is None:
            return 0
        return 1 + max(self.left.depth, self.right.depth)

    def value(self) -> int:
        """The exact value (``*`` binds as written: the tree, not precedence, decides)."""
        if self.left is None or self.right is None:
            return int(self.token)
        a, b = self.left.value(), self.right.value()
        return a + b if self.token == "+" else a - b if self.token == "-" else a * b

    def label(self) -> int:
        """The class: the value mod 10, Python's ``%`` (always 0..9, also for negatives)."""
        return self.value() % 10

    def sexpr(self) -> str:
        if self.left is None or self.right is None:
            return self.token
        return f"({self.token} {self.left.sexpr()} {self.right.sexpr()})"

    def tree(self) -> tuple[list[int], list[list[int]]]:
        """``(tokens, children)`` over ``ARITH_VOCABULARY`` in pre-order (the root is node 0)."""
        return parse_sexpr(self.sexpr(), ARITH_VOCABULARY, max_children=2)


def random_expr(rng: np.random.Generator, depth: int) -> Expr:
    """A random tree of exactly ``depth`` operator levels: one child of every operator on
    the deepest path goes one level down, the other to a random shallower depth."""
    if depth == 0:
        return Expr(str(int(rng.integers(0, 10))))
    deep = random_expr(rng, depth - 1)
    other = random_expr(rng, int(rng.integers(0, depth)))
    op = ARITH_OPERATORS[int(rng.integers(0, len(ARITH_OPERATORS)))]
    left, right = (deep, other) if rng.random() < 0.5 else (other, deep)
    return Expr(op, left, right)


def sample_exprs(
    rng: np.random.Generator, n: int, depth: int, split: Split, *, distinct: bool = False
) -> list[Expr]:
    """``n`` trees of ``depth`` operator levels from ``split`` (split by the s-expression).

    ``distinct`` draws no tree twice; it stops early (returns fewer) when the split has
    fewer trees of that depth than asked for (depth 1 has 300 in all): after 1000 draws in
    a row that found nothing new, which a split holding a tenth of the trees would almost
    never (0.9 ** 1000) produce by chance.
    """
    out: list[Expr] = []
    seen: set[str] = set()
    misses = 0
    while len(out) < n and misses < 1000:
        e = random_expr(rng, depth)
        key = e.sexpr()
        if split_of("arith-mod10", key) != split or (distinct and key in seen):
            misses += 1
            continue
        misses = 0
        seen.add(key)
        out.append(e)
    return out


def tree_to_expr(
    tokens: Sequence[int] | np.ndarray,
    children: Sequence[Sequence[int]],
    vocabulary: Sequence[str] = ARITH_VOCABULARY,
) -> Expr:
    """An arithmetic tree as an ``Expr``; ``ValueError`` unless digits are leaves and
    operators have exactly two children."""
    root = tree_root(len(tokens), children)
    words = decode(tokens, vocabulary)

    def build(i: int) -> Expr:
        w, kids = words[i], children[i]
        if w in ARITH_OPERATORS:
            if len(kids) != 2:
                raise ValueError(f"operator {w!r} (node {i}) needs 2 children, has {len(kids)}")
            return Expr(w, build(int(kids[0])), build(int(kids[1])))
        if not (len(w) == 1 and w.isdigit()):
            raise ValueError(f"node {i}: {w!r} is neither a digit nor one of {ARITH_OPERATORS}")
        if kids:
            raise ValueError(f"digit {w!r} (node {i}) is a leaf, but has {len(kids)} children")
        return Expr(w)

    return build(root)
