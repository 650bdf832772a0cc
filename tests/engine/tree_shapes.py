"""Tree shapes the tests of every tier build on: torch-free, so the scheduler tier uses
them too. A tree is its child lists (``children[i]``: node ``i``'s children, by index)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st


def chain(n: int) -> list[list[int]]:
    """Node ``i`` has the one child ``i + 1``: depth ``n``, every inner node unary."""
    return [[i + 1] for i in range(n - 1)] + [[]]


def full_binary(levels: int) -> list[list[int]]:
    """Heap order: node ``i`` has children ``2i+1`` and ``2i+2``."""
    n = 2**levels - 1
    return [[c for c in (2 * i + 1, 2 * i + 2) if c < n] for i in range(n)]


def heights(children: Sequence[Sequence[int]]) -> list[int]:
    """Leaves are 1; a parent is one more than its tallest child."""
    memo: dict[int, int] = {}

    def h(i: int) -> int:
        if i not in memo:
            memo[i] = 1 + max((h(c) for c in children[i]), default=0)
        return memo[i]

    return [h(i) for i in range(len(children))]


@st.composite
def binary_trees(draw: st.DrawFn, max_nodes: int = 60) -> list[list[int]]:
    """Valid binary trees: bushy, unary-heavy or deep chains, nodes labelled at random (so
    the root is anywhere) and each node's children in a random order."""
    n = draw(st.integers(1, max_nodes))
    style = draw(st.sampled_from(["random", "chain", "mostly-chain"]))
    kids: list[list[int]] = [[] for _ in range(n)]
    for k in range(1, n):
        if style == "chain" or (style == "mostly-chain" and draw(st.integers(0, 3)) > 0):
            parent = k - 1
            if len(kids[parent]) == 2:
                parent = next(p for p in range(k) if len(kids[p]) < 2)
        else:
            parent = draw(st.sampled_from([p for p in range(k) if len(kids[p]) < 2]))
        kids[parent].append(k)
    label = draw(st.permutations(range(n)))
    children: list[list[int]] = [[] for _ in range(n)]
    for k, ch in enumerate(kids):
        mapped = [label[c] for c in ch]
        if draw(st.booleans()):
            mapped.reverse()
        children[label[k]] = mapped
    return children
