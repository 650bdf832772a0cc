"""What a Kubernetes, Knative or KServe manifest in ``deploy/`` asks of a container, run by
``check_image.py`` against the real image: its pod spec and annotations, the variables the
platform injects (Knative's, Kubernetes' service links), its probes run inside the
container as the kubelet would run them, and whether each declared port speaks its name.
"""

from __future__ import annotations

from typing import Any

import yaml
from containers import REPO, Container


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Deployment, a Knative Service or an InferenceService's predictor."""
    if doc["kind"] == "InferenceService":
        spec: dict[str, Any] = doc["spec"]["predictor"]
        return spec
    pod: dict[str, Any] = doc["spec"]["template"]["spec"]
    return pod


def annotations(doc: dict[str, Any]) -> dict[str, str]:
    if doc["kind"] == "InferenceService":
        found: dict[str, str] = doc["spec"]["predictor"].get("annotations", {})
        return found
    template: dict[str, str] = doc["spec"]["template"]["metadata"].get("annotations", {})
    return template


def knative_env(doc: dict[str, Any], spec: dict[str, Any]) -> dict[str, str]:
    """What Knative sets in every serving container (KServe's predictor is one)."""
    if doc["kind"] not in ("Service", "InferenceService") or "serving" not in doc["apiVersion"]:
        return {}
    name = doc["metadata"]["name"]
    port = str(spec["ports"][0]["containerPort"])
    return {"PORT": port, "K_SERVICE": name, "K_CONFIGURATION": name, "K_REVISION": f"{name}-1"}


def service_links(path: str) -> dict[str, str]:
    """The service-link variables Kubernetes puts in a pod for each Service of its
    namespace with a cluster IP (deploy/k8s/service.yaml's, for the Deployment)."""
    if not path.startswith("deploy/k8s/"):
        return {}
    env: dict[str, str] = {}
    docs = yaml.safe_load_all((REPO / "deploy/k8s/service.yaml").read_text())
    for i, svc in enumerate(d for d in docs if d and d["kind"] == "Service"):
        if svc["spec"].get("clusterIP") == "None":
            continue
        name = svc["metadata"]["name"].upper().replace("-", "_")
        ip = f"10.96.0.{10 + i}"
        ports = svc["spec"]["ports"]
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
        env[f"{name}_PORT"] = f"tcp://{ip}:{ports[0]['port']}"
        for p in ports:
            proto, number = p.get("protocol", "TCP"), p["port"]
            env[f"{name}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(number)
            base = f"{name}_PORT_{number}_{proto}"
            env[base] = f"{proto.lower()}://{ip}:{number}"
            env[f"{base}_PROTO"] = proto.lower()
            env[f"{base}_PORT"] = str(number)
            env[f"{base}_ADDR"] = ip
    return env


HTTP_INSIDE = (
    "import sys, urllib.request, urllib.error\n"
    "try:\n"
    "    r = urllib.request.urlopen(sys.argv[1], timeout=3)\n"
    "    body = r.read().decode()\n"
    "    code = r.status\n"
    "except urllib.error.HTTPError as e:\n"
    "    code, body = e.code, ''\n"
    "print(code)\n"
    "sys.exit(0 if 200 <= code < 400 and sys.argv[2] in body else 1)\n"
)


def http_inside(c: Container, url: str, must_hold: str) -> tuple[bool, str]:
    out = c.exec("python", "-c", HTTP_INSIDE, url, must_hold, timeout=30)
    detail = out.stdout.strip() or out.stderr.strip().splitlines()[-1:]
    return out.returncode == 0, f"GET {url} -> {detail}"


def probe(c: Container, probe: dict[str, Any] | None) -> tuple[bool, str]:
    """A Kubernetes probe, run inside the container as the kubelet would run it at the pod
    IP: gRPC health, HTTP GET (200-399), TCP connect, or the exec command."""
    if probe is None:
        return False, "no probe"
    if "grpc" in probe:
        port = probe["grpc"]["port"]
        argv = ["batchmaker", "health", "--address", f"127.0.0.1:{port}", "--timeout", "3"]
        if probe["grpc"].get("service"):
            argv += ["--service", probe["grpc"]["service"]]
        out = c.exec(*argv, timeout=30)
        return out.returncode == 0, f"grpc :{port} -> {out.stdout.strip() or out.stderr.strip()}"
    if "httpGet" in probe:
        get = probe["httpGet"]
        return http_inside(c, f"http://127.0.0.1:{get['port']}{get.get('path', '/')}", "")
    if "tcpSocket" in probe:
        port = probe["tcpSocket"]["port"]
        code = f"import socket; socket.create_connection(('127.0.0.1', {port}), 3)"
        out = c.exec("python", "-c", code, timeout=30)
        return out.returncode == 0, f"tcp :{port}"
    if "exec" in probe:
        out = c.exec(*probe["exec"]["command"], timeout=30)
        return out.returncode == 0, f"exec {probe['exec']['command']} -> exit {out.returncode}"
    return False, f"unknown probe {sorted(probe)}"


def port_speaks(c: Container, port: dict[str, Any]) -> tuple[bool, str]:
    """A declared port serves what its name says: gRPC (h2c, grpc), HTTP/1.1 (http1, http:
    the v2 REST door) or Prometheus (metrics)."""
    number, name = port["containerPort"], port.get("name", "")
    if name in ("h2c", "grpc"):
        return probe(c, {"grpc": {"port": number}})
    if name in ("http1", "http"):
        return http_inside(c, f"http://127.0.0.1:{number}/v2/health/live", "")
    if name == "metrics":
        return http_inside(c, f"http://127.0.0.1:{number}/metrics", "batchmaker_server_info")
    return probe(c, {"tcpSocket": {"port": number}})
