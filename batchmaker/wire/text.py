"""Text <-> ids for models with a vocabulary: tokens, s-expression trees, outputs.

A request on the gRPC doors carries ids, and the model's vocabularies come from its
metadata: ``batchmaker infer --text/--tree`` and the demo models' tasks encode on the
client side (``batchmaker.client.text`` re-exports this module). The JSON records of
``batchmaker transform`` and the SageMaker door may carry ``text`` or an s-expression
``tree`` too, which the server reads with the same functions (``wire/records.py``), so
it lives here, where both sides may import it. Pure Python, no torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np


def encode(text: str | Sequence[str], vocabulary: Sequence[str]) -> list[int]:
    """Whitespace-separated tokens (or a token list) -> ids; ``ValueError`` names an unknown."""
    tokens = text.split() if isinstance(text, str) else list(text)
    index = {w: i for i, w in enumerate(vocabulary)}
    ids = []
    for pos, tok in enumerate(tokens):
        if tok not in index:
            raise ValueError(f"token {pos} {tok!r} is not in the vocabulary")
        ids.append(index[tok])
    return ids


def decode(ids: Sequence[int] | np.ndarray, vocabulary: Sequence[str]) -> list[str]:
    """Ids -> their tokens; ``ValueError`` for an id outside the vocabulary."""
    out = []
    for i in ids:
        k = int(i)
        if not 0 <= k < len(vocabulary):
            raise ValueError(f"id {k} is outside the vocabulary [0, {len(vocabulary)})")
        out.append(vocabulary[k])
    return out


_SEXPR_TOKEN = re.compile(r"\(|\)|[^\s()]+")


def parse_sexpr(
    text: str, vocabulary: Sequence[str], *, max_children: int | None = None
) -> tuple[list[int], list[list[int]]]:
    """``"(+ 3 (* 4 5))"`` -> ``(tokens, children)``, nodes in pre-order (the root is node 0).

    Grammar: ``node := ATOM | "(" ATOM node* ")"``; atoms are separated by whitespace
    or parentheses and must be in ``vocabulary``. A bare atom is a leaf. ``ValueError``
    says what is wrong and where (the character offset).
    """
    index = {w: i for i, w in enumerate(vocabulary)}
    lexemes = [(m.group(), m.start()) for m in _SEXPR_TOKEN.finditer(text)]
    if not lexemes:
        raise ValueError("empty tree: expected an atom or '(' ATOM children ')'")
    tokens: list[int] = []
    children: list[list[int]] = []
    pos = 0

    def atom(lexeme: str, offset: int) -> int:
        if lexeme not in index:
            known = ", ".join(repr(w) for w in vocabulary)
            raise ValueError(f"unknown token {lexeme!r} at offset {offset} (known: {known})")
        tokens.append(index[lexeme])
        children.append([])
        return len(tokens) - 1

    def node() -> int:
        # Iterative over siblings, recursive over depth: the trees this serves are shallow.
        nonlocal pos
        if pos == len(lexemes):
            raise ValueError("unexpected end of input: a node is missing")
        lexeme, offset = lexemes[pos]
        pos += 1
        if lexeme == ")":
            raise ValueError(f"unexpected ')' at offset {offset}")
        if lexeme != "(":
            return atom(lexeme, offset)
        if pos == len(lexemes) or lexemes[pos][0] in "()":
            raise ValueError(f"'(' at offset {offset} must be followed by a token, as in (+ 1 2)")
        head_lexeme, head_offset = lexemes[pos]
        pos += 1
        head = atom(head_lexeme, head_offset)
        while True:
            if pos == len(lexemes):
                raise ValueError(f"unclosed '(' at offset {offset}")
            if lexemes[pos][0] == ")":
                pos += 1
                return head
            child = node()
            children[head].append(child)
            if max_children is not None and len(children[head]) > max_children:
                raise ValueError(
                    f"{head_lexeme!r} at offset {head_offset} has more than {max_children} children"
                )

    root = node()
    if pos != len(lexemes):
        lexeme, offset = lexemes[pos]
        raise ValueError(f"unexpected {lexeme!r} at offset {offset} after the complete tree")
    assert root == 0
    return tokens, children


def tree_root(num_nodes: int, children: Sequence[Sequence[int]]) -> int:
    """The one node that is nobody's child; ``ValueError`` unless the nodes form one tree."""
    if num_nodes == 0:
        raise ValueError("empty tree: no nodes")
    if len(children) != num_nodes:
        raise ValueError(f"{num_nodes} tokens but {len(children)} child lists")
    parent = [-1] * num_nodes
    for i, kids in enumerate(children):
        for k in kids:
            k = int(k)
            if not 0 <= k < num_nodes:
                raise ValueError(f"node {i} names child {k}, outside [0, {num_nodes})")
            if parent[k] != -1:
                raise ValueError(f"node {k} has two parents ({parent[k]} and {i})")
            parent[k] = i
    roots = [i for i in range(num_nodes) if parent[i] == -1]
    if len(roots) != 1:
        raise ValueError(f"a tree has exactly one root, found {len(roots)}: {roots[:5]}")
    # One root and one parent per other node: it is a tree unless some nodes form a cycle
    # away from the root, which a walk from the root then fails to reach.
    seen, stack = 1, [roots[0]]
    while stack:
        kids = children[stack.pop()]
        seen += len(kids)
        stack.extend(int(k) for k in kids)
    if seen != num_nodes:
        raise ValueError("the child lists contain a cycle")
    return roots[0]


def format_sexpr(
    tokens: Sequence[int] | np.ndarray,
    children: Sequence[Sequence[int]],
    vocabulary: Sequence[str],
) -> str:
    """``(tokens, children)`` -> ``"(+ 3 (* 4 5))"``, from the root whatever the node order.

    The inverse of ``parse_sexpr``; ``ValueError`` if the nodes are not one tree or a
    token is outside ``vocabulary``.
    """
    root = tree_root(len(tokens), children)
    words = decode(tokens, vocabulary)
    bad = [w for w in words if not w or _SEXPR_TOKEN.fullmatch(w) is None or w in "()"]
    if bad:
        raise ValueError(f"token {bad[0]!r} cannot be written in an s-expression")

    def fmt(i: int) -> str:
        kids = children[i]
        if not kids:
            return words[i]
        return "(" + " ".join([words[i], *(fmt(int(k)) for k in kids)]) + ")"

    return fmt(root)


def detokenize(ids: Sequence[int], vocabulary: Sequence[str]) -> str:
    """Emitted ids as text, special tokens (``<...>``) left out: characters run together,
    words are spaced."""
    words = [vocabulary[i] for i in ids if 0 <= i < len(vocabulary)]
    shown = [w for w in words if not (w.startswith("<") and w.endswith(">"))]
    plain = [w for w in vocabulary if not w.startswith("<")]
    return ("" if all(len(w) == 1 for w in plain) else " ").join(shown)
