"""The end of a load test: judging it from the files it left, the report it prints, and
``<prefix>_summary.json``.

The runner (``run``) hands over what it saw of the server (its exit, idleness and RSS);
the rest is read from the CSVs Locust and the locustfile wrote. The judging itself,
thresholds and soak figures, is ``report``'s: the locustfile checks the same thresholds
with the same functions at quit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtest.report import (
    FULL,
    ExitCode,
    MinuteRow,
    SoakFigures,
    StatRow,
    Thresholds,
    Violation,
    check_thresholds,
    exit_code,
    format_table,
    read_requests_csv,
    read_stats_csv,
    soak_figures,
    totals,
)
from loadtest.rss import RssSampler


def conclude(
    args: argparse.Namespace,
    summary: dict[str, Any],
    violations: list[Violation],
    rss: dict[str, float],
    sampler: RssSampler | None,
) -> ExitCode:
    """Judge the run, print the report and write ``<prefix>_summary.json``; returns the
    exit status (``report.exit_code``)."""
    figures = judge(args, summary, violations, rss, sampler)
    print_report(args, summary, violations, figures)
    code = exit_code(violations)
    summary["violations"] = [{"code": int(v.code), "message": v.message} for v in violations]
    summary["exit_code"] = int(code)
    path = Path(f"{args.csv_prefix}_summary.json")
    path.write_text(json.dumps(finite(summary), indent=2, default=str) + "\n")
    print(f"loadtest: summary in {path}")
    return code


def finite(value: Any) -> Any:
    """``value`` with NaN (no data) as ``None``: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def judge(
    args: argparse.Namespace,
    summary: dict[str, Any],
    violations: list[Violation],
    rss: dict[str, float],
    sampler: RssSampler | None,
) -> SoakFigures | None:
    """Read the CSVs into ``summary`` and add every broken threshold to ``violations``."""
    # The locustfile's final table; Locust's own _stats.csv may miss the last second.
    stats_path = Path(f"{args.csv_prefix}_stats_final.csv")
    if not stats_path.exists():
        violations.append(Violation(ExitCode.LOCUST, f"Locust wrote no {stats_path}"))
        return None
    rows = read_stats_csv(stats_path)
    summary["stats"] = [asdict(r) for r in rows]
    limits = Thresholds(args.max_fail_ratio, args.max_p99_ms, args.max_ttft_p99_ms)
    summary["thresholds"] = asdict(limits)
    violations.extend(check_thresholds(rows, limits))
    exceptions = Path(f"{args.csv_prefix}_exceptions.csv")
    if exceptions.exists() and len(exceptions.read_text().splitlines()) > 1:
        violations.append(
            Violation(ExitCode.LOCUST, f"the locustfile raised exceptions: see {exceptions}")
        )
    info_path = Path(f"{args.csv_prefix}_requests.json")
    if info_path.exists():
        summary["locust"] = json.loads(info_path.read_text())
    requests_path = Path(f"{args.csv_prefix}_requests.csv")
    if not requests_path.exists():
        return None
    figures = soak_figures(read_requests_csv(requests_path), args.window)
    if sampler is not None and rss:
        # The windows count from the first request sent, the samples from before Locust
        # started: line them up on the wall clock.
        first_end = figures.t0 + figures.first.end_s
        rss["after_first_window"] = sampler.at_time(first_end) if args.soak else math.nan
        rss["max"] = max(
            [rss.get("start", 0.0), rss.get("end", 0.0)] + [mib for _, mib in sampler.samples]
        )
        base = rss["after_first_window"] if args.soak else rss.get("start", math.nan)
        rss["growth"] = rss.get("end", math.nan) - base
        figures.rss_mib = {k: round(v, 1) for k, v in rss.items()}
        figures.rss_samples = list(sampler.samples)
        summary["rss_started_at"] = sampler.started_at
        offset = figures.t0 - sampler.started_at  # the windows' time 0 on the samples' clock
        figures.minutes = minute_rss(figures.minutes, sampler.samples, offset)
    summary["figures"] = figures.to_json()
    if args.soak:
        growth = figures.rss_mib.get("growth", math.nan)
        if args.max_rss_growth_mib is not None and growth > args.max_rss_growth_mib:
            violations.append(
                Violation(
                    ExitCode.SOAK,
                    f"RSS grew {growth:.1f} MiB after the first window, over "
                    f"--max-rss-growth-mib {args.max_rss_growth_mib:g}",
                )
            )
        if args.max_p99_drift is not None and figures.p99_drift > args.max_p99_drift:
            violations.append(
                Violation(
                    ExitCode.SOAK,
                    f"p99 drifted x{figures.p99_drift:.2f} from the first window to the last, "
                    f"over --max-p99-drift {args.max_p99_drift:g}",
                )
            )
    return figures


