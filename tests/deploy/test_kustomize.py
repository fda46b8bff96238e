"""The Kustomize base (deploy/k8s) and its overlays (deploy/overlays/*), rendered with
`kubectl kustomize` (kubectl >= 1.27, kustomize v5) and validated: the plain Kubernetes
objects by kubernetes-validate --strict; the Prometheus Operator's ServiceMonitor and
PrometheusRule, whose CRDs kubernetes-validate does not know, by apiVersion, kind and their
required fields only."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import from_mapping

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BASE = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.parent for p in (ROOT / "deploy" / "overlays").glob("*/kustomization.yaml"))
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl (1.27+, with kustomize v5) is not on PATH: the overlays cannot render")
    out = subprocess.run(
        [found, "version", "--client"], capture_output=True, text=True, check=False
    ).stdout
    kustomize = re.search(r"Kustomize Version: v(\d+)\.", out)
    if kustomize is None or int(kustomize.group(1)) < 5:
        pytest.fail(f"kubectl with kustomize v5 needed, found: {out.strip()!r}")
    return found


def render(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def validate_strictly(
    docs: list[dict[str, Any]], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    plain = [d for d in docs if (d["apiVersion"], d["kind"]) not in CRDS]
    out = tmp_path / "rendered.yaml"
    out.write_text(yaml.safe_dump_all(plain))
    return subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def check_crds(docs: list[dict[str, Any]]) -> None:
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    for doc in (monitor, rule):
        assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["metadata"]["name"]
    assert monitor["spec"]["selector"]["matchLabels"] and monitor["spec"]["endpoints"]
    service = find(docs, "Service", "registry-gateway")
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert all(e["port"] in ports for e in monitor["spec"]["endpoints"])
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        assert all(r.get("alert") and r.get("expr") for r in group["rules"])


@pytest.mark.parametrize("path", [BASE, *OVERLAYS], ids=lambda p: p.name)
def test_renders_and_validates(path: Path, tmp_path: Path) -> None:
    docs = render(path)
    result = validate_strictly(docs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    check_crds(docs)


def test_strict_validation_can_fail(tmp_path: Path) -> None:
    docs = render(OVERLAYS[0])
    find(docs, "Deployment", "registry-gateway")["spec"]["replicas"] = "three"
    assert validate_strictly(docs, tmp_path).returncode != 0


def test_crd_checks_can_fail() -> None:
    docs = render(BASE)
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["port"] = "nope"
    with pytest.raises(AssertionError):
        check_crds(docs)


def test_two_overlays_differ_where_environments_do() -> None:
    assert len(OVERLAYS) >= 2
    seen = []
    for overlay in OVERLAYS:
        docs = render(overlay)
        account = find(docs, "ServiceAccount", "registry-gateway")
        arn = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:role/.+", arn)
        deployment = find(docs, "Deployment", "registry-gateway")
        spec = deployment["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        init_env = {e["name"]: e.get("value") for e in spec["initContainers"][0]["env"]}
        url = env["REGISTRY_GATEWAY__CACHE__REDIS_URL"]
        # The init container checks the config the gateway will load: same overrides.
        assert {k: v for k, v in init_env.items() if k.startswith("REGISTRY_GATEWAY__")} == {
            k: v for k, v in env.items() if k.startswith("REGISTRY_GATEWAY__")
        }
        pdb = find(docs, "PodDisruptionBudget", "registry-gateway")
        assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
        seen.append((arn, url, deployment["metadata"]["namespace"], spec["containers"][0]["image"]))
    for column in zip(*seen, strict=True):
        assert len(set(column)) == len(column), column


def test_base_holds_nothing_environment_specific() -> None:
    docs = render(BASE)
    account = find(docs, "ServiceAccount", "registry-gateway")
    assert "eks.amazonaws.com/role-arn" not in (account["metadata"].get("annotations") or {})
    assert all("namespace" not in d["metadata"] for d in docs)


def test_redis_password_comes_from_a_secret_never_the_configmap() -> None:
    docs = render(BASE)
    configmap = find(docs, "ConfigMap", "registry-gateway")
    config = from_mapping(yaml.safe_load(configmap["data"]["gateway.yaml"]), environ={})
    name = config.cache.redis_password_env
    # Only the variable's name: no password in the URL (redis://:pw@host) nor anywhere else.
    assert name and "@" not in config.cache.redis_url
    assert "requirepass" not in configmap["data"]["gateway.yaml"]
    gateway = find(docs, "Deployment", "registry-gateway")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in gateway["containers"][0]["env"]}
    ref = env[name]["valueFrom"]["secretKeyRef"]
    redis = find(docs, "Deployment", "registry-gateway-redis")["spec"]["template"]["spec"]
    container = redis["containers"][0]
    assert "--requirepass" in container["args"]
    redis_env = {e["name"]: e for e in container["env"]}
    assert redis_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref


def test_only_the_gateway_reaches_redis() -> None:
    docs = render(BASE)
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    redis = find(docs, "Deployment", "registry-gateway-redis")
    gateway = find(docs, "Deployment", "registry-gateway")
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected.items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    assert not selected.items() <= gateway["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    [peer] = rule["from"]
    assert set(peer) == {"podSelector"}  # no namespaceSelector/ipBlock: same namespace only
    allowed = peer["podSelector"]["matchLabels"]
    assert allowed.items() <= gateway["spec"]["template"]["metadata"]["labels"].items()
    assert not allowed.items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    assert [p["port"] for p in rule["ports"]] == [6379]


def test_init_container_checks_the_mounted_config() -> None:
    docs = render(BASE)
    spec = find(docs, "Deployment", "registry-gateway")["spec"]["template"]["spec"]
    [init] = spec["initContainers"]
    assert init["command"][:2] == ["registry-gateway", "check-config"]
    config_path = Path(init["command"][2])
    gateway = spec["containers"][0]
    assert gateway["args"] == ["--config", str(config_path)]
    assert init["image"] == gateway["image"]
    mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    assert mounts[str(config_path.parent)] == "config"
    # The command exists and validates the shipped config.
    configmap = find(docs, "ConfigMap", "registry-gateway")
    result = subprocess.run(
        [str(BIN / "registry-gateway"), "check-config", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "gateway.yaml" in configmap["data"]


def prometheus_rule() -> dict[str, Any]:
    groups = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "registry-gateway",
            "labels": {"app.kubernetes.io/name": "registry-gateway"},
        },
        "spec": {"groups": groups["groups"]},
    }


def test_prometheus_rule_holds_the_alerts_file() -> None:
    shipped = yaml.safe_load((BASE / "prometheusrule.yaml").read_text())
    assert shipped == prometheus_rule(), (
        "regenerate: .venv/bin/python -m tests.deploy.test_kustomize"
    )


if __name__ == "__main__":
    head = (
        "# deploy/prometheus/alerts.yaml as a Prometheus Operator PrometheusRule: the same "
        "groups,\n"
        "# kept equal by tests/deploy/test_kustomize.py (edit alerts.yaml, then regenerate this "
        "with\n"
        "# `.venv/bin/python -m tests.deploy.test_kustomize`).\n"
    )
    (BASE / "prometheusrule.yaml").write_text(
        head + yaml.safe_dump(prometheus_rule(), sort_keys=False, width=100)
    )
