"""Which view of a resource's history a tenant gets (service/auth/history.py)."""

from __future__ import annotations

import pytest

from service.auth.history import history_view
from service.auth.targets import Target
from service.config import RegistryConfig
from service.errors import PermissionDenied

ACCOUNT = "123456789012"


def target(
    *operations: str, prefixes: tuple[str, ...] = (), sid_prefix: str | None = None
) -> Target:
    registry = RegistryConfig(
        registry_id=ACCOUNT,
        regions=("us-east-1",),
        operations=("GetConfigurationHistory", *operations),
        owned_repository_prefixes=prefixes,
        owned_statement_sid_prefix=sid_prefix,
    )
    return Target(tenant="payments", registry=registry, region="us-east-1")


def test_the_full_read_rpc_gives_the_whole_history_of_its_resource_only() -> None:
    admin = target("DescribeRegistry", prefixes=("payments/",), sid_prefix="Payments")
    assert history_view(admin, "registry") == "full"
    # DescribeRegistry says nothing of the policy; the slice read RPC is not listed either.
    with pytest.raises(PermissionDenied):
        history_view(admin, "policy")
    assert history_view(target("GetRegistryPolicy"), "policy") == "full"


def test_the_slice_read_rpc_and_a_slice_give_the_slice() -> None:
    owner = target(
        "GetReplicationRules",
        "GetPolicyStatements",
        prefixes=("payments/",),
        sid_prefix="Payments",
    )
    assert history_view(owner, "registry") == "slice"
    assert history_view(owner, "policy") == "slice"
    # The full read RPC wins: it shows every slice anyway.
    both = target("GetRegistryPolicy", "GetPolicyStatements", sid_prefix="Payments")
    assert history_view(both, "policy") == "full"


@pytest.mark.parametrize(
    ("granted", "resource", "needs"),
    [
        # Only the history RPC itself.
        (target(), "registry", "DescribeRegistry"),
        (target(), "policy", "GetRegistryPolicy"),
        # The slice read RPC without a slice of that resource to show.
        (target("GetReplicationRules", sid_prefix="Payments"), "registry", "GetReplicationRules"),
        (
            target("GetPolicyStatements", prefixes=("payments/",)),
            "policy",
            "owned_statement_sid_prefix",
        ),
        # Writes do not read.
        (
            target("PutReplicationConfiguration", "PutReplicationRules", prefixes=("payments/",)),
            "registry",
            "DescribeRegistry",
        ),
    ],
)
def test_anything_else_is_refused_naming_the_resource_and_what_would_allow_it(
    granted: Target, resource: str, needs: str
) -> None:
    with pytest.raises(PermissionDenied) as exc:
        history_view(granted, resource)  # type: ignore[arg-type]
    error = exc.value
    assert error.reason == "HISTORY_VIEW_NOT_ALLOWED"
    assert needs in error.message
    what = "replication configuration" if resource == "registry" else "registry policy"
    assert what in error.message
    assert error.metadata == {
        "tenant": "payments",
        "rpc": "GetConfigurationHistory",
        "registryId": ACCOUNT,
        "region": "us-east-1",
        "resource": (
            "HISTORY_RESOURCE_REPLICATION" if resource == "registry" else "HISTORY_RESOURCE_POLICY"
        ),
    }
