"""What ships: the Dockerfile lints, the image's install steps work in a clean venv without
moto, the Kubernetes manifests validate, and the shipped gateway config loads."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from service.config import ECR_OPERATIONS, from_mapping
from tests.support.venvs import layered_venv, locked_venv, pip

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The base's plain Kubernetes files; kustomization.yaml and the Prometheus Operator CRs
# (servicemonitor.yaml, prometheusrule.yaml) are checked in tests/deploy/test_kustomize.py.
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
    # SIGKILL must not come before the drain, the grace period and the writes' settling
    # (with a second for the last audit lines) are over.
    assert spec["terminationGracePeriodSeconds"] > (
        config.server.drain_seconds + config.server.grace_seconds + config.server.settle_seconds + 1
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


def build_server_wheel(dest: Path) -> Path:
    """The server's wheel, built by the dev venv's setuptools from a copy of what the
    Dockerfile copies (so no build/ or egg-info lands in the tree)."""
    source = dest / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "service", source / "service", ignore=shutil.ignore_patterns("__pycache__")
    )
    built = run(
        sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "--wheel-dir", dest / "dist", source,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (dest / "dist").glob("registry_config_gateway-*.whl")
    return wheel


def test_image_install_steps_work_in_a_clean_venv(tmp_path: Path) -> None:
    # The Dockerfile's steps: the hashed runtime lock in a clean venv (made once per lock:
    # tests/support/venvs.py), then the server in a fresh venv on top of it, WITH its dependencies
    # but with no index: every requirement it declares must be met by runtime.lock, so it
    # depends on nothing unpublished (not the client).
    base = locked_venv("runtime", ROOT / "requirements" / "runtime.lock")
    target = tmp_path / "venv"
    py = layered_venv(base, target)
    wheel = build_server_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for shipped in ("registry_descriptor.binpb", "registry_pb2.pyi", "registry_pb2_grpc.pyi"):
        assert f"service/gen/v1/{shipped}" in names, shipped
    pip("--python", py, "install", "--no-index", "--no-compile", wheel)
    pip("--python", py, "check")
    # No moto, no client, no top-level `ecr`; the descriptor set reflection serves is there.
    # (`serve` below imports the whole server: no second import of it here.)
    check = run(
        py,
        "-c",
        "import importlib.util as u, importlib.resources as r;"
        "assert [m for m in ('moto', 'registry_gateway_client', 'ecr') if u.find_spec(m)] == [];"
        "r.files('service.gen.v1').joinpath('registry_descriptor.binpb').read_bytes()",
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    refused = run(target / "bin" / "registry-gateway", "serve", "--embedded", cwd=tmp_path)
    assert refused.returncode != 0 and "embedded" in refused.stderr
