"""PNG plots of an end-to-end benchmark report (``batchmaker bench --e2e``), and of the
simulator's accuracy (``batchmaker bench-sim --plot``, ``plot_simcheck``).

Drawn from the report as written to JSON, so a recorded run can be re-plotted
(``--from-json``) without running it again. matplotlib (the ``plots`` extra) is
imported inside ``plot_e2e`` and ``plot_simcheck`` with the Agg backend: nothing that
serves imports this module, and nothing here needs a display.

Four figures, one PNG each:

- ``latency-vs-load``: p50 and p99 latency against offered load, one colour per mode,
  with the SLO; a load point stopped early as overloaded is an ``x`` on the SLO line
  (its own p99 counts only the requests that finished, so it would flatter the mode);
- ``throughput-vs-load``: achieved against offered throughput, and the mean batch;
- ``timeseries``: batch size, requests in the server and ready-queue depth over time,
  for cellular and the baseline at that baseline's sustainable load;
- ``latency-cdf``: each mode's latency CDF, at each comparison load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLORS = {"cellular": "#1f77b4", "padded": "#ff7f0e", "none": "#2ca02c", "level": "#9467bd"}
DPI = 100
"""About 50-100 KB a figure: small enough to commit."""


def plot_e2e(report: Mapping[str, Any], out_dir: Path, prefix: str) -> list[Path]:
    """Every figure of ``report`` into ``out_dir`` as ``PREFIX-NAME.png``; returns the paths
    (a figure whose data the report lacks, e.g. time series without metrics, is skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {
        "latency-vs-load": _latency_vs_load,
        "throughput-vs-load": _throughput_vs_load,
        "timeseries": _timeseries,
        "latency-cdf": _latency_cdf,
    }
    paths = []
    for name, draw in figures.items():
        fig = draw(report)
        if fig is None:
            continue
        path = out_dir / f"{prefix}-{name}.png"
        _save(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_simcheck(
    runs: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    capacity_tolerance: float,
    p99_tolerance: float,
    title: str = "",
) -> Path:
    """``bench-sim``'s runs as predicted over measured, one panel per family: capacity and
    the p99 at each compared load, a dot per run, a bar at the median, and the target
    band around 1 shaded (the issue's: capacity within ``capacity_tolerance``, p99 within
    ``p99_tolerance``). One figure for every family, so that where the model misses
    shows at a glance, and single runs are drawn beside their median because on a shared
    machine the runs differ more than the medians do."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in runs))
    if not families:
        raise ValueError("no bench-sim runs to plot")
    fig, axes = plt.subplots(
        1,
        len(families),
        figsize=(1.0 + 2.6 * len(families), 4.2),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for ax, family in zip(axes[0], families, strict=True):
        mine = [r for r in runs if r["family"] == family]
        loads = [p["load"] for p in mine[0]["points"]]
        columns = [("capacity", [r["capacity_ratio"] for r in mine], capacity_tolerance)]
        columns += [
            (f"p99 at {load:g}", [r["p99_ratios"][i] for r in mine], p99_tolerance)
            for i, load in enumerate(loads)
        ]
        for x, (_, values, tolerance) in enumerate(columns):
            ax.fill_between(
                [x - 0.4, x + 0.4], 1 - tolerance, 1 + tolerance, color="#2ca02c", alpha=0.15, lw=0
            )
            ax.plot([x] * len(values), values, "o", color="#1f77b4", ms=5, alpha=0.7)
            median = float(np.median(values))
            ax.plot([x - 0.3, x + 0.3], [median] * 2, "-", color="#d62728", lw=2.5)
        ax.axhline(1.0, color="0.4", lw=1, ls=":")
        ax.set_xticks(range(len(columns)), [c[0] for c in columns], rotation=30, ha="right")
        ax.set_title(f"{family} ({len(mine)} run{'s' if len(mine) > 1 else ''})", fontsize=10)
        ax.grid(True, axis="y", alpha=0.25)
    axes[0][0].set_ylabel("predicted / measured")
    fig.suptitle(
        title
        or f"The simulator against the engine: dots are runs, bars medians, green the target "
        f"(capacity ±{capacity_tolerance:.0%}, p99 ±{p99_tolerance:.0%})",
        fontsize=9,
    )
    _save(fig, path)
    plt.close(fig)
    return path


def _save(fig: Figure, path: Path) -> None:
    """A 256-colour PNG: a third of the size of matplotlib's RGBA, the same to the eye."""
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    fig.savefig(buf, dpi=DPI, format="png")
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256).save(path, optimize=True)


def _points(runs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """A sweep's load points by rate; where a point was retried, its last attempt."""
    by_rate = {r["rate"]: r for r in runs}
    return [by_rate[k] for k in sorted(by_rate)]


def _subtitle(report: Mapping[str, Any]) -> str:
    trace = report["config"]["trace"]
    return (
        f"{report['config']['model']} over gRPC, {trace['arrival']} arrivals, "
        f"{trace['requests']}-request trace (lengths median {trace['length_median']:.0f}, "
        f"p99 {trace['length_p99']:.0f})"
    )


def _figure(rows: int = 1, *, height: float = 4.6, sharex: bool = False) -> tuple[Figure, Any]:
    import matplotlib.pyplot as plt

    return plt.subplots(rows, 1, figsize=(7.5, height), sharex=sharex, layout="constrained")


def _latency_vs_load(report: Mapping[str, Any]) -> Figure | None:
    slo_ms = report["slo_s"] * 1e3
    fig, ax = _figure()
    for mode, runs in report["sweeps"].items():
        color = COLORS.get(mode)
        pts = _points(runs)
        full = [r for r in pts if not r["overloaded"] and math.isfinite(r["p99"])]
        x = [r["rate"] for r in full]
        rate = report["sustainable_rps"].get(mode, 0.0)
        label = f"{mode} (sustains {rate:.1f} req/s)"
        ax.plot(x, [r["p99"] * 1e3 for r in full], "-o", color=color, ms=4, label=label)
        ax.plot(x, [r["p50"] * 1e3 for r in full], "--o", color=color, ms=3, mfc="white")
        stopped = [r["rate"] for r in pts if r["overloaded"]]
        ax.plot(stopped, [slo_ms] * len(stopped), "x", color=color, ms=9, mew=2)
    ax.axhline(slo_ms, color="0.4", lw=1, ls=":", label=f"SLO: p99 {slo_ms:.0f} ms")
    ax.set(xscale="log", yscale="log", xlabel="offered load (requests/s)", ylabel="latency (ms)")
    ax.set_title("p99 (solid) and p50 (dashed) latency; x: stopped early, overloaded", fontsize=10)
    fig.suptitle(_subtitle(report), fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="best")
    return fig


def _throughput_vs_load(report: Mapping[str, Any]) -> Figure | None:
    fig, (top, bottom) = _figure(2, height=6.4, sharex=True)
    lo, hi = math.inf, 0.0
    for mode, runs in report["sweeps"].items():
        color = COLORS.get(mode)
        full = [r for r in _points(runs) if not r["overloaded"]]
        x = [r["rate"] for r in full]
        lo, hi = min([lo, *x]), max([hi, *x])
        top.plot(x, [r["throughput_rps"] for r in full], "-o", color=color, ms=4, label=mode)
        bottom.plot(x, [r["mean_batch"] for r in full], "-o", color=color, ms=4, label=mode)
    if hi > 0:
        top.plot([lo, hi], [lo, hi], ":", color="0.5", lw=1, label="achieved = offered")
    top.set(xscale="log", yscale="log", ylabel="achieved (requests/s)")
    top.set_title("Throughput against offered load (points that ran to the end)", fontsize=10)
    bottom.set(
        xscale="log", xlabel="offered load (requests/s)", ylabel="mean batch (rows per step)"
    )
    for ax in (top, bottom):
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(_subtitle(report), fontsize=9)
    return fig


def _timeseries_comparison(report: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Padded's load when compared there (the baseline cellular is meant to beat), else
    the highest load compared at with more than one mode."""
    comps: list[Mapping[str, Any]] = [
        c for c in report["comparisons"] if any(c["timeseries"].values())
    ]
    for c in comps:
        if "padded" in c["baselines"]:
            return c
    comps = [c for c in comps if len(c["timeseries"]) > 1] or comps
    return max(comps, key=lambda c: float(c["rate"])) if comps else None


def _timeseries(report: Mapping[str, Any]) -> Figure | None:
    comp = _timeseries_comparison(report)
    if comp is None:
        return None
    fig, axes = _figure(3, height=7.6, sharex=True)
    batch, live, ready = axes
    shown = ("cellular", *comp["baselines"])
    for mode, rows in comp["timeseries"].items():
        if not rows or mode not in shown:
            continue
        color = COLORS.get(mode)
        t = [r["t_s"] for r in rows]
        batch.plot(t, [r["mean_batch"] for r in rows], color=color, lw=1, label=mode)
        live.plot(
            t, [r["requests_running"] for r in rows], color=color, lw=1, label=f"{mode}: running"
        )
        waiting = [r["requests_waiting"] for r in rows]
        live.plot(t, waiting, color=color, lw=1, ls="--", label=f"{mode}: waiting to start")
        ready.plot(t, [r["ready_queue_depth"] for r in rows], color=color, lw=1, label=mode)
    batch.set(ylabel="mean batch\n(real rows per step)")
    batch.set_title(
        f"Every {report['config']['sample_interval_s'] * 1e3:.0f} ms at {_load_name(comp)} "
        "sustainable load, "
        f"{comp['rate']:.1f} requests/s",
        fontsize=10,
    )
    live.set(ylabel="requests in\nthe server")
    ready.set(ylabel="ready nodes\nqueued", xlabel="time since the first arrival (s)")
    for ax in axes:
        ax.grid(True, alpha=0.25)
        ax.legend(fontsize=7, loc="upper right", ncol=2)
    fig.suptitle(_subtitle(report), fontsize=9)
    return fig


def _load_name(comp: Mapping[str, Any]) -> str:
    return " and ".join(f"{b}'s" for b in comp["baselines"])


def _latency_cdf(report: Mapping[str, Any]) -> Figure | None:
    comps = [c for c in report["comparisons"] if c["latencies_ms"]]
    if not comps:
        return None
    fig, axes = _figure(len(comps), height=3.2 * len(comps) + 0.6)
    axes = [axes] if len(comps) == 1 else list(axes)
    slo_ms = report["slo_s"] * 1e3
    for ax, c in zip(axes, comps, strict=True):
        _cdf_panel(ax, c, slo_ms)
    axes[-1].set_xlabel("latency, arrival to last output (ms)")
    fig.suptitle(_subtitle(report), fontsize=9)
    return fig


def _cdf_panel(ax: Axes, comp: Mapping[str, Any], slo_ms: float) -> None:
    for mode, lat in comp["latencies_ms"].items():
        xs = sorted(lat)
        if not xs:
            continue
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        r = comp["runs"][mode]
        label = f"{mode}: p50 {r['p50'] * 1e3:.0f} ms, p99 {r['p99'] * 1e3:.0f} ms"
        ax.step(xs, ys, where="post", color=COLORS.get(mode), lw=1.2, label=label)
    ax.axvline(slo_ms, color="0.4", lw=1, ls=":", label=f"SLO {slo_ms:.0f} ms")
    ax.set(xscale="log", ylabel="fraction of requests", ylim=(0, 1.01))
    ax.set_title(
        f"At {_load_name(comp)} sustainable load, {comp['rate']:.1f} requests/s", fontsize=10
    )
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="lower right")
