"""The Grafana dashboard, and the Compose stack that wires the server to Prometheus and
Grafana, checked against a live server.

Every PromQL expression in the dashboard must parse (promql-parser, after Grafana's
variables are filled in) and may name only metrics and labels that a real server exposes:
the fixture starts one, sends it a good and a bad request so every family has samples, and
scrapes it. The Compose file, the Prometheus config and Grafana's provisioning must point at
each other and at the image's ports. Grafana and Prometheus themselves do not run here.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from build_context import REPO_ROOT
from images import DOCKERFILES, parse_dockerfile
from prometheus_client.parser import text_string_to_metric_families

from batchmaker.bench.launcher import ServerProcess
from batchmaker.client import Client
from batchmaker.errors import ModelNotFoundError

DEPLOY = REPO_ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana/dashboards/batchmaker.json"
COMPOSE = DEPLOY / "docker-compose.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus/prometheus.yml"
TARGET_LABELS = frozenset({"instance", "job"})
"""Labels Prometheus adds to every series it scrapes."""

Labels = dict[str, frozenset[str]]
"""Sample name (``batchmaker_cell_batch_size_bucket``) -> its label names."""


@pytest.fixture(scope="module")
def exposed() -> Labels:
    """What a real server's /metrics holds after one good request and one refused one."""
    args = ["--models=lstm-lm", "--model-repository=none", "--metrics-port=0"]
    with ServerProcess(args) as server:
        assert server.metrics_url is not None
        with Client(server.address) as client:
            client.infer_stream("lstm-lm", [1, 2, 3]).collect()
            with pytest.raises(ModelNotFoundError):
                client.infer_stream("no-such-model", [1]).collect()
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            text = response.read().decode()
        assert server.stop() == 0
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(names) for name, names in labels.items()}


# ---- PromQL ------------------------------------------------------------------------------

_GRAFANA_RANGE = re.compile(r"\$__(rate_interval|interval|range)\b")
_GRAFANA_VAR = re.compile(r"\$\{?\w+(?::\w+)?\}?")


def fill_variables(expr: str) -> str:
    """What Grafana sends Prometheus, near enough to parse: ranges become 5m, other
    variables a plain value."""
    return _GRAFANA_VAR.sub("x", _GRAFANA_RANGE.sub("5m", expr))


def selectors(node: promql_parser.Expr) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(n: promql_parser.Expr) -> None:
        if isinstance(n, promql_parser.VectorSelector):
            found.append(n)

    promql_parser.walk(node, visit)
    return found


def check_query(expr: str, legend: str, exposed: Labels) -> set[str]:
    """Parses ``expr`` and checks every metric, matcher, grouping label and legend label
    against what the server exposes; returns the metric names it uses."""
    tree = promql_parser.parse(fill_variables(expr))  # ValueError when it does not parse
    used = selectors(tree)
    assert used, f"no metric in {expr!r}"
    for sel in used:
        assert sel.name in exposed, f"{sel.name} is not exposed by the server ({expr!r})"
        matched = {m.name for m in sel.matchers.matchers}
        unknown = matched - exposed[sel.name] - TARGET_LABELS
        assert not unknown, f"{sel.name} has no label {sorted(unknown)} ({expr!r})"
    available = set(TARGET_LABELS).union(*(exposed[s.name] for s in used))

    def visit(n: promql_parser.Expr) -> None:
        if isinstance(n, promql_parser.AggregateExpr) and n.modifier is not None:
            inner = set(TARGET_LABELS).union(*(exposed[s.name] for s in selectors(n.expr)))
            unknown = set(n.modifier.labels) - inner
            assert not unknown, f"grouping by missing labels {sorted(unknown)} in {expr!r}"

    promql_parser.walk(tree, visit)
    legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
    assert legend_labels <= available, f"legend {legend!r} names labels {expr!r} lacks"
    return {s.name for s in used}


def test_the_query_check_can_fail() -> None:
    """A misspelt metric, a missing label and an unbalanced parenthesis are caught."""
    exposed = {"batchmaker_request_success_total": frozenset({"model", "version"})}
    ok = (
        'sum by (model) (rate(batchmaker_request_success_total{model=~"$model"}[$__rate_interval]))'
    )
    assert check_query(ok, "{{model}}", exposed) == {"batchmaker_request_success_total"}
    with pytest.raises(AssertionError, match="not exposed"):
        check_query("rate(batchmaker_request_sucess_total[5m])", "", exposed)
    with pytest.raises(AssertionError, match="missing labels"):
        check_query("sum by (device) (rate(batchmaker_request_success_total[5m]))", "", exposed)
    with pytest.raises(AssertionError, match="legend"):
        check_query(ok, "{{reason}}", exposed)
    with pytest.raises(ValueError, match="parenthesis"):
        check_query("sum(rate(batchmaker_request_success_total[5m])", "", exposed)


