"""What ships: the Dockerfile lints, the image's install steps work in a clean venv without
moto, the Kubernetes manifests validate, and the shipped gateway config loads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml

from service.config import ECR_OPERATIONS, from_mapping

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The base's plain Kubernetes files; kustomization.yaml and the Prometheus Operator CRs
# (servicemonitor.yaml, prometheusrule.yaml) are checked in tests/test_kustomize.py.
NOT_PLAIN = {"kustomization.yaml", "servicemonitor.yaml", "prometheusrule.yaml"}
MANIFESTS = sorted(p for p in (ROOT / "deploy" / "k8s").glob("*.yaml") if p.name not in NOT_PLAIN)


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


def test_dockerfile_lints_clean() -> None:
    result = run(BIN / "hadolint", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    assert run(BIN / "hadolint", bad).returncode != 0


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.name for m in MANIFESTS])
def test_manifest_validates(manifest: Path) -> None:
    result = run(BIN / "kubernetes-validate", "--strict", manifest)
    assert result.returncode == 0, result.stdout + result.stderr


def test_validation_does_catch_a_bad_manifest(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (ROOT / "deploy" / "k8s" / "deployment.yaml").read_text()
    bad.write_text(text.replace("replicas: 3", "replicas: three", 1))
    assert run(BIN / "kubernetes-validate", "--strict", bad).returncode != 0


def test_shipped_config_loads() -> None:
    configmap = yaml.safe_load((ROOT / "deploy" / "k8s" / "configmap.yaml").read_text())
    config = from_mapping(yaml.safe_load(configmap["data"]["gateway.yaml"]), environ={})
    assert config.cache.backend == "redis"
    assert config.server.health_listen == "0.0.0.0:8081"
    deployment = next(
        d
        for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
        if d["kind"] == "Deployment"
    )
    spec = deployment["spec"]["template"]["spec"]
    probe_port = spec["containers"][0]["readinessProbe"]["grpc"]["port"]
    assert f":{probe_port}" in config.server.health_listen
    # SIGKILL must not come before the drain and the grace period are over.
    assert spec["terminationGracePeriodSeconds"] > (
        config.server.drain_seconds + config.server.grace_seconds
    )


def test_iam_policy_is_least_privilege() -> None:
    policy = json.loads((ROOT / "deploy" / "iam" / "gateway-policy.json").read_text())
    actions = set()
    for statement in policy["Statement"]:
        found = statement["Action"]
        actions |= {found} if isinstance(found, str) else set(found)
    assert actions == {
        *(f"ecr:{op}" for op in ECR_OPERATIONS),
        "ecr:GetAccountSetting",
        "sts:GetCallerIdentity",
        "sts:AssumeRole",
        "iam:CreateServiceLinkedRole",
    }
    assume = next(s for s in policy["Statement"] if s["Action"] == "sts:AssumeRole")
    assert all(re.fullmatch(r"arn:aws:iam::\d{12}:role/.+", r) for r in assume["Resource"])


def test_registry_role_allows_what_the_gateway_calls() -> None:
    policy = json.loads((ROOT / "deploy" / "iam" / "registry-role-policy.json").read_text())
    ecr = {a for s in policy["Statement"] for a in s["Action"] if a.startswith("ecr:")}
    assert ecr == {*(f"ecr:{op}" for op in ECR_OPERATIONS), "ecr:GetAccountSetting"}


def test_image_install_steps_work_in_a_clean_venv(tmp_path: Path) -> None:
    # The Dockerfile's steps, in a fresh venv: hashed runtime lock, then the two packages.
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    py = target / "bin" / "python"
    steps = [
        (py, "-m", "pip", "install", "-q", "--require-hashes", "-r", "requirements/runtime.lock"),
        (py, "-m", "pip", "install", "-q", "--no-deps", "./clients/python", "."),
    ]
    for step in steps:
        result = run(*step)
        assert result.returncode == 0, result.stderr[-2000:]
    check = run(
        py,
        "-c",
        "import importlib.util as u, service.app.server; assert u.find_spec('moto') is None",
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    refused = run(target / "bin" / "registry-gateway", "serve", "--embedded", cwd=tmp_path)
    assert refused.returncode != 0 and "embedded" in refused.stderr