def print_report(
    args: argparse.Namespace,
    summary: dict[str, Any],
    violations: list[Violation],
    figures: SoakFigures | None,
) -> None:
    rows = [StatRow(**r) for r in summary.get("stats", [])]
    print()
    if rows:
        print(format_table(rows))
        count, failures = totals(rows, FULL)
        print(f"full requests: {count}, failures {failures} ({failures / max(1, count):.2%})")
    if figures is not None and figures.requests:
        line = f"rate achieved: {figures.rate_achieved:.2f} req/s (offered {args.rate:g})"
        info = summary.get("locust", {})
        if info.get("late_sends"):
            line += f"; {info['late_sends']} of {info['sends']} sends late"
        print(line)
    if args.soak and figures is not None:
        f = figures
        total = sum(n["requests"] for n in f.readers.values()) or f.requests
        print(
            f"soak: {total} requests in {f.duration_s:.0f} s, {f.failures} failures "
            f"{f.errors or ''}\n"
            f"  p99 first {f.first.end_s - f.first.start_s:.0f} s: {f.first.p99_ms:.1f} ms "
            f"({f.first.count} requests); last: {f.last.p99_ms:.1f} ms ({f.last.count}); "
            f"drift x{f.p99_drift:.2f}"
        )
        if len(f.windows) > 2:
            p99s = [w.p99_ms for w in f.windows if w.count]
            print(
                f"  p99 of each window (ms): {' '.join(f'{p:.0f}' for p in p99s)}; "
                f"min {min(p99s):.0f}, median {sorted(p99s)[len(p99s) // 2]:.0f}, "
                f"max {max(p99s):.0f}"
            )
        if any(n["requests"] for k, n in f.readers.items() if k != "normal"):
            print(
                "  readers: "
                + ", ".join(
                    f"{k} {n['requests']} ({n['failures']} failed)" for k, n in f.readers.items()
                )
            )
        info = summary.get("locust", {})
        if info.get("cancelled") or info.get("finished_before_cancel"):
            server = summary.get("server_outcomes", {}).get("CANCELLED", math.nan)
            print(
                f"  cancels: {info['cancelled']} ended by the client's cancel, "
                f"{info['finished_before_cancel']} finished first; the server counted "
                f"{server:.0f} CANCELLED"
            )
        if len(f.minutes) > 1:
            print(minute_table(f))
        if f.rss_mib:
            r = f.rss_mib
            print(
                f"  server RSS MiB: start {r.get('start')}, after the first window "
                f"{r.get('after_first_window')}, end {r.get('end')}, max {r.get('max')}; "
                f"growth {r.get('growth')}"
            )
    if violations:
        for v in violations:
            print(f"loadtest: FAIL ({int(v.code)} {v.code.name}): {v.message}")
    else:
        print("loadtest: PASS")


def minute_table(f: SoakFigures) -> str:
    """The soak minute by minute: the normal readers' p50 and p99 and the p99 over the
    first window's (the drift), the slow readers' p99, cancellations, failures of every
    reader, and the mean and largest of the server's RSS samples within the window."""
    first = f.minutes[0].normal.p99_ms
    head = (
        f"  {'window':>9} {'normal':>7} {'p50 ms':>7} {'p99 ms':>7} {'x first':>7} "
        f"{'slow':>5} {'slow p99':>8} {'cancel':>6} {'failed':>6} {'RSS MiB':>8} {'max':>6}"
    )
    lines = [head]
    for m in f.minutes:
        drift = m.normal.p99_ms / first if first and first > 0 else math.nan
        lines.append(
            f"  {m.start_s:>4.0f}-{m.end_s:<4.0f} {m.normal.count:>7} {m.normal.p50_ms:>7.0f} "
            f"{m.normal.p99_ms:>7.0f} {drift:>7.2f} {m.slow.count:>5} {m.slow.p99_ms:>8.0f} "
            f"{m.cancelled:>6} {m.failures:>6} {m.rss_mib:>8.1f} {m.rss_max_mib:>6.0f}"
        )
    return "\n".join(lines)


def minute_rss(
    minutes: list[MinuteRow], samples: list[tuple[float, float]], offset: float
) -> list[MinuteRow]:
    """``minutes`` with the mean and largest RSS sample within each; ``samples`` are
    (seconds, MiB) on a clock where the windows start at ``offset``."""
    out = []
    for m in minutes:
        a, b = offset + m.start_s, offset + m.end_s
        inside = [mib for t, mib in samples if a <= t < b] or [math.nan]
        mean = sum(inside) / len(inside)
        out.append(dataclasses.replace(m, rss_mib=mean, rss_max_mib=max(inside)))
    return out
