"""Typed, validated engine configuration.

Built once at the entry point (flags, environment, file) and passed down;
nothing below reads the environment. Errors name the field and the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

Mode = Literal["cellular", "padded", "none"]
MODES: tuple[str, ...] = get_args(Mode)

_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class EngineConfig:
    """How the engine batches and where it runs."""

    mode: Mode = "cellular"
    """``cellular``: per-cell batching. ``padded``: request-level batching padded to the
    longest (the TF-Serving/Triton/Ray Serve baseline). ``none``: one request at a time."""
    devices: tuple[str, ...] = ("cpu",)
    """Torch devices, one executor thread each; a request stays on one device for life."""
    max_batch: int = 64
    """Most nodes in one cell execution, for every cell type without an override."""
    max_batch_per_cell: Mapping[str, int] = field(default_factory=dict)
    """Per cell type overrides of ``max_batch``, keyed by cell type: ``model@version/cell``
    for one version, or ``model/cell`` for every version of the model."""
    max_num_live_requests: int = 1024
    """Admission limit per device: admitted requests not yet finished. Beyond it, submit
    fails at once with RESOURCE_EXHAUSTED."""
    num_slots: int = 1024
    """State slots per pool per device (preallocated). Also bounds admission."""
    padded_max_batch: int = 64
    """``padded``: requests per batch."""
    padded_timeout_s: float = 0.005
    """``padded``: longest time the oldest queued request waits for a batch to fill."""
    finishing_first: bool = True
    """``cellular``: run cell types that finish requests (decoders) before ones that start them."""
    num_threads: int | None = None
    """torch intra-op threads when a device is the CPU. ``None``: all cores but one, which
    is left to the event loop (on 2 cores, a busy loop thread beside 2 OpenMP threads
    stalls every parallel region; see docs/benchmarks.md)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not self.devices:
            raise ValueError("devices must name at least one device")
        for d in self.devices:
            if not _DEVICE_RE.match(d):
                raise ValueError(f"devices: {d!r} is not 'cpu', 'cuda' or 'cuda:N'")
        if len(set(self.devices)) != len(self.devices):
            raise ValueError(f"devices: duplicates in {self.devices}")
        _positive("max_batch", self.max_batch)
        for name, value in self.max_batch_per_cell.items():
            _positive(f"max_batch_per_cell[{name!r}]", value)
        _positive("max_num_live_requests", self.max_num_live_requests)
        _positive("num_slots", self.num_slots)
        _positive("padded_max_batch", self.padded_max_batch)
        if not 0 <= self.padded_timeout_s <= 60:
            raise ValueError(f"padded_timeout_s must be in [0, 60], got {self.padded_timeout_s}")
        if self.num_threads is not None:
            _positive("num_threads", self.num_threads)
        if self.mode == "padded" and self.padded_max_batch > self.max_batch:
            raise ValueError(
                f"padded_max_batch ({self.padded_max_batch}) must not exceed "
                f"max_batch ({self.max_batch})"
            )

    def max_batch_for(self, cell_type: str) -> int:
        """The max batch of a qualified cell type (``model@version/cell``)."""
        per_cell = self.max_batch_per_cell
        if cell_type in per_cell:
            return per_cell[cell_type]
        model_version, _, cell = cell_type.partition("/")
        return per_cell.get(f"{model_version.partition('@')[0]}/{cell}", self.max_batch)


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
