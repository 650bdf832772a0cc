"""The Kubernetes, Knative and KServe manifests in deploy/, validated without a cluster.

- Built-in kinds (Deployment, Service, HorizontalPodAutoscaler) against Kubernetes' own
  OpenAPI schemas as kubernetes-validate bundles them, in strict mode (an unknown field is
  an error, as `kubectl apply --validate=strict` makes it), for the oldest Kubernetes the
  manifests need (1.30: the preStop sleep action) and the newest bundled.
- The Knative Service and the KServe InferenceService against the JSON Schemas in schemas/,
  written for these tests from the two projects' API references; the pod spec inside each
  against Kubernetes' PodSpec (as a synthetic Pod); and the InferenceService's predictor once
  more as the Knative Service KServe would make of it.
- Then what no schema knows: ports, probes, user, grace periods and scaling numbers agree
  with each other, with the images and with the server's own variables.

Each kind of check is shown to fail on a broken copy of a manifest. Not covered: admission
webhooks and feature flags of a particular cluster, and anything about a running cluster.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from build_context import REPO_ROOT

from batchmaker.config import AuthConfig

DEPLOY = REPO_ROOT / "deploy"
SCHEMAS = Path(__file__).parent / "schemas"
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
"""The oldest Kubernetes the manifests need, and the newest kubernetes-validate knows."""
K8S_FILES = sorted((DEPLOY / "k8s").glob("*.yaml")) + sorted((DEPLOY / "k8s/extras").glob("*.yaml"))
KNATIVE_FILE = DEPLOY / "knative/service.yaml"
KSERVE_FILE = DEPLOY / "kserve/inferenceservice.yaml"
KNATIVE_REST_FILE = DEPLOY / "knative/service-rest.yaml"
KSERVE_REST_FILE = DEPLOY / "kserve/inferenceservice-rest.yaml"
"""The same services on the KServe v2 REST port: Knative routes one port per container."""
IMAGE_UID = 10001
"""USER in deploy/docker/Dockerfile.* (test_dockerfiles.py checks that side)."""
IMAGE_ENV = {
    "BATCHMAKER_PORT": "50051",
    "BATCHMAKER_METRICS_PORT": "8002",
    "BATCHMAKER_HTTP_PORT": "8000",
}
"""The images' defaults for what the manifests repeat."""
KNATIVE_ONLY_SPEC_FIELDS = {
    "containerConcurrency",
    "timeoutSeconds",
    "responseStartTimeoutSeconds",
    "idleTimeoutSeconds",
}
KNATIVE_RESERVED_PORTS = {8008, 8012, 8013, 8022, 9090, 9091}


Doc = dict[str, Any]


def load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def load_one(path: Path) -> Doc:
    (doc,) = load(path)
    return doc


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


KNATIVE_SCHEMA = schema("knative-service-v1.json")
KSERVE_SCHEMA = schema("kserve-inferenceservice-v1beta1.json")
KSERVE_EXTENSION_FIELDS = set(KSERVE_SCHEMA["x-component-extension-fields"])


# ---- validation --------------------------------------------------------------------------


def validate_pod_spec(pod_spec: Doc, metadata: Doc | None = None) -> None:
    """A pod spec as Kubernetes checks it, in a synthetic Pod."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pod-spec-check", **(metadata or {})},
        "spec": pod_spec,
    }
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)


def validate_knative_service(doc: Doc) -> None:
    jsonschema.validate(doc, KNATIVE_SCHEMA, cls=jsonschema.Draft202012Validator)
    template = doc["spec"]["template"]
    pod_spec = {k: v for k, v in template["spec"].items() if k not in KNATIVE_ONLY_SPEC_FIELDS}
    validate_pod_spec(pod_spec, template.get("metadata"))


def knative_service_for(isvc: Doc) -> Doc:
    """The Knative Service KServe makes of a predictor in its Knative mode (a sketch of its
    reconciler: the extension fields become autoscaling annotations and revision fields, the
    rest is the revision's pod spec)."""
    predictor = isvc["spec"]["predictor"]
    annotations = dict(predictor.get("annotations", {}))
    for field, key in (
        ("minReplicas", "min-scale"),
        ("maxReplicas", "max-scale"),
        ("scaleMetric", "metric"),
        ("scaleTarget", "target"),
    ):
        if field in predictor:
            annotations[f"autoscaling.knative.dev/{key}"] = str(predictor[field])
    spec = {k: v for k, v in predictor.items() if k not in KSERVE_EXTENSION_FIELDS}
    if "containerConcurrency" in predictor:
        spec["containerConcurrency"] = predictor["containerConcurrency"]
    if "timeout" in predictor:
        spec["timeoutSeconds"] = predictor["timeout"]
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": isvc["metadata"]["name"] + "-predictor"},
        "spec": {
            "template": {
                "metadata": {"labels": predictor.get("labels", {}), "annotations": annotations},
                "spec": spec,
            }
        },
    }


