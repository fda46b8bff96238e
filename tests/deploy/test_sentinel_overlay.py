"""deploy/sentinel: production on a Sentinel-backed Redis (issue 23), rendered with
`kubectl kustomize` and validated like the other overlays (tests/deploy/test_kustomize.py);
the config the gateway would load from it is the one `check-config` accepts, in Sentinel
mode, with the password still from the Secret."""

from __future__ import annotations

from pathlib import Path

import yaml

from service.config import from_mapping
from tests.deploy.test_kustomize import ROOT, check_crds, find, render, validate_strictly

SENTINEL = ROOT / "deploy" / "sentinel"


def test_renders_and_validates(tmp_path: Path) -> None:
    docs = render(SENTINEL)
    result = validate_strictly(docs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    check_crds(docs)


def test_the_gateway_finds_redis_through_the_sentinels() -> None:
    docs = render(SENTINEL)
    configmap = find(docs, "ConfigMap", "registry-gateway")
    spec = find(docs, "Deployment", "registry-gateway")["spec"]["template"]["spec"]
    gateway, [init] = spec["containers"][0], spec["initContainers"]
    overrides = {
        e["name"]: e["value"] for e in gateway["env"] if e["name"].startswith("REGISTRY_GATEWAY__")
    }
    # The init container's check-config sees the overrides the gateway loads.
    assert overrides == {
        e["name"]: e["value"] for e in init["env"] if e["name"].startswith("REGISTRY_GATEWAY__")
    }
    assert "REGISTRY_GATEWAY__CACHE__REDIS_URL" not in overrides
    config = from_mapping(yaml.safe_load(configmap["data"]["gateway.yaml"]), environ=overrides)
    assert config.cache.redis_mode() == "sentinel"
    assert config.cache.redis_sentinel is not None
    assert len(config.cache.redis_sentinel.nodes) == 3
    # The password: a variable's name, filled from the Secret, never a value in the config.
    name = config.cache.redis_password_env
    assert name is not None
    secret_env = {e["name"]: e for e in gateway["env"]}
    assert secret_env[name]["valueFrom"]["secretKeyRef"]["name"] == "registry-gateway-redis"
    # The base's single Redis is gone; the NetworkPolicy admits the sentinels' port too.
    assert not [
        d
        for d in docs
        if d["metadata"]["name"] == "registry-gateway-redis"
        and d["kind"] in ("Deployment", "Service")
    ]
    policy = find(docs, "NetworkPolicy", "registry-gateway-redis")
    assert [p["port"] for p in policy["spec"]["ingress"][0]["ports"]] == [6379, 26379]
