"""The planner's PNG: cost and p99 against traffic, instance against serverless.

matplotlib (the ``plots`` extra) is imported inside ``plot_plan`` with the Agg backend,
so nothing that only plans needs it and nothing here needs a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchmaker.sim.plan import PlanResult

DPI = 100


def plot_plan(result: PlanResult, path: Path) -> Path:
    """Two panels over the break-even grid: $/month (log-log) with the crossing, and p99
    with the SLO; the planned traffic is the dotted line."""
    be = result.break_even
    if be is None:
        raise ValueError(
            "--plot: the plot compares instance with serverless; give --hardware for at "
            "least one instance type that meets the SLO and one serverless backend"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [p.requests_per_day for p in be.points]
    fig, (cost, p99) = plt.subplots(2, 1, sharex=True, figsize=(7, 6.5))
    cost.loglog(x, [p.instance_usd_per_month for p in be.points], "o-", label="cheapest instance")
    cost.loglog(x, [p.serverless_usd_per_month for p in be.points], "s-", label="serverless")
    cost.set_ylabel("$ per month")
    inst_ms = [1e3 * p.instance_p99_s for p in be.points]
    p99.loglog(x, inst_ms, "o-", label="cheapest instance")
    p99.loglog(x, [1e3 * p.serverless_p99_s for p in be.points], "s-", label="serverless")
    p99.axhline(1e3 * result.slo_p99_s, color="red", lw=1, label="SLO")
    p99.set_ylabel("p99 latency, ms")
    p99.set_xlabel("requests per day")
    for ax in (cost, p99):
        ax.axvline(result.requests_per_day, color="grey", ls=":", label="planned traffic")
        if be.requests_per_day is not None:
            ax.axvline(be.requests_per_day, color="black", ls="--", lw=1, label="break-even")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    cost.set_title(
        f"{result.model}: instance against serverless, p99 <= {1e3 * result.slo_p99_s:g} ms"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
