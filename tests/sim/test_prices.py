"""The prices file: the shipped one reproduces the seed figures, every figure has a source
and a date, and a malformed file is refused with the field named.

The seed (issue 14): 10,000 requests a day cost about $0.57 a month on AWS Lambda against
$40.32 for an always-on SageMaker ml.t2.medium endpoint. The file's ``seed`` block says
which Lambda memory, duration and month give that; these tests recompute it from the
file, so a changed price or month shows up here.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest

from batchmaker.sim.prices import SHIPPED, Prices, PricesError


@pytest.fixture(scope="module")
def shipped() -> Prices:
    return Prices.load()


def test_an_always_on_ml_t2_medium_costs_the_seeds_40_32_a_month(shipped):
    assert shipped.hours_per_month == 720
    assert shipped.instance_cost("ml.t2.medium", 1) == pytest.approx(40.32, abs=1e-9)
    assert shipped.instance_cost("ml.t2.medium", 3) == pytest.approx(3 * 40.32)
    assert shipped.seed["usd_per_month"]["ml.t2.medium"] == 40.32


def test_10k_requests_a_day_on_lambda_cost_the_seeds_0_57_a_month(shipped):
    seed = shipped.seed
    fn = dataclasses.replace(shipped.serverless[seed["serverless"]], memory_mb=seed["memory_mb"])
    per_request = fn.billed_seconds(seed["warm_s"])
    assert per_request == pytest.approx(0.2)  # 1 ms billing: 200 ms stays 200 ms

    def month(hours: float) -> float:
        n = seed["requests_per_day"] * hours / 24
        return fn.cost(n, n * per_request)

    # The planner's 720-hour month: $0.560, within a cent of the seed.
    assert month(shipped.hours_per_month) == pytest.approx(0.56, abs=5e-4)
    assert month(shipped.hours_per_month) == pytest.approx(
        seed["usd_per_month"]["lambda"], abs=0.02
    )
    # AWS's 730-hour average month: $0.568, which rounds to the seed's $0.57.
    assert round(month(730), 2) == seed["usd_per_month"]["lambda"] == 0.57
    # The same check fails on a wrong answer: 128 MB would be a quarter of the compute.
    small = dataclasses.replace(fn, memory_mb=128)
    n = seed["requests_per_day"] * 30
    assert abs(small.cost(n, n * per_request) - 0.57) > 0.3


def test_billed_seconds_round_up_to_the_billing_step(shipped):
    fn = shipped.serverless["lambda"]
    assert fn.billed_seconds(0.2) == pytest.approx(0.2)
    assert fn.billed_seconds(0.2001) == pytest.approx(0.201)
    coarse = dataclasses.replace(fn, billing_ms=100)
    assert coarse.billed_seconds(0.201) == pytest.approx(0.3)
    assert coarse.billed_seconds(0.3) == pytest.approx(0.3)


def test_serverless_cost_is_requests_times_fee_plus_memory_times_seconds(shipped):
    fn = dataclasses.replace(shipped.serverless["lambda"], memory_mb=2048)
    # 1,000 requests billed 150 s in all at 2 GB: 300 GB-s.
    assert fn.cost(1000, 150.0) == pytest.approx(1000 * 2e-7 + 300 * 0.0000166667)


def test_every_shipped_figure_has_a_source_and_a_date(shipped):
    entries = [*shipped.instances.values(), *shipped.serverless.values()]
    assert {"ml.t2.medium", "ml.m5.large", "ml.c5.xlarge", "ml.g4dn.xlarge"} <= set(
        shipped.instances
    )
    assert "lambda" in shipped.serverless
    assert shipped.instances["ml.g4dn.xlarge"].accelerator  # the GPU one
    for e in entries:
        assert e.source.strip(), e.name
        assert e.date.startswith("20"), e.name
    assert "https://aws.amazon.com/lambda/pricing/" in shipped.serverless["lambda"].source


def raw() -> dict[str, Any]:
    d = json.loads(SHIPPED.read_text())
    assert isinstance(d, dict)
    return d


def _set(path: str, value: Any) -> Any:
    def change(d: dict[str, Any]) -> None:
        *head, last = path.split("/")
        for key in head:
            d = d[key]
        if value is _DELETE:
            del d[last]
        else:
            d[last] = value

    return change


_DELETE = object()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            _set("instances/ml.t2.medium/usd_per_hour", -1),
            "instances.ml.t2.medium.usd_per_hour: must be a positive number, got -1",
        ),
        (_set("instances/ml.t2.medium/usd_per_hour", "0.056"), "usd_per_hour"),
        (_set("instances/ml.t2.medium/usd_per_hour", True), "usd_per_hour"),
        (_set("instances/ml.m5.large/vcpus", 2.5), "instances.ml.m5.large.vcpus: must be a whole"),
        (_set("instances/ml.m5.large/date", ""), "instances.ml.m5.large.date"),
        (_set("instances/ml.m5.large/source", _DELETE), "instances.ml.m5.large.source: missing"),
        (_set("serverless/lambda/usd_per_gb_second", 0), "serverless.lambda.usd_per_gb_second"),
        (_set("serverless/lambda/usd_per_request", -1e-7), "serverless.lambda.usd_per_request"),
        (_set("serverless/lambda/memory_mb", 20480), "serverless.lambda.memory_mb: 20480"),
        (_set("serverless/lambda/bills_cold_start", "yes"), "serverless.lambda.bills_cold_start"),
        (_set("serverless/lambda/keep_warm_s", float("nan")), "serverless.lambda.keep_warm_s"),
        (_set("serverless/lambda/sources", {"colour": "x"}), "serverless.lambda.sources"),
        (_set("serverless/ml.t2.medium", raw()["serverless"]["lambda"]), "also named"),
        (_set("instances", []), "instances: must be an object"),
        (_set("hours_per_month", 0), "hours_per_month"),
        (_set("version", 2), "version"),
    ],
)
def test_a_malformed_prices_file_names_the_field(tmp_path, change, message):
    d = copy.deepcopy(raw())
    change(d)
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(d))
    with pytest.raises(PricesError) as exc:
        Prices.load(path)
    assert message in str(exc.value)
    assert str(path) in str(exc.value)


def test_the_unchanged_file_loads_through_the_same_path(tmp_path):
    """The control for the test above: the copy, unchanged, is accepted."""
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(raw()))
    assert Prices.load(path) == Prices.load()


def test_a_file_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text("{nope")
    with pytest.raises(PricesError, match="not JSON"):
        Prices.load(path)
    with pytest.raises(PricesError, match="cannot read"):
        Prices.load(tmp_path / "missing.json")
