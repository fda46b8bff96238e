"""Target authorization: may this tenant call this RPC on this registry in this region?"""

from __future__ import annotations

from typing import Any

import pytest

from service.auth.targets import TargetAuthorizer
from service.config import GatewayConfig, TenantConfig, from_mapping
from service.ecr import limits as ecr_limits
from service.errors import InvalidArgument, PermissionDenied

PAYMENTS_PROD = "111111111111"
PAYMENTS_DEV = "222222222222"
SHARED = "333333333333"  # another tenant's registry: exists, but not for payments
UNKNOWN = "999999999999"  # no tenant's registry


def config(default_region: str = "eu-west-1") -> GatewayConfig:
    raw: dict[str, Any] = {
        "aws": {"region": default_region},
        "tenants": [
            {
                "name": "solo",
                "registries": [
                    # No regions listed: the configured default region only.
                    {"registry_id": PAYMENTS_PROD, "operations": ["DescribeRegistry"]}
                ],
            },
            {
                "name": "payments",
                "registries": [
                    {
                        "registry_id": PAYMENTS_PROD,
                        "regions": ["us-east-1", "eu-west-1"],
                        "operations": ["DescribeRegistry", "PutRegistryPolicy"],
                    },
                    {
                        "registry_id": PAYMENTS_DEV,
                        "regions": ["us-west-2"],
                        "operations": ["DescribeRegistry"],
                    },
                ],
            },
            {
                "name": "platform",
                "registries": [
                    {
                        "registry_id": SHARED,
                        "regions": ["eu-west-1"],
                        "operations": ["DescribeRegistry"],
                    }
                ],
            },
        ],
    }
    return from_mapping(raw, environ={})


def tenant(cfg: GatewayConfig, name: str) -> TenantConfig:
    [found] = [t for t in cfg.tenants if t.name == name]
    return found


def denied(
    cfg: GatewayConfig, name: str, rpc: str, registry_id: str, region: str
) -> PermissionDenied:
    with pytest.raises(PermissionDenied) as caught:
        TargetAuthorizer(cfg).authorize(tenant(cfg, name), rpc, registry_id, region)
    return caught.value


def test_defaults_to_the_only_registry_and_the_default_region() -> None:
    cfg = config(default_region="eu-west-1")
    target = TargetAuthorizer(cfg).authorize(tenant(cfg, "solo"), "DescribeRegistry", "", "")
    assert (target.tenant, target.registry, target.region) == (
        "solo",
        cfg.tenants[0].registries[0],
        "eu-west-1",
    )
    assert target.share == ecr_limits.NOTHING  # it holds no slice of the registry
    assert target.registry_id == PAYMENTS_PROD


def test_default_region_follows_the_config() -> None:
    cfg = config(default_region="ap-south-1")
    target = TargetAuthorizer(cfg).authorize(tenant(cfg, "solo"), "DescribeRegistry", "", "")
    assert target.region == "ap-south-1"


def test_registry_without_regions_allows_only_the_default_region() -> None:
    cfg = config(default_region="eu-west-1")
    error = denied(cfg, "solo", "DescribeRegistry", PAYMENTS_PROD, "us-east-1")
    assert error.metadata["region"] == "us-east-1"


def test_explicit_registry_and_region_pick_that_entry() -> None:
    cfg = config()
    payments = tenant(cfg, "payments")
    target = TargetAuthorizer(cfg).authorize(
        payments, "DescribeRegistry", PAYMENTS_DEV, "us-west-2"
    )
    assert target.registry is payments.registries[1]
    assert (target.tenant, target.registry_id, target.region) == (
        "payments",
        PAYMENTS_DEV,
        "us-west-2",
    )


def test_several_registries_need_a_registry_id() -> None:
    cfg = config()
    with pytest.raises(InvalidArgument) as caught:
        TargetAuthorizer(cfg).authorize(
            tenant(cfg, "payments"), "DescribeRegistry", "", "us-east-1"
        )
    error = caught.value
    assert error.reason == "REGISTRY_ID_REQUIRED"
    assert [v.field for v in error.field_violations] == ["registry_id"]
    assert error.field_violations[0].description
    # The choices are the caller's own registries, so naming them leaks nothing.
    assert PAYMENTS_PROD in error.message and PAYMENTS_DEV in error.message
    assert SHARED not in error.message


def test_unknown_and_forbidden_registries_look_the_same() -> None:
    cfg = config()
    unknown = denied(cfg, "payments", "DescribeRegistry", UNKNOWN, "eu-west-1")
    forbidden = denied(cfg, "payments", "DescribeRegistry", SHARED, "eu-west-1")
    assert unknown.reason == forbidden.reason == "TARGET_NOT_ALLOWED"
    assert type(unknown) is type(forbidden)
    assert unknown.metadata == {
        "tenant": "payments",
        "rpc": "DescribeRegistry",
        "registryId": UNKNOWN,
        "region": "eu-west-1",
    }
    assert forbidden.metadata == {**unknown.metadata, "registryId": SHARED}
    assert unknown.message.replace(UNKNOWN, "<id>") == forbidden.message.replace(SHARED, "<id>")
    # Nothing names the tenant that does own the shared registry.
    assert "platform" not in forbidden.message
    assert "platform" not in forbidden.metadata.values()


def test_operation_not_listed_is_denied() -> None:
    cfg = config()
    error = denied(cfg, "payments", "DeleteRegistryPolicy", PAYMENTS_PROD, "us-east-1")
    assert error.reason == "TARGET_NOT_ALLOWED"
    assert error.metadata["rpc"] == "DeleteRegistryPolicy"
    assert "DeleteRegistryPolicy" in error.message


def test_operation_allowed_on_one_registry_is_not_allowed_on_another() -> None:
    cfg = config()
    payments = tenant(cfg, "payments")
    allowed = TargetAuthorizer(cfg).authorize(payments, "PutRegistryPolicy", PAYMENTS_PROD, "")
    assert allowed.registry_id == PAYMENTS_PROD
    error = denied(cfg, "payments", "PutRegistryPolicy", PAYMENTS_DEV, "us-west-2")
    assert error.metadata["registryId"] == PAYMENTS_DEV


def test_region_not_listed_is_denied() -> None:
    cfg = config()
    error = denied(cfg, "payments", "DescribeRegistry", PAYMENTS_DEV, "us-east-1")
    assert error.reason == "TARGET_NOT_ALLOWED"
    assert error.metadata["region"] == "us-east-1"