def validate_inference_service(doc: Doc) -> None:
    jsonschema.validate(doc, KSERVE_SCHEMA, cls=jsonschema.Draft202012Validator)
    predictor = doc["spec"]["predictor"]
    validate_pod_spec({k: v for k, v in predictor.items() if k not in KSERVE_EXTENSION_FIELDS})
    validate_knative_service(knative_service_for(doc))


def validate_any(doc: Doc) -> None:
    if doc["apiVersion"] == "serving.knative.dev/v1":
        validate_knative_service(doc)
    elif doc["apiVersion"] == "serving.kserve.io/v1beta1":
        validate_inference_service(doc)
    else:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def k8s_docs() -> Iterator[Any]:
    for path in K8S_FILES:
        for i, doc in enumerate(load(path)):
            yield pytest.param(doc, id=f"{path.relative_to(DEPLOY)}#{i}-{doc['kind']}")


@pytest.mark.parametrize("doc", list(k8s_docs()))
def test_kubernetes_manifest_is_valid(doc: Doc) -> None:
    validate_any(doc)


@pytest.mark.parametrize("path", [KNATIVE_FILE, KNATIVE_REST_FILE], ids=lambda p: p.name)
def test_knative_service_is_valid(path: Path) -> None:
    validate_knative_service(load_one(path))


@pytest.mark.parametrize("path", [KSERVE_FILE, KSERVE_REST_FILE], ids=lambda p: p.name)
def test_kserve_inference_service_is_valid(path: Path) -> None:
    validate_inference_service(load_one(path))


def test_every_manifest_is_covered() -> None:
    """A new manifest under deploy/ gets validated, or this fails."""
    covered = set(K8S_FILES) | {KNATIVE_FILE, KSERVE_FILE, KNATIVE_REST_FILE, KSERVE_REST_FILE}
    found = {
        p for p in DEPLOY.rglob("*.yaml") if p.parent.name in {"k8s", "extras", "knative", "kserve"}
    }
    assert found == covered, found ^ covered


# ---- the checks can fail -----------------------------------------------------------------


def _walk(doc: Doc, path: str) -> tuple[Any, str]:
    """The parent node of a dotted path (list indexes as numbers, ``\\.`` for a literal
    dot in a key) and the last key."""
    *parents, last = [k.replace("\\.", ".") for k in re.split(r"(?<!\\)\.", path)]
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node, last


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    """A mutation: set the value at a dotted path."""

    def mutate(doc: Doc) -> None:
        node, last = _walk(doc, path)
        node[int(last) if isinstance(node, list) else last] = value

    return mutate


def _rename(path: str, new_key: str) -> Callable[[Doc], None]:
    """A mutation: a misspelt key."""

    def mutate(doc: Doc) -> None:
        node, last = _walk(doc, path)
        node[new_key] = node.pop(last)

    return mutate


