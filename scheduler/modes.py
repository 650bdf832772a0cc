"""The batching modes, and the scheduler each one runs.

A mode is a policy, so choosing one belongs here, beside the policies, and not
to the engine: the live engine, the benchmarks and a simulator all build their
schedulers through ``make_scheduler`` and so cannot disagree on what a mode means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from scheduler.base import Scheduler
from scheduler.cellular import CellularScheduler
from scheduler.clock import Clock
from scheduler.padded import PaddedScheduler
from scheduler.plan import CellTypeSpec
from scheduler.policy import PolicyConfig

Mode = Literal["cellular", "padded", "level", "none"]
"""``cellular``: per-cell batching (this project). ``padded``: request-level batches padded
to the longest member (TF-Serving, Triton's dynamic batcher, Ray Serve). ``level``: the same
request-level batches, every ready node of the batch per step, unpadded (TensorFlow Fold's
and DyNet's depth-by-depth batching of trees). ``none``: one request at a time."""
MODES: tuple[str, ...] = get_args(Mode)

LIVE_PER_BATCH = 4
"""The default admission limit per device, in max batches. In cellular batching every live
request runs in each step of its cell type up to the max batch, so with ``n`` live a
request's steps come round every ``n / max_batch`` batches: at four, every batch is full
whenever the load could fill it, and a request admitted into an overload is at most about
four times slower than in a full batch. A limit of 1,024 at the max batch of 64 queued
about 9 s of work on the benchmark model and took 16.5 s to drain after an overload
(docs/benchmarks.md, "Overload"). The server, ``batchmaker simulate`` and the
planner all default to it, so a plan is simulated with the limit it is deployed with."""


def default_live_limit(max_batches: Iterable[int]) -> int:
    """The admission limit when none is set: ``LIVE_PER_BATCH`` times the largest of
    ``max_batches`` (the server's configured ones, or a profile's cell types' in the
    simulator and the planner)."""
    return LIVE_PER_BATCH * max(max_batches)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Everything that decides which scheduler runs and how, and nothing about devices."""

    mode: Mode = "cellular"
    """Which batching policy; see ``Mode``."""
    max_num_live_requests: int = 1024
    """Admitted requests not yet finished; beyond it ``add_request`` refuses."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """``cellular``: how to choose between cell types."""
    max_batch_requests: int = 64
    """``padded`` and ``level``: requests per request-level batch."""
    batch_timeout_s: float = 0.005
    """``padded`` and ``level``: the longest the oldest queued request waits for a batch."""
    max_steps_per_plan: int = 128
    """``cellular``: the most steps one plan may run for cell types with runs (1: every plan
    is one step). Bounds how long a request arriving mid-plan waits to join: K-1 steps."""
    fused_baselines: bool = True
    """``padded`` and ``none``: run each request's run (a chain's whole sequence) in one
    fused call, as users' request-level batchers do; ``False``: step by step on the cells."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.max_steps_per_plan < 1:
            raise ValueError(f"max_steps_per_plan must be >= 1, got {self.max_steps_per_plan}")


def make_scheduler(
    config: SchedulerConfig,
    cell_types: Iterable[CellTypeSpec],
    pool_capacities: Mapping[str, int],
    clock: Clock,
) -> Scheduler:
    """The scheduler of ``config.mode`` over the given cell types and state pools."""
    if config.mode == "cellular":
        return CellularScheduler(
            cell_types,
            pool_capacities,
            clock,
            max_num_live_requests=config.max_num_live_requests,
            policy=config.policy,
            max_steps_per_plan=config.max_steps_per_plan,
        )
    request_batches = config.mode in ("padded", "level")
    return PaddedScheduler(
        cell_types,
        pool_capacities,
        clock,
        max_num_live_requests=config.max_num_live_requests,
        max_batch_requests=config.max_batch_requests if request_batches else 1,
        batch_timeout=config.batch_timeout_s if request_batches else 0.0,
        stream=not request_batches,
        all_ready=config.mode == "level",
        fused=config.fused_baselines and config.mode != "level",
    )
