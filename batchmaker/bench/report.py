"""What ``batchmaker bench`` reports: its load points, its report, and the table it prints.

``RunResult`` is one load point of one mode, filled from an open-loop replay
(``openloop.Replay``) and checked against the idle reference (``reference``); the
end-to-end benchmark (``e2e``) reports its load points the same way. ``BenchReport`` is
everything one engine benchmark run measured: written as JSON field by field (its field
names are the JSON's), then summed up by ``print_table``.

Data and formatting only: the runs that fill these are ``engine``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from batchmaker.bench.openloop import Replay
from batchmaker.bench.reference import Fingerprint, compare


@dataclass
class RunResult:
    """One load point of one mode."""

    mode: str
    rate: float
    num_requests: int
    num_completed: int = 0
    num_rejected: int = 0
    num_failed: int = 0
    num_late: int = 0
    overloaded: bool = False
    """Stopped early: more than 1% of requests had already missed the SLO."""
    valid: bool = True
    """Every completed request's outputs matched the idle reference."""
    p50: float = math.inf
    p90: float = math.inf
    p99: float = math.inf
    ttft_p50: float = math.inf
    ttft_p99: float = math.inf
    throughput_rps: float = 0.0
    cell_steps_per_s: float = 0.0
    mean_batch: float = 0.0
    mean_padded_batch: float = 0.0
    mean_steps_per_plan: float = 0.0
    """Timesteps per cell execution: above 1 where plans ran several steps fused."""
    executor_busy_fraction: float = 0.0
    """Saturation: the executor's busy time over the wall time (host work inside the
    executor included, so on a GPU an upper bound on the device's busy fraction)."""
    wall_s: float = 0.0
    mean_batch_per_cell: dict[str, float] = field(default_factory=dict)
    """Real rows per step of each (local) cell type, e.g. ``encoder`` and ``decoder``."""
    mean_padded_batch_per_cell: dict[str, float] = field(default_factory=dict)
    """Rows per step including padding rows, per cell type."""
    num_ties: int = 0
    """Checked requests whose greedy decode took the other branch of a near-tie (the
    best scores equal within float noise): matched up to that step, not after."""

    def meets(self, slo: float) -> bool:
        return (
            not self.overloaded
            and self.num_rejected == 0
            and self.num_failed == 0
            and self.num_completed == self.num_requests
            and self.p99 <= slo
        )

    def check(self, ref: Fingerprint, got: Fingerprint, *, feeds_back: bool) -> None:
        """Counts one request's outputs against the idle reference (``compare``)."""
        verdict = compare(ref, got, feeds_back=feeds_back)
        if verdict == "differ":
            self.valid = False
        elif verdict == "tie":
            self.num_ties += 1

    @classmethod
    def from_replay(cls, mode: str, rep: Replay) -> RunResult:
        """Counts and latency percentiles of one replay; outputs and batches are the caller's."""
        r = cls(
            mode=mode,
            rate=rep.rate,
            num_requests=rep.num_requests,
            num_completed=rep.num_completed,
            num_rejected=rep.num_rejected,
            num_failed=rep.num_failed,
            num_late=rep.num_late,
            overloaded=rep.overloaded,
            throughput_rps=rep.throughput_rps,
            wall_s=rep.wall_s,
        )
        r.p50, r.p90, r.p99 = rep.percentiles((50, 90, 99))
        r.ttft_p50, r.ttft_p99 = rep.percentiles((50, 99), first_output=True)
        return r