KN = "spec.template.spec.containers.0"
KS = "spec.predictor"
DEP = "spec.template.spec.containers.0"
BROKEN = [
    # Knative: its own schema ...
    (KNATIVE_FILE, _set(f"{KN}.ports.0.name", "grpc"), "port name must be h2c for gRPC"),
    (KNATIVE_FILE, _set(f"{KN}.ports.0.containerPort", 9090), "a queue-proxy port"),
    (KNATIVE_FILE, _set("spec.template.spec.containerConcurrency", "256"), "a string"),
    (
        KNATIVE_FILE,
        _set("spec.template.metadata.annotations.autoscaling\\.knative\\.dev/min-scale", 0),
        "annotation values are strings",
    ),
    (
        KNATIVE_FILE,
        _rename("spec.template.metadata.annotations", "annotation"),
        "misspelt metadata field",
    ),
    (KNATIVE_FILE, _set(f"{KN}.volumeMounts.0.mountPath", "/tmp"), "Knative reserves /tmp"),
    (KNATIVE_FILE, _set(f"{KN}.readinessProbe.failureThreshold", 3), "aggressive probing"),
    (KNATIVE_FILE, _rename(f"{KN}.readinessProbe", "readinesProbe"), "misspelt container field"),
    # ... and Kubernetes' schema of the pod inside.
    (KNATIVE_FILE, _set(f"{KN}.readinessProbe.grpc.port", "h2c"), "gRPC probe port by name"),
    (KNATIVE_FILE, _set(f"{KN}.env.0.value", 50051), "env values are strings"),
    (KNATIVE_REST_FILE, _set(f"{KN}.ports.0.name", "http"), "port name must be http1"),
    (KNATIVE_REST_FILE, _set(f"{KN}.livenessProbe.httpGet.port", 80.5), "a fractional port"),
    # KServe
    (KSERVE_FILE, _set(f"{KS}.minReplicas", -1), "negative replicas"),
    (KSERVE_REST_FILE, _set(f"{KS}.containers.0.ports.0.containerPort", 8012), "queue-proxy's"),
    (KSERVE_FILE, _set(f"{KS}.scaleMetric", "latency"), "unknown scale metric"),
    (KSERVE_FILE, _rename(f"{KS}.minReplicas", "minReplica"), "misspelt predictor field"),
    (KSERVE_FILE, _set(f"{KS}.containers.0.ports.0.name", "grpc"), "the Knative Service it makes"),
    (
        KSERVE_FILE,
        _set("metadata.annotations.serving\\.kserve\\.io/deploymentMode", "Serverles"),
        "unknown deployment mode",
    ),
    # Kubernetes built-in kinds
    (DEPLOY / "k8s/deployment.yaml", _set(f"{DEP}.livenessProbe.grpc.port", "grpc"), "int port"),
    (DEPLOY / "k8s/deployment.yaml", _rename(f"{DEP}.startupProbe", "startUpProbe"), "typo"),
    (
        DEPLOY / "k8s/deployment.yaml",
        _set("spec.template.spec.terminationGracePeriodSeconds", "45"),
        "str",
    ),
    (DEPLOY / "k8s/hpa.yaml", _set("spec.minReplicas", "1"), "a string"),
    (DEPLOY / "k8s/hpa.yaml", _rename("spec.scaleTargetRef", "scaleTarget"), "typo"),
]


@pytest.mark.parametrize(
    ("path", "mutate", "why"),
    [pytest.param(p, m, w, id=f"{p.parent.name}/{p.name}: {w}") for p, m, w in BROKEN],
)
def test_broken_copy_is_rejected(path: Path, mutate: Callable[[Doc], None], why: str) -> None:
    doc = copy.deepcopy(load(path)[0])
    validate_any(copy.deepcopy(doc))  # the original passes ...
    mutate(doc)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate_any(doc)  # ... and the broken copy does not


# ---- what no schema knows ----------------------------------------------------------------


