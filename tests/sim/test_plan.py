"""The planner on cases computable by hand.

The hardware is a synthetic profile whose every plan costs exactly 1 ms whatever its rows
and steps, with a max batch of 1: a request of at most 32 tokens is one 1 ms plan (plans
run up to 32 steps), and one replica serves one request at a time. Traffic is chains of
10 tokens arriving evenly, ``i / rate``. So one replica keeps up to 1,000 requests/s with
every latency exactly 1 ms, and past that request ``i`` waits for the ``i`` before it.

The prices are made up: an instance ``box`` at $1 an hour ($720 a 30-day month), a
serverless backend ``fn`` at $0.0002 a request plus $0.04 a GB-second at 1 GB, so a warm
1 ms request costs $0.00024.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from sim_factories import chain_profile, chains, flat_grid

from batchmaker.sim.plan import (
    DIURNAL,
    PlanError,
    Traffic,
    check_trace,
    check_weights,
    plan,
    quantile,
    simulate_serverless,
)
from batchmaker.sim.prices import Prices, ServerlessPrice

MS = 0.001
DAY = 86_400
PER_REQUEST = 0.0002 + 1.0 * 0.001 * 0.04  # a warm 1 ms request on fn


def prices(**fn: Any) -> Prices:
    entry = {
        "usd_per_gb_second": 0.04,
        "usd_per_request": 0.0002,
        "memory_mb": 1024,
        "min_memory_mb": 128,
        "max_memory_mb": 2048,
        "billing_ms": 1,
        "keep_warm_s": 1e6,
        "bills_cold_start": False,
        "invocation_overhead_s": 0.0,
        "cold_start_s": 0.5,
        "source": "test",
        "date": "2026-12-03",
    }
    entry.update(fn)
    box = {"usd_per_hour": 1.0, "vcpus": 1, "memory_gib": 1, "accelerator": ""}
    return Prices.from_json(
        {
            "version": 1,
            "currency": "USD",
            "region": "test",
            "hours_per_month": 720,
            "instances": {"box": {**box, "source": "test", "date": "2026-12-03"}},
            "serverless": {"fn": entry},
        }
    )


def even(n: int = 200, length: int = 10) -> Any:
    """``requests_at``: ``n`` chains of ``length`` tokens, evenly spaced at the rate."""
    return lambda rate: chains([i / rate for i in range(n)], [length] * n)


PROFILE = chain_profile(flat_grid(1 * MS), max_batch=1)


def by_kind(result: Any) -> dict[str, Any]:
    return {o.kind: o for o in result.options}


# -- the pieces ---------------------------------------------------------------------------


def test_p99_is_the_value_99_percent_of_requests_meet():
    assert quantile([(np.arange(1.0, 101.0), 1.0)]) == 99.0
    # Weighted: 99 parts of 1 ms and 1 part of 1 s: 99% meet 1 ms...
    assert quantile([(np.array([0.001]), 99.0), (np.array([1.0]), 1.0)]) == 0.001
    # ...but with 2 parts of 1 s, 1 ms is only 98%.
    assert quantile([(np.array([0.001]), 98.0), (np.array([1.0]), 2.0)]) == 1.0


def fn_price(**kw: Any) -> ServerlessPrice:
    return dataclasses.replace(prices().serverless["fn"], **kw)


def test_serverless_pool_cold_warm_and_keep_warm():
    # A cold start at 0 (busy until 1.1 s); the request at 0.5 finds it busy: another cold.
    # At 20 s both have been idle 18.4 s or more: gone with a 10 s keep-warm, kept with 30.
    price = fn_price(keep_warm_s=10.0)
    run = simulate_serverless([0.0, 0.5, 20.0], [0.1] * 3, price, 1.0, warm=False)
    assert run.cold.tolist() == [True, True, True]
    assert run.latency == pytest.approx([1.1, 1.1, 1.1])
    assert run.billed_s == pytest.approx([0.1, 0.1, 0.1])  # the cold start is not billed
    kept = simulate_serverless(
        [0.0, 0.5, 20.0], [0.1] * 3, fn_price(keep_warm_s=30.0), 1.0, warm=False
    )
    assert kept.cold.tolist() == [True, True, False]
    assert kept.latency == pytest.approx([1.1, 1.1, 0.1])
    billed = simulate_serverless([0.0], [0.1], fn_price(bills_cold_start=True), 1.0, warm=False)
    assert billed.billed_s == pytest.approx([1.1])


def test_a_warm_pool_starts_as_the_traffic_leaves_it():
    # One request a second, 0.1 s each: after the first, one container serves them all.
    arrivals, service = [float(i) for i in range(10)], [0.1] * 10
    cold = simulate_serverless(arrivals, service, fn_price(), 0.5, warm=False)
    assert cold.cold.sum() == 1
    warm = simulate_serverless(arrivals, service, fn_price(), 0.5)
    assert warm.cold.sum() == 0
    assert warm.latency == pytest.approx([0.1] * 10)
    # A window shorter than a cold start (ten requests in 9 ms, 1 ms each, 0.5 s to start)
    # still reaches the steady pool: ten containers, all warm.
    burst = simulate_serverless([i * MS for i in range(10)], [MS] * 10, fn_price(), 0.5)
    assert burst.cold.sum() == 0


def test_traffic_over_the_day():
    t = Traffic(even(), 86_400.0, DIURNAL)
    hours = t.per_hour()
    assert sum(n for _, n in hours) == pytest.approx(86_400.0)
    assert t.mean_rate == pytest.approx(1.0)
    assert t.peak_rate == pytest.approx(max(DIURNAL) / np.mean(DIURNAL))
    assert max(DIURNAL) / np.mean(DIURNAL) == pytest.approx(1.6, abs=0.01)
    with pytest.raises(PlanError, match="24 numbers"):
        check_weights([1.0] * 23)
    with pytest.raises(PlanError, match="not all 0"):
        check_weights([0.0] * 24)
    with pytest.raises(PlanError, match="requests per day"):
        Traffic(even(), 0.0)


# -- always-on ----------------------------------------------------------------------------


def test_always_on_takes_the_fewest_replicas_that_keep_up_and_prices_them():
    # 2,500 requests/s, 1,000/s a replica: 3 replicas, each taking every third request
    # (the least loaded), so every latency is 1 ms. Two would queue without end.
    result = plan({"box": PROFILE}, prices(), 5 * MS, Traffic(even(), 2500 * DAY))
    (o,) = result.options
    assert (o.kind, o.replicas) == ("always-on", 3)
    assert o.p99_s == pytest.approx(1 * MS)
    assert o.config == {"max_batch": {"lstm": 1}, "max_steps_per_plan": 32}
    assert o.usd_per_month == pytest.approx(3 * 720.0)
    assert o.usd_per_million == pytest.approx(3 * 720.0 / (2500 * DAY * 30) * 1e6)
    assert o.meets_slo
    assert result.best == o


def test_capacity_is_the_highest_rate_that_meets_the_slo():
    # One replica: past 1,000/s request i ends at (i + 2) ms and arrived at i / r (each
    # request is one 1 ms plan, and the first to arrive during a plan runs one step alone
    # and then the rest: the scheduler measures a one-step plan once, scheduler/cellular.py).
    # Of 200 requests the p99 is the 198th (i = 197): 0.199 - 197 / r <= 0.005 until
    # r = 197 / 0.194 = 1015.5/s. The bisection stops within 2% below it.
    result = plan({"box": PROFILE}, prices(), 5 * MS, Traffic(even(), 500 * DAY))
    (o,) = result.options
    assert o.replicas == 1
    assert 1015.5 / 1.02 <= o.capacity_rps <= 1015.5
    assert o.headroom == pytest.approx(o.capacity_rps / 500)


def test_capacity_never_exceeds_the_profiles_best_throughput():
    # With a 20 s SLO the 200-request window drains in time at any rate, so its p99
    # alone would put no bound on capacity. The profile's does: with a max batch of 64
    # its cheapest row-step is a 32-step plan of 64 rows, 1 / (64 * 32) ms, and a
    # request is 10 of them: 204,800/s. (The 200 requests stay under the default
    # admission limit, 4 x 64 live, so none is refused.)
    wide = chain_profile(flat_grid(1 * MS), max_batch=64)
    result = plan({"box": wide}, prices(), 20.0, Traffic(even(), 500 * DAY))
    assert result.options[0].capacity_rps == pytest.approx(64 * 32 / 10 * 1000)


def test_capacity_is_bounded_by_the_admission_limit_a_deployment_has():
    # A server deployed with a max batch of 1 admits 4 live requests (LIVE_PER_BATCH):
    # past 1,000/s the backlog grows by 1 - 1000 / r of a request per arrival, and once it
    # passes 4 the server refuses, which no SLO allows. Of 200 requests that is past
    # about 200 * (1 - 1000 / r) = 4, r = 1,020/s; with 1,024 live (the old default, not
    # what a deployment has) the 20 s SLO let capacity run to the work bound, 3,200/s.
    result = plan({"box": PROFILE}, prices(), 20.0, Traffic(even(), 500 * DAY))
    assert 1000 / 1.02 <= result.options[0].capacity_rps <= 1021


def test_always_on_that_cannot_meet_the_slo_says_so_with_its_best_p99():
    # Two replicas at most, 2,500/s: queues grow, p99 far above 5 ms.
    result = plan({"box": PROFILE}, prices(), 5 * MS, Traffic(even(), 2500 * DAY), max_replicas=2)
    assert result.infeasible
    assert result.best is None
    (o,) = result.options
    assert (o.meets_slo, o.replicas, o.capacity_rps) == (False, 2, 0.0)
    assert result.best_p99_s == o.p99_s > 5 * MS
    assert result.to_json()["feasible"] is False


# -- serverless ---------------------------------------------------------------------------


def test_serverless_costs_requests_times_the_warm_price():
    # One request every 8.64 s stays on one warm container (keep-warm 1e6 s).
    result = plan({"fn": PROFILE}, prices(), 5 * MS, Traffic(even(), 10_000))
    (o,) = result.options
    assert (o.kind, o.replicas, o.cold_fraction) == ("serverless", 0, 0.0)
    assert o.p99_s == pytest.approx(1 * MS)
    assert o.usd_per_month == pytest.approx(10_000 * 30 * PER_REQUEST)
    assert o.usd_per_million == pytest.approx(PER_REQUEST * 1e6)
    assert o.config == {"memory_mb": 1024, "cold_start_s": 0.5}


def test_serverless_cold_starts_count_in_p99_and_the_overhead_in_every_request():
    # Keep-warm 1 s, one request every 8.64 s: every request starts cold (0.5 s, or the
    # cold start the plan is given), and the 10 ms invoke overhead is billed too.
    p = prices(keep_warm_s=1.0, invocation_overhead_s=0.01, bills_cold_start=True)
    result = plan({"fn": PROFILE}, p, 2.0, Traffic(even(), 10_000), cold_start_s=0.25)
    (o,) = result.options
    assert o.cold_fraction == 1.0
    assert o.p99_s == pytest.approx(0.25 + 0.011)
    assert o.usd_per_month == pytest.approx(10_000 * 30 * (0.0002 + 0.261 * 0.04))


def test_a_serverless_slo_cold_starts_break_is_infeasible_not_an_error():
    p = prices(keep_warm_s=1.0)
    result = plan({"fn": PROFILE}, p, 5 * MS, Traffic(even(), 10_000))
    assert result.infeasible
    assert result.best_p99_s == pytest.approx(0.5 + MS)
    assert result.best_p99_option == "serverless fn"


# -- choosing -----------------------------------------------------------------------------


def test_the_cheapest_option_that_meets_the_slo_is_picked():
    # 10,000/day: serverless $72 a month, the instance $720: serverless.
    cheap = plan({"box": PROFILE, "fn": PROFILE}, prices(), 5 * MS, Traffic(even(), 10_000))
    assert cheap.best is not None
    assert cheap.best.kind == "serverless"
    assert cheap.best.usd_per_month == pytest.approx(72.0)
    # Same traffic, but every serverless request starts cold (0.5 s): the instance.
    cold = plan(
        {"box": PROFILE, "fn": PROFILE},
        prices(keep_warm_s=1.0),
        5 * MS,
        Traffic(even(), 10_000),
    )
    assert by_kind(cold)["serverless"].usd_per_month < by_kind(cold)["always-on"].usd_per_month
    assert cold.best is not None
    assert cold.best.kind == "always-on"


def test_break_even_is_where_the_cost_lines_cross():
    # Instance: $720 a month whatever the traffic on this grid (one replica keeps up).
    # Serverless: 30 x rpd x $0.00024. They cross at 720 / (30 x 0.00024) = 100,000/day.
    result = plan(
        {"box": PROFILE, "fn": PROFILE},
        prices(),
        5 * MS,
        Traffic(even(), 10_000),
        break_even_grid=[25_000, 50_000, 200_000, 400_000],
    )
    be = result.break_even
    assert be is not None
    assert [p.instance_usd_per_month for p in be.points] == pytest.approx([720.0] * 4)
    assert [p.serverless_usd_per_month for p in be.points] == pytest.approx(
        [r * 30 * PER_REQUEST for r in (25_000, 50_000, 200_000, 400_000)]
    )
    assert be.requests_per_day == pytest.approx(100_000)
    assert (be.points[0].instance, be.points[0].serverless) == ("1 x box", "fn")


def test_the_mix_runs_fewer_instances_and_spills_the_rest():
    # 2,500/s needs 3 boxes always on; the mix runs 2 with an admission limit, the
    # refused requests going to fn (warm, 1 ms). Its cost is the two boxes plus the
    # spilled share of the traffic at fn's price per request.
    result = plan({"box": PROFILE, "fn": PROFILE}, prices(), 5 * MS, Traffic(even(), 2500 * DAY))
    mix = by_kind(result)["mix"]
    assert mix.replicas == 2 < by_kind(result)["always-on"].replicas
    assert mix.config["max_live"] in (1, 2, 4, 8, 16)
    assert 0 < mix.spill_fraction < 1
    assert mix.meets_slo
    assert mix.p99_s <= 5 * MS
    spilled = 2500 * DAY * 30 * mix.spill_fraction * PER_REQUEST
    assert mix.usd_per_month == pytest.approx(2 * 720.0 + spilled)
    assert mix.name == "mix 2 x box + fn"


# -- refusing bad input -------------------------------------------------------------------


def test_an_slo_below_the_longest_requests_idle_latency_is_an_error():
    # 100 tokens alone: plans of 32, 32, 32 and 4 steps, 4 ms.
    traffic = Traffic(even(length=100), 10_000)
    with pytest.raises(PlanError, match=r"--slo-p99-ms: 3 ms is below .* 4\.0 ms alone"):
        plan({"box": PROFILE}, prices(), 3 * MS, traffic)
    assert plan({"box": PROFILE}, prices(), 4 * MS, traffic).best is not None


def test_the_model_must_match_every_profile():
    toy = dataclasses.replace(PROFILE, model="toy@1")
    with pytest.raises(PlanError, match=r"--model: 'gru' .* `model` field is 'toy@1'"):
        plan({"box": toy}, prices(), 5 * MS, Traffic(even(), 10_000), model="gru")
    assert plan({"box": toy}, prices(), 5 * MS, Traffic(even(), 10_000), model="toy").best
    other = dataclasses.replace(PROFILE, model="other")
    with pytest.raises(PlanError, match="different models"):
        plan({"box": toy, "fn": other}, prices(), 5 * MS, Traffic(even(), 10_000))


def test_hardware_must_be_named_in_the_prices_file():
    with pytest.raises(PlanError, match=r"--hardware: 'ml\.x'.*box, fn"):
        plan({"ml.x": PROFILE}, prices(), 5 * MS, Traffic(even(), 10_000))


def test_a_backend_without_a_cold_start_needs_one():
    p = prices()
    no_figure = dataclasses.replace(
        p, serverless={"fn": dataclasses.replace(p.serverless["fn"], cold_start_s=None)}
    )
    with pytest.raises(PlanError, match=r"serverless\.fn\.cold_start_s"):
        plan({"fn": PROFILE}, no_figure, 5 * MS, Traffic(even(), 10_000))
    assert plan({"fn": PROFILE}, no_figure, 5 * MS, Traffic(even(), 10_000), cold_start_s=1.0)


@dataclasses.dataclass
class FakeTrace:
    offsets: Any
    tokens: Any
    output_lengths: Any = None
    children: Any = None
    kind: str = "chain"


@pytest.mark.parametrize(
    ("trace", "message"),
    [
        (FakeTrace([], []), "offsets: must be a non-empty"),
        (FakeTrace([0.0, 1.0], [[1]]), "tokens: 1 requests, but 2 offsets"),
        (FakeTrace([1.0, 0.5], [[1], [2]]), "offsets: must be finite, >= 0 and ascending"),
        (FakeTrace([0.0], [[]]), r"tokens\[0\]"),
        (FakeTrace([0.0], [[1]], kind="tree"), "a tree trace, but .* a chain"),
    ],
)
def test_a_malformed_trace_names_the_field(trace, message):
    with pytest.raises(PlanError, match=message):
        check_trace(trace, "chain")


def test_a_well_formed_trace_passes():
    check_trace(FakeTrace([0.0, 0.5], [[1, 2], [3]]), "chain")
    check_trace(FakeTrace([0.0], [[1]], output_lengths=np.array([2]), kind="seq2seq"), "seq2seq")
    with pytest.raises(PlanError, match="output_lengths"):
        check_trace(
            FakeTrace([0.0], [[1]], output_lengths=np.array([0]), kind="seq2seq"), "seq2seq"
        )


def test_the_result_is_json():
    result = plan({"box": PROFILE, "fn": PROFILE}, prices(), 5 * MS, Traffic(even(), 10_000))
    d = result.to_json()
    assert d["feasible"] is True
    assert d["best"]["kind"] == "serverless"
    assert {o["kind"] for o in d["options"]} == {"always-on", "serverless"}
    assert len(d["break_even"]["points"]) == 13
    assert d["traffic"]["requests_per_day"] == 10_000


def test_the_seed_figures_come_out_of_the_planner():
    """10,000 requests a day, each a warm 200 ms Lambda invocation at 512 MB (a 190 ms
    request alone plus Lambda's 10 ms invoke overhead), against one always-on ml.t2.medium:
    $0.56 (the seed's $0.57 over a 730-hour month, see test_prices.py) and $40.32."""
    shipped = Prices.load()
    lam = dataclasses.replace(shipped.serverless["lambda"], memory_mb=512)
    seed_prices = dataclasses.replace(shipped, serverless={"lambda": lam})
    profile = chain_profile(flat_grid(0.19), max_batch=1)
    result = plan(
        {"ml.t2.medium": profile, "lambda": profile},
        seed_prices,
        1.0,
        Traffic(even(), 10_000),
        cold_start_s=3.0,
    )
    options = by_kind(result)
    assert options["always-on"].usd_per_month == pytest.approx(40.32)
    assert options["serverless"].usd_per_month == pytest.approx(0.57, abs=0.02)
    assert options["serverless"].usd_per_month == pytest.approx(0.56, abs=5e-4)
    assert options["serverless"].p99_s == pytest.approx(0.2)
    assert result.best is not None
    assert result.best.kind == "serverless"