@dataclass
class BenchReport:
    """Everything one run measured; written as JSON, a key per field."""

    config: dict[str, object]
    kernel_seconds_at_max_batch: float = 0.0
    """The family's main cell type (chain ``step``, seq2seq ``decoder``, tree ``node``)."""
    kernel_cell_steps_per_s: float = 0.0
    idle: dict[str, float] = field(default_factory=dict)
    slo_s: float = 0.0
    saturation: dict[str, RunResult] = field(default_factory=dict)
    efficiency: dict[str, float] = field(default_factory=dict)
    """Median over rounds of the kernels' time for the saturated cell-steps over the wall
    time, with the kernels timed around each round (for one cell type: saturated
    cell-steps/s over the kernel's)."""
    efficiency_rounds: dict[str, list[float]] = field(default_factory=dict)
    sweeps: dict[str, list[RunResult]] = field(default_factory=dict)
    sustainable_rps: dict[str, float] = field(default_factory=dict)
    half_load: dict[str, RunResult] = field(default_factory=dict)
    """Cellular and padded at half of padded's sustainable rate."""
    padded_load: dict[str, RunResult] = field(default_factory=dict)
    """Cellular and padded at padded's sustainable rate."""
    ratios: dict[str, float] = field(default_factory=dict)
    valid: bool = True
    kernel_seconds_per_cell: dict[str, float] = field(default_factory=dict)
    """Each cell type's fastest isolated forward at its max batch."""
    level_half_load: dict[str, RunResult] = field(default_factory=dict)
    """Trees: cellular and level at half of level's sustainable rate."""
    level_load: dict[str, RunResult] = field(default_factory=dict)
    """Trees: cellular and level at level's sustainable rate."""
    targets: dict[str, dict[str, float | bool]] = field(default_factory=dict)
    """Per baseline: the half-load p50 and sustainable-throughput ratios, their bounds,
    and whether each is met."""


def format_ms(x: float) -> str:
    """Seconds as milliseconds to a tenth, ``inf`` for a latency never reached."""
    return "inf" if not math.isfinite(x) else f"{x * 1e3:.1f}"


def format_batches(batches: dict[str, float]) -> str:
    """``"12.3"`` for one cell type, ``"encoder 4.1 / decoder 20.3"`` for several."""
    if len(batches) == 1:
        return f"{next(iter(batches.values())):5.1f}"
    return " / ".join(f"{c} {b:.1f}" for c, b in batches.items()) or "-"


def print_table(report: BenchReport) -> None:
    print(f"\n{report.config.get('family', 'chain')}: {report.config.get('model')}")
    print("mode           sustainable  sat. cell-steps/s  efficiency  steps/plan  busy  mean batch")
    for key, sat in report.saturation.items():
        rps = report.sustainable_rps.get(key)
        print(
            f"{key:14s} {'' if rps is None else f'{rps:8.1f} r/s':>12s}  "
            f"{sat.cell_steps_per_s:14.0f}  {report.efficiency[key]:10.3f}  "
            f"{sat.mean_steps_per_plan:10.1f}  {sat.executor_busy_fraction:4.2f}  "
            f"{format_batches(sat.mean_batch_per_cell)}"
        )
    for title, load in (
        ("half of padded's sustainable rate", report.half_load),
        ("padded's sustainable rate", report.padded_load),
        ("half of level's sustainable rate", report.level_half_load),
        ("level's sustainable rate", report.level_load),
    ):
        if not load:
            continue
        print(f"\nat {title}:")
        print("mode      rate r/s  p50 ms  p90 ms  p99 ms  ttft p50  req/s  cell-steps/s  batch")
        for mode, r in load.items():
            print(
                f"{mode:9s} {r.rate:8.1f} {format_ms(r.p50):>7s} {format_ms(r.p90):>7s} "
                f"{format_ms(r.p99):>7s} {format_ms(r.ttft_p50):>9s} {r.throughput_rps:6.1f} "
                f"{r.cell_steps_per_s:13.0f} {format_batches(r.mean_batch_per_cell)}"
            )
    print(
        f"\nkernel at max batch: {report.kernel_cell_steps_per_s:.0f} cell-steps/s; idle p99 "
        f"{format_ms(report.idle.get('p99', math.inf))} ms; SLO {format_ms(report.slo_s)} ms"
    )
    for k, v in report.ratios.items():
        print(f"{k}: {v:.3f}")
    for baseline, t in report.targets.items():
        parts = [f"sustainable {t['sustainable_ratio']:.2f} x (>= {t['sustainable_min']}): "]
        parts.append("met" if t["sustainable_met"] else "missed")
        if "half_load_p50_ratio" in t:
            parts.append(
                f"; half-load p50 {t['half_load_p50_ratio']:.2f} x (<= {t['half_load_p50_max']}): "
                + ("met" if t["half_load_p50_met"] else "missed")
            )
        print(f"targets against {baseline}: {''.join(parts)}")
    print(f"valid (every mode matched the idle reference): {report.valid}")