# ---- the dashboard -----------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])  # inside collapsed rows


def family(sample_name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", sample_name)


def test_dashboard_identity_and_variables() -> None:
    board = dashboard()
    assert board["uid"] == "batchmaker"
    assert board["title"] == "BatchMaker"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "model"):
        assert variables[name]["query"]["query"].startswith("label_values(")
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_layout_has_no_overlaps() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in panels():
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_every_query_uses_real_metrics_and_labels(exposed: Labels) -> None:
    used: set[str] = set()
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            used |= check_query(target["expr"], target.get("legendFormat", ""), exposed)
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert match, query
            inner, label = match.groups()
            (sel,) = selectors(promql_parser.parse(fill_variables(inner)))
            assert sel.name in exposed
            assert label in exposed[sel.name] | TARGET_LABELS
    # Built on the server's metrics: every family it exposes has a panel.
    assert {family(n) for n in used} == {family(n) for n in exposed}


def test_dashboard_has_the_panels_operators_ask_for() -> None:
    queries = " ".join(t["expr"] for p in panels() for t in p.get("targets", []))
    for needle in (
        "histogram_quantile(0.99, sum by (le, model) (rate(batchmaker_e2e_request_latency",
        "histogram_quantile(0.5, sum by (le, model) (rate(batchmaker_e2e_request_latency",
        "histogram_quantile(0.99, sum by (le, model) (rate(batchmaker_time_to_first_output",
        "histogram_quantile(0.99, sum by (le, model) (rate(batchmaker_request_queue_time",
        'reason="RESOURCE_EXHAUSTED"',
        'reason="CANCELLED"',
        "rate(batchmaker_cell_steps_total",
        "1 - sum by (model, pool) (batchmaker_free_slots",
        "rate(batchmaker_executor_busy_seconds_total",
        "batchmaker_ready_queue_depth",
        "batchmaker_num_requests_waiting",
    ):
        assert needle in queries, needle
    assert any(p["type"] == "heatmap" for p in panels()), "batch-size heatmap"


# ---- Compose, Prometheus and Grafana wiring ------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path, for the service's bind mounts (named volumes skipped)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def test_compose_images_are_pinned_and_the_server_is_built_here() -> None:
    services = compose()["services"]
    assert set(services) == {"batchmaker", "prometheus", "grafana"}
    for name, service in services.items():
        image = service["image"]
        assert ":" in image, f"{name}: {image} has no tag"
        assert not image.endswith(":latest"), f"{name}: {image}"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is public"
        for mount in bind_mounts(service).values():
            assert mount.exists(), mount
    build = services["batchmaker"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == REPO_ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILES["cpu"]


def test_compose_server_settings(server_env_vars: frozenset[str]) -> None:
    service = compose()["services"]["batchmaker"]
    env = {**parse_dockerfile(DOCKERFILES["cpu"]).final.env, **service.get("environment", {})}
    ours = {k for k in service.get("environment", {}) if k.startswith("BATCHMAKER_")}
    assert ours <= server_env_vars
    grace_period = float(service["stop_grace_period"].removesuffix("s"))
    assert grace_period >= float(env["BATCHMAKER_GRACE_S"]) + 5, "Docker's SIGKILL cuts the drain"
    assert service["read_only"] is True
    assert "/tmp" in service["tmpfs"], "torch needs a writable temp dir"
    # Prometheus waits for the HEALTHCHECK (grpc health says SERVING).
    depends = compose()["services"]["prometheus"]["depends_on"]
    assert depends["batchmaker"]["condition"] == "service_healthy"


def test_prometheus_scrapes_the_servers_metrics_port() -> None:
    image_env = parse_dockerfile(DOCKERFILES["cpu"]).final.env
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    assert static["targets"] == [f"batchmaker:{image_env['BATCHMAKER_METRICS_PORT']}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    mounts = bind_mounts(compose()["services"]["prometheus"])
    assert mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONFIG


def test_grafana_provisioning_finds_prometheus_and_the_dashboard() -> None:
    mounts = bind_mounts(compose()["services"]["grafana"])
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    scrape_interval = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape_interval
    (provider,) = yaml.safe_load((provisioning / "dashboards/batchmaker.yml").read_text())[
        "providers"
    ]
    container_path = provider["options"]["path"]
    assert mounts[container_path] == DASHBOARD.parent
    home = compose()["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home == f"{container_path}/{DASHBOARD.name}"
