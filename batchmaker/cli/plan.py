"""``batchmaker plan``: the cheapest deployment that meets a p99 target, from step-cost
profiles, a prices file and traffic (``batchmaker/sim/plan.py`` does the planning).

Building the parser imports nothing heavy; ``run_plan`` imports the planner, the trace
module (numpy only) and, for ``--plot``, matplotlib. Never torch: a plan needs no model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchmaker.cli import flags

if TYPE_CHECKING:
    from batchmaker.sim.plan import PlanResult


def _hardware(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(
            f"expected NAME=PROFILE (e.g. ml.c5.xlarge=profiles/chain-cpu.json), got {text!r}"
        )
    return name, Path(path)


def _cold_start(text: str) -> float | None:
    if text == "prices":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or `prices`, got {text!r}") from None


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "plan",
        parents=[common],
        help="the cheapest deployment (always-on, serverless, or a mix) that meets a p99 SLO",
    )
    p.add_argument("--slo-p99-ms", type=float, required=True, help="the p99 latency target")
    p.add_argument(
        "--hardware",
        type=_hardware,
        action="append",
        required=True,
        metavar="NAME=PROFILE",
        help="an instance type or serverless backend of the prices file, and the step-cost "
        "profile (`batchmaker profile`) of the model on it; repeatable",
    )
    p.add_argument("--prices", type=Path, help="prices JSON (default: the shipped AWS one)")
    p.add_argument("--model", help="the model to plan; must be the profiles' `model`")
    load = p.add_mutually_exclusive_group(required=True)
    load.add_argument("--requests-per-day", type=float, help="traffic over a day")
    load.add_argument("--rate", type=float, help="mean traffic, requests/s")
    p.add_argument(
        "--daily-profile",
        default="flat",
        metavar="flat|diurnal|FILE",
        help="relative traffic per hour: a built-in, or a JSON list of 24 weights",
    )
    p.add_argument("--trace", type=Path, help="a recorded trace (default: one is generated)")
    flags.add_generated_traffic_flags(p)
    p.add_argument(
        "--cold-start-s",
        type=_cold_start,
        default=1.5,
        metavar="SECONDS|prices",
        help="a serverless container's cold start: this server's, measured "
        "(docs/bench/coldstart-cpu.json); `prices`: each backend's figure in the prices file",
    )
    p.add_argument("--sim-requests", type=int, default=2000, help="requests per simulated window")
    p.add_argument("--max-replicas", type=int, default=64, help="the most instances tried")
    p.add_argument("--out", type=Path, help="write the plan as JSON here")
    p.add_argument(
        "--json", action="store_true", help="the plan as JSON on stdout (the table on stderr)"
    )
    p.add_argument("--plot", type=Path, help="a PNG of cost and p99 against traffic")


def run_plan(args: argparse.Namespace) -> int:
    from batchmaker.bench.trace import generate
    from batchmaker.sim.plan import DAILY_PROFILES, Traffic, check_model, check_weights, plan
    from batchmaker.sim.prices import SHIPPED, Prices, PricesError
    from batchmaker.sim.profile import ProfileError, StepProfile
    from batchmaker.sim.simulator import requests_from_trace

    if args.sim_requests < 10:
        raise ValueError(f"--sim-requests: must be >= 10, got {args.sim_requests}")
    rpd = args.requests_per_day if args.rate is None else args.rate * 86_400
    flag = "--rate" if args.requests_per_day is None else "--requests-per-day"
    if not rpd > 0:
        raise ValueError(f"{flag}: must be > 0, got {args.rate or args.requests_per_day}")
    flags.check_generated_traffic(args)
    names = [name for name, _ in args.hardware]
    if len(set(names)) < len(names):
        raise ValueError(f"--hardware: a name given twice in {names}")
    loaded: dict[Path, StepProfile] = {}
    for name, path in args.hardware:
        try:
            loaded[path] = loaded.get(path) or StepProfile.load(path)
        except ProfileError as exc:
            raise ValueError(f"--hardware {name}: {exc}") from None
    profiles = {name: loaded[path] for name, path in args.hardware}
    check_model(profiles, args.model)
    family = next(iter(profiles.values())).unfold.family
    try:
        prices = Prices.load(args.prices or SHIPPED)
    except PricesError as exc:
        raise ValueError(f"--prices: {exc}") from None
    weights = DAILY_PROFILES.get(args.daily_profile) or _weights_file(
        Path(args.daily_profile), check_weights
    )
    n = args.sim_requests
    if args.trace:
        trace = flags.load_trace(args.trace, family)
    else:
        trace = generate(
            family, n, seed=args.seed, arrival=args.arrival, burstiness=args.burstiness
        )
    traffic = Traffic(lambda rate: requests_from_trace(trace, rate, n), rpd, weights)
    result = plan(
        profiles,
        prices,
        args.slo_p99_ms / 1000,
        traffic,
        cold_start_s=args.cold_start_s,
        model=args.model,
        max_replicas=args.max_replicas,
    )
    doc = {
        **result.to_json(),
        "inputs": {
            "hardware": {
                name: {"profile": str(path), "device": profiles[name].device}
                for name, path in args.hardware
            },
            "prices": str(args.prices or SHIPPED),
            "region": prices.region,
            "hours_per_month": prices.hours_per_month,
            "trace": str(args.trace) if args.trace else None,
            "generated": None
            if args.trace
            else {"arrival": args.arrival, "burstiness": args.burstiness, "seed": args.seed},
            "daily_profile": args.daily_profile,
            "sim_requests": n,
        },
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    if args.plot:
        from batchmaker.sim.plot import plot_plan

        plot_plan(result, args.plot)
    if args.json:
        print(json.dumps(doc, indent=1))
    print_plan(result, sys.stderr if args.json else sys.stdout)
    return 0


def _weights_file(path: Path, check: Any) -> tuple[float, ...]:
    where = f"--daily-profile: {path}"
    try:
        d = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{where}: not flat, diurnal or a readable file: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not JSON: {exc}") from None
    weights = d.get("weights") if isinstance(d, dict) else d
    return check(weights, where)  # type: ignore[no-any-return]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None or seconds != seconds else f"{1e3 * seconds:.1f}"


def print_plan(r: PlanResult, out: Any) -> None:
    """The plan as a table, for people; the JSON has every figure."""
    hourly = "flat" if len(set(r.hourly)) == 1 else "hourly profile"
    print(
        f"plan for {r.model}: p99 <= {1e3 * r.slo_p99_s:g} ms at {r.requests_per_day:,.0f} "
        f"requests/day ({hourly}; mean {r.mean_rps:.3g}/s, peak hour {r.peak_rps:.3g}/s)\n",
        file=out,
    )
    rows: list[tuple[str, ...]] = [
        ("option", "config", "p99 ms", "capacity/s", "headroom", "$/month", "$/M req", "SLO")
    ]
    for o in r.options:
        c = o.config
        if o.kind == "serverless":
            config = f"{c['memory_mb']} MB, cold start {c['cold_start_s']:g} s"
        else:
            batch = "/".join(str(b) for b in c["max_batch"].values())
            config = f"batch {batch}, {c['max_steps_per_plan']} steps/plan"
            if o.kind == "mix":
                config += f", live <= {c['max_live']}"
        extra = []
        if o.spill_fraction is not None:
            extra.append(f"{100 * o.spill_fraction:.1f}% spill")
        if o.cold_fraction is not None:
            extra.append(f"{100 * o.cold_fraction:.1f}% cold")
        rows.append(
            (
                o.name,
                config,
                _ms(o.p99_s),
                "-" if o.capacity_rps is None else f"{o.capacity_rps:.3g}",
                "-" if o.headroom is None else f"{o.headroom:,.1f}x",
                f"{o.usd_per_month:,.2f}",
                f"{o.usd_per_million:,.2f}",
                ("yes" if o.meets_slo else "no") + (f" ({', '.join(extra)})" if extra else ""),
            )
        )
    _table(rows, out, left=(0, 1, 7))
    print(file=out)
    if r.best is not None:
        print(
            f"cheapest that meets the SLO: {r.best.name}, ${r.best.usd_per_month:,.2f} a month "
            f"(${r.best.usd_per_million:,.2f} per million requests)",
            file=out,
        )
    else:
        print(
            f"INFEASIBLE: no option meets p99 <= {1e3 * r.slo_p99_s:g} ms; the lowest p99 is "
            f"{_ms(r.best_p99_s)} ms ({r.best_p99_option})",
            file=out,
        )
    be = r.break_even
    if be is not None:
        print("\nbreak-even, cheapest instance against cheapest serverless:", file=out)
        rows = [
            ("requests/day", "instance", "$/month", "p99 ms", "serverless", "$/month", "p99 ms")
        ]
        rows += [
            (
                f"{p.requests_per_day:,.0f}",
                p.instance,
                f"{p.instance_usd_per_month:,.2f}",
                _ms(p.instance_p99_s),
                p.serverless,
                f"{p.serverless_usd_per_month:,.2f}",
                _ms(p.serverless_p99_s),
            )
            for p in be.points
        ]
        _table(rows, out, left=(1, 4))
        if be.requests_per_day is None:
            print("the cost lines do not cross on this grid", file=out)
        else:
            print(
                f"serverless is cheaper below about {be.requests_per_day:,.0f} requests/day",
                file=out,
            )
    for note in r.notes:
        print(f"note: {note}", file=out)


def _table(rows: list[tuple[str, ...]], out: Any, left: tuple[int, ...]) -> None:
    """Text columns (``left``) flush left, numbers flush right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip(), file=out)
