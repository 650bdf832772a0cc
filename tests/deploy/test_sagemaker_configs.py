"""deploy/sagemaker/: the request bodies of a real-time, serverless, async and batch
transform deployment, validated against SageMaker's published service model as botocore
ships it (boto3's own client-side validation, plus the ranges, enums and patterns the
service itself enforces), and the model tarball's layout, packed and read back.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.model import Shape
from botocore.validate import ParamValidator

from batchmaker.demos import DEMO_REPOSITORY
from batchmaker.repository.store import ModelRepository

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "sagemaker"

OPERATIONS = {
    "create-model.json": "CreateModel",
    "endpoint-config-realtime.json": "CreateEndpointConfig",
    "endpoint-config-serverless.json": "CreateEndpointConfig",
    "endpoint-config-async.json": "CreateEndpointConfig",
    "create-endpoint.json": "CreateEndpoint",
    "transform-job.json": "CreateTransformJob",
}
SAGEMAKER_VARIABLES = frozenset(
    {
        "SAGEMAKER_MAX_PAYLOAD_IN_MB",
        "SAGEMAKER_BATCH_STRATEGY",
        "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS",
    }
)
"""SageMaker's own variables the server reads (docs/sagemaker.md)."""


def service_model() -> Any:
    return botocore.session.get_session().get_service_model("sagemaker")


def service_errors(value: Any, shape: Shape, where: str) -> list[str]:
    """What the service checks beyond botocore's client-side validation (types, required
    members, minimums): maximums, enums and patterns, from the same model."""
    errors = []
    meta = shape.metadata
    if shape.type_name == "structure" and isinstance(value, dict):
        for key, v in value.items():
            errors += service_errors(v, shape.members[key], f"{where}.{key}")
    elif shape.type_name == "list" and isinstance(value, list):
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"{where}: more than {meta['max']} items")
        for i, v in enumerate(value):
            errors += service_errors(v, shape.member, f"{where}[{i}]")
    elif shape.type_name == "map" and isinstance(value, dict):
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"{where}: more than {meta['max']} entries")
        for k, v in value.items():
            errors += service_errors(k, shape.key, f"{where} key {k}")
            errors += service_errors(v, shape.value, f"{where}.{k}")
    elif shape.type_name == "string" and isinstance(value, str):
        if "enum" in meta and value not in meta["enum"]:
            errors.append(f"{where}: {value!r} is not one of {meta['enum']}")
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"{where}: longer than {meta['max']}")
        if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {meta['pattern']}")
    elif (
        shape.type_name in ("integer", "long")
        and isinstance(value, int)
        and "max" in meta
        and value > meta["max"]
    ):
        errors.append(f"{where}: {value} is over {meta['max']}")
    return errors


def load(name: str) -> dict[str, Any]:
    doc = json.loads((DEPLOY / name).read_text())
    assert isinstance(doc, dict)
    return doc


def test_every_file_is_a_request_shape() -> None:
    assert {p.name for p in DEPLOY.glob("*.json")} == set(OPERATIONS)


@pytest.mark.parametrize(("name", "operation"), sorted(OPERATIONS.items()))
def test_request_is_valid_against_the_service_model(name: str, operation: str) -> None:
    shape = service_model().operation_model(operation).input_shape
    params = load(name)
    report = ParamValidator().validate(params, shape)
    assert not report.has_errors(), report.generate_report()
    assert not service_errors(params, shape, operation)


def test_the_validation_can_fail() -> None:
    """A request the service refuses is refused here: a wrong type, a missing member, an
    unknown key (botocore) and a memory size over the maximum (the service's range)."""
    model = service_model()
    shape = model.operation_model("CreateEndpointConfig").input_shape
    bad = load("endpoint-config-serverless.json")
    bad["ProductionVariants"][0]["ServerlessConfig"]["MaxConcurrency"] = "20"
    del bad["EndpointConfigName"]
    bad["Bogus"] = 1
    report = ParamValidator().validate(bad, shape).generate_report()
    for text in ("MaxConcurrency", "EndpointConfigName", "Bogus"):
        assert text in report
    big = load("endpoint-config-serverless.json")
    big["ProductionVariants"][0]["ServerlessConfig"]["MemorySizeInMB"] = 8192
    assert service_errors(big, shape, "x") == [
        "x.ProductionVariants[0].ServerlessConfig.MemorySizeInMB: 8192 is over 6144"
    ]


def test_the_deployments_fit_the_container_contract(server_env_vars: frozenset[str]) -> None:
    """What the files ask of the container is what it does: JSON Lines split by line and
    answered by line, a payload within what batch transform allows (MaxPayloadInMB x
    MaxConcurrentTransforms <= 100 MB), serverless memory in 1 GB steps, every variable one
    the server reads, each config naming the model that create-model.json creates."""
    model = load("create-model.json")
    env = model["PrimaryContainer"]["Environment"]
    assert set(env) <= server_env_vars | SAGEMAKER_VARIABLES
    job = load("transform-job.json")
    assert job["BatchStrategy"] == "MultiRecord"
    assert job["TransformInput"]["SplitType"] == "Line"
    assert job["TransformInput"]["ContentType"] == "application/jsonlines"
    assert job["TransformOutput"]["AssembleWith"] == "Line"
    assert job["MaxPayloadInMB"] * job["MaxConcurrentTransforms"] <= 100
    serverless = load("endpoint-config-serverless.json")["ProductionVariants"][0]
    assert serverless["ServerlessConfig"]["MemorySizeInMB"] % 1024 == 0
    configs = [n for n in OPERATIONS if n.startswith("endpoint-config")]
    names = {v["ModelName"] for n in configs for v in load(n)["ProductionVariants"]}
    assert names | {job["ModelName"]} == {model["ModelName"]}
    endpoint = load("create-endpoint.json")
    assert endpoint["EndpointConfigName"] in {load(n)["EndpointConfigName"] for n in configs}


def test_pack_model_writes_the_repository_layout(tmp_path: Path) -> None:
    """The tarball unpacks to <model>/<version>/{config.json,model.safetensors}, which the
    server reads as its repository; packing twice gives the same bytes."""
    script = DEPLOY / "pack_model.py"
    outs = [tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"]
    for out in outs:
        subprocess.run(
            [sys.executable, str(script), str(DEMO_REPOSITORY), "-o", str(out)],
            check=True,
            capture_output=True,
            cwd=REPO,
            timeout=120,
        )
    assert outs[0].read_bytes() == outs[1].read_bytes()
    with tarfile.open(outs[0]) as tar:
        names = sorted(tar.getnames())
        tar.extractall(tmp_path / "model", filter="data")
    assert names == sorted(
        f"{m}/1/{f}"
        for m in ("arith-mod10", "counting-lm", "words-to-digits")
        for f in ("config.json", "model.safetensors")
    )
    models, failed = ModelRepository(tmp_path / "model").load_all()
    assert not failed
    assert sorted(m.key for m in models) == ["arith-mod10@1", "counting-lm@1", "words-to-digits@1"]


def test_pack_model_refuses_a_folder_the_server_would(tmp_path: Path) -> None:
    bad = tmp_path / "repo" / "broken" / "1"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text("{")
    (bad / "model.safetensors").write_bytes(b"")
    proc = subprocess.run(
        [sys.executable, str(DEPLOY / "pack_model.py"), str(tmp_path / "repo"), "-o", "x.tgz"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "broken@1" in proc.stderr
    assert not (tmp_path / "x.tgz").exists()