def container_env(container: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def all_pods() -> Iterator[Any]:
    """(pod spec, pod annotations) for every manifest that runs the server."""
    dep = load_one(DEPLOY / "k8s/deployment.yaml")["spec"]["template"]
    kn = load_one(KNATIVE_FILE)["spec"]["template"]
    ks = load_one(KSERVE_FILE)["spec"]["predictor"]
    yield pytest.param(dep["spec"], dep["metadata"]["annotations"], id="k8s")
    yield pytest.param(kn["spec"], kn["metadata"]["annotations"], id="knative")
    yield pytest.param(ks, ks["annotations"], id="kserve")


@pytest.mark.parametrize(("spec", "annotations"), list(all_pods()))
def test_server_settings_are_real_and_consistent(
    spec: Doc, annotations: dict[str, str], server_env_vars: frozenset[str]
) -> None:
    container = spec["containers"][0]
    name = container["name"]
    env = {**IMAGE_ENV, **container_env(container)}
    ours = {k for k in container_env(container) if k.startswith("BATCHMAKER_")}
    assert ours <= server_env_vars, f"{name}: the server reads no {sorted(ours - server_env_vars)}"
    grpc_port = int(env["BATCHMAKER_PORT"])
    serving_ports = [p for p in container["ports"] if p["containerPort"] == grpc_port]
    assert serving_ports, f"{name}: no container port is BATCHMAKER_PORT ({grpc_port})"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            assert container[probe]["grpc"]["port"] == grpc_port, f"{name}: {probe}"
    assert "readinessProbe" in container, f"{name}: readiness must come from grpc health"
    # The pod runs as the image's user, on a read-only root with one writable temp dir.
    security = container["securityContext"]
    user = security.get("runAsUser", spec.get("securityContext", {}).get("runAsUser"))
    assert user == IMAGE_UID, f"{name}: runAsUser {user}"
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    temp_dir = env.get("TMPDIR", "/tmp")
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts.get(temp_dir) in empty_dirs, f"{name}: torch needs a writable {temp_dir}"
    # Prometheus scrapes the metrics port the server serves on.
    assert annotations["prometheus.io/port"] == env["BATCHMAKER_METRICS_PORT"]
    assert annotations["prometheus.io/scrape"] == "true"


def test_gpu_deployment() -> None:
    deployment = load_one(DEPLOY / "k8s/deployment.yaml")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {**IMAGE_ENV, **container_env(container)}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env["BATCHMAKER_DEVICES"] == "cuda"
    assert container["image"].endswith("-cuda")
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns replicas"
    assert spec["securityContext"]["runAsNonRoot"] is True
    # Model loading may take minutes: the startup probe allows it before liveness starts.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    # SIGKILL must not cut a drain short, and liveness must not call a drain a death.
    grace = float(env["BATCHMAKER_GRACE_S"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + grace + 5
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": int(env["BATCHMAKER_PORT"]),
        "metrics": int(env["BATCHMAKER_METRICS_PORT"]),
        "http": int(env["BATCHMAKER_HTTP_PORT"]),
    }


TOKEN_VARS = {"BATCHMAKER_AUTH_TOKENS": "auth-tokens", "BATCHMAKER_ADMIN_TOKENS": "admin-tokens"}
"""The Deployment's token variables (``AuthConfig.from_sources``) and their Secret keys."""


def token_refusals(container: Doc, secret: Doc) -> list[str]:
    """Why ``container`` does not take its tokens from ``secret`` safely: each token variable
    must come from a ``secretKeyRef`` into a key the Secret has, and no variable that names a
    token may carry a literal value (a manifest is read by everyone with the repository)."""
    why: list[str] = []
    env = {e["name"]: e for e in container.get("env", [])}
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for name, key in TOKEN_VARS.items():
        ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            why.append(f"{name} does not come from a secretKeyRef")
        elif (ref.get("name"), ref.get("key")) != (secret["metadata"]["name"], key):
            why.append(f"{name} reads {ref}, not {secret['metadata']['name']}/{key}")
        elif key not in keys or ref.get("optional"):
            why.append(f"{name}: the Secret has no key {key!r}, or the ref is optional")
    why += [
        f"{e['name']} has a literal value"
        for e in env.values()
        if "TOKEN" in e["name"] and not e["name"].endswith("_FILE") and "value" in e
    ]
    return why


def test_the_deployment_reads_its_tokens_from_the_secret(server_env_vars: frozenset[str]) -> None:
    secret = load_one(DEPLOY / "k8s/secret.yaml")
    deployment = load_one(DEPLOY / "k8s/deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert token_refusals(container, secret) == []
    assert set(TOKEN_VARS) <= server_env_vars
    assert secret["metadata"]["labels"].items() <= deployment["metadata"]["labels"].items()
    # The placeholders are refused by the server: an unedited Secret cannot serve behind a
    # token everyone can read in this repository.
    for key in TOKEN_VARS.values():
        with pytest.raises(ValueError, match="whitespace"):
            AuthConfig.from_sources(env={"BATCHMAKER_AUTH_TOKENS": secret["stringData"][key]})
    # The check fails on a copy that puts a token in the manifest, or reads the wrong key.
    literal = copy.deepcopy(container)
    literal["env"] = [
        {"name": n, "value": "0123456789abcdef0123"} if n in TOKEN_VARS else e
        for e in literal["env"]
        for n in [e["name"]]
    ]
    assert len(token_refusals(literal, secret)) == 4
    wrong = copy.deepcopy(container)
    for e in wrong["env"]:
        if e["name"] == "BATCHMAKER_ADMIN_TOKENS":
            e["valueFrom"]["secretKeyRef"]["key"] = "auth-tokens"
    assert token_refusals(wrong, secret) == [
        "BATCHMAKER_ADMIN_TOKENS reads {'name': 'batchmaker-tokens', 'key': 'auth-tokens'}, "
        "not batchmaker-tokens/admin-tokens"
    ]


@pytest.mark.parametrize(("spec", "annotations"), list(all_pods()))
def test_no_manifest_carries_a_literal_token(spec: Doc, annotations: dict[str, str]) -> None:
    for container in spec["containers"]:
        for e in container.get("env", []):
            if "TOKEN" in e["name"] and not e["name"].endswith("_FILE"):
                assert "value" not in e, f"{e['name']}: a literal token in a manifest"


def test_services_reach_the_deployment() -> None:
    pod = load_one(DEPLOY / "k8s/deployment.yaml")["spec"]["template"]
    port_names = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    services = load(DEPLOY / "k8s/service.yaml")
    assert {s["metadata"]["name"] for s in services} == {"batchmaker", "batchmaker-headless"}
    for service in services:
        selector = service["spec"]["selector"]
        assert selector.items() <= pod["metadata"]["labels"].items(), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, port
        grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["appProtocol"] == "kubernetes.io/h2c"
    headless = next(s for s in services if s["metadata"]["name"] == "batchmaker-headless")
    assert headless["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize(
    "path", [DEPLOY / "k8s/hpa.yaml", DEPLOY / "k8s/extras/hpa-requests-waiting.yaml"]
)
def test_autoscalers_scale_the_deployment(path: Path) -> None:
    deployment = load_one(DEPLOY / "k8s/deployment.yaml")
    hpa = load_one(path)
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    metrics_doc = (REPO_ROOT / "docs/metrics.md").read_text()
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Pods":
            assert f"`{metric['pods']['metric']['name']}`" in metrics_doc, "not a server metric"


def _scale_to_zero_numbers(container: Doc) -> dict[str, int]:
    env = {**IMAGE_ENV, **container_env(container)}
    return {k: int(env[f"BATCHMAKER_{k}"]) for k in ("MAX_LIVE", "MAX_BATCH", "GRACE_S", "PORT")}


def test_knative_scales_to_zero_over_grpc() -> None:
    service = load_one(KNATIVE_FILE)
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    (container,) = template["spec"]["containers"]
    n = _scale_to_zero_numbers(container)
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
    assert container["ports"] == [{"name": "h2c", "containerPort": n["PORT"]}]
    # The queue-proxy, not the server, holds back the excess: the hard limit is the
    # server's admission limit, and the soft target one full batch.
    assert template["spec"]["containerConcurrency"] == n["MAX_LIVE"]
    assert int(annotations["autoscaling.knative.dev/target"]) == n["MAX_BATCH"]
    assert template["spec"]["timeoutSeconds"] > n["GRACE_S"]
    metrics_port = int(container_env(container).get("BATCHMAKER_METRICS_PORT", "8002"))
    assert metrics_port not in KNATIVE_RESERVED_PORTS | {n["PORT"]}


def test_kserve_scales_to_zero_over_grpc() -> None:
    isvc = load_one(KSERVE_FILE)
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    n = _scale_to_zero_numbers(container)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] in {
        "Serverless",
        "Knative",
    }
    assert predictor["minReplicas"] == 0
    assert container["ports"][0]["name"] == "h2c"
    assert predictor["containerConcurrency"] == n["MAX_LIVE"]
    assert predictor["scaleMetric"] == "concurrency"
    assert predictor["scaleTarget"] == n["MAX_BATCH"]
    assert predictor["timeout"] > n["GRACE_S"]
    knative = load_one(KNATIVE_FILE)["spec"]["template"]
    assert container_env(container) == container_env(knative["spec"]["containers"][0]), (
        "the two serverless paths run the server the same way"
    )


def _rest_container(path: Path, grpc_path: Path, containers: Callable[[Doc], list[Doc]]) -> Doc:
    """The one container of a REST variant, checked against its gRPC twin: the same server
    and numbers, plus the HTTP port, which is the one Knative routes and probes."""
    (container,) = containers(load_one(path))
    (twin,) = containers(load_one(grpc_path))
    env = container_env(container)
    http = int(env.pop("BATCHMAKER_HTTP_PORT"))
    assert env == container_env(twin), "the REST variant runs the server as the gRPC one does"
    assert http not in KNATIVE_RESERVED_PORTS | {int(env.get("BATCHMAKER_PORT", "50051"))}
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("http1", http)]
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert (ready["path"], ready["port"]) == ("/v2/health/ready", http)
    assert (live["path"], live["port"]) == ("/v2/health/live", http)
    return container


def test_knative_rest_variant_serves_the_v2_rest_port() -> None:
    def containers(doc: Doc) -> list[Doc]:
        return list(doc["spec"]["template"]["spec"]["containers"])

    _rest_container(KNATIVE_REST_FILE, KNATIVE_FILE, containers)
    rest, grpc = load_one(KNATIVE_REST_FILE), load_one(KNATIVE_FILE)
    assert rest["spec"]["template"]["metadata"] == grpc["spec"]["template"]["metadata"]


def test_kserve_rest_variant_serves_the_v2_rest_port() -> None:
    def containers(doc: Doc) -> list[Doc]:
        return list(doc["spec"]["predictor"]["containers"])

    _rest_container(KSERVE_REST_FILE, KSERVE_FILE, containers)
    rest, grpc = load_one(KSERVE_REST_FILE), load_one(KSERVE_FILE)
    scaling = {k: v for k, v in grpc["spec"]["predictor"].items() if k != "containers"}
    assert {k: v for k, v in rest["spec"]["predictor"].items() if k != "containers"} == scaling
