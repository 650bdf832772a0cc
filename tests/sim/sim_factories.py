"""Profiles and traffic for the simulator's tests, small enough to compute by hand."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from batchmaker.sim.profile import CostGrid, StepProfile, Unfold
from batchmaker.sim.simulator import SimRequest
from scheduler import CellTypeSpec

CELL = "lstm"
POOL = "h"


def flat_grid(seconds: float, *, per_step: float = 0.0, max_rows: int = 64) -> CostGrid:
    """``seconds`` per plan whatever its batch, plus ``per_step`` for each step past one."""
    rows = tuple(1 << i for i in range(max_rows.bit_length()) if 1 << i <= max_rows)
    steps = (1, 2, 4, 8, 16, 32)
    return CostGrid(
        rows, steps, tuple(tuple(seconds + per_step * (k - 1) for k in steps) for _ in rows)
    )


def chain_profile(
    grid: CostGrid,
    *,
    max_batch: int = 64,
    slots: int = 1024,
    meta: dict[str, Any] | None = None,
    host: float = 1.0,
) -> StepProfile:
    return StepProfile(
        model="toy",
        device="cpu",
        cell_types=(CellTypeSpec(CELL, max_batch, POOL, runs=True),),
        pools={POOL: slots},
        unfold=Unfold("chain", CELL, POOL),
        costs={CELL: grid},
        meta=meta or {},
        host=host,
    )


def seq2seq_profile(enc: CostGrid, dec: CostGrid, *, max_batch: int = 64) -> StepProfile:
    return StepProfile(
        model="toy-s2s",
        device="cpu",
        cell_types=(
            CellTypeSpec("enc", max_batch, POOL, runs=True),
            CellTypeSpec("dec", max_batch, POOL, rank=1),
        ),
        pools={POOL: 1024},
        unfold=Unfold("seq2seq", "enc", POOL, decoder="dec", bos=1, eos=2),
        costs={"enc": enc, "dec": dec},
    )


def tree_profile(grid: CostGrid, *, max_batch: int = 64) -> StepProfile:
    return StepProfile(
        model="toy-tree",
        device="cpu",
        cell_types=(CellTypeSpec("tree", max_batch, POOL, arity=2),),
        pools={POOL: 1024},
        unfold=Unfold("tree", "tree", POOL, arity=2),
        costs={"tree": grid},
    )


def chains(arrivals: Sequence[float], lengths: Sequence[int]) -> list[SimRequest]:
    return [
        SimRequest(float(t), np.arange(1, n + 1, dtype=np.int64))
        for t, n in zip(arrivals, lengths, strict=True)
    ]


def balanced_tree(leaves: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and ``[nodes, 2]`` children of a left-leaning binary tree over ``leaves``
    leaves: leaves first, then each internal node joins the two oldest roots."""
    children: list[list[int]] = [[-1, -1] for _ in range(leaves)]
    roots = list(range(leaves))
    while len(roots) > 1:
        a, b = roots.pop(0), roots.pop(0)
        children.append([a, b])
        roots.append(len(children) - 1)
    n = len(children)
    return np.arange(1, n + 1, dtype=np.int64), np.array(children, dtype=np.int64)
