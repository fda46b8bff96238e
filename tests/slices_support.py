"""Shared pieces of the slice tests: a registry shared by two tenants, and AWS seeding."""

from __future__ import annotations

import json
from typing import Any

import grpc
from ecr.registry.v1 import registry_pb2 as pb
from google.rpc import error_details_pb2, status_pb2
from moto.ecr.models import ecr_backends

from service.auth.api_keys import hash_key
from service.config import ECR_OPERATIONS
from tests.helpers import ACCOUNT, PARTNER_ACCOUNT, config_dict

BILLING_KEY = "test-key-billing"
ADMIN_KEY = "test-key-platform-admin"
SLICE_READS = ["DescribeRegistry", "GetReplicationRules", "GetPolicyStatements"]
SLICE_WRITES = ["PutReplicationRules", "PutPolicyStatements"]
EU = pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)
PARTNER = pb.ReplicationDestination(region="us-west-2", registry_id=PARTNER_ACCOUNT)


def shared_config(endpoint_url: str) -> dict[str, Any]:
    """config_dict plus `billing` (owns billing/ and Billing) and `platform` (the five only).

    `payments` (config_dict's) owns payments/ and Payments and may call everything.
    """
    raw = config_dict(endpoint_url)
    raw["tenants"] += [
        {
            "name": "billing",
            "api_keys": [hash_key(BILLING_KEY)],
            "registries": [
                {
                    "registry_id": ACCOUNT,
                    "regions": ["us-east-1"],
                    "operations": SLICE_READS + SLICE_WRITES,
                    "owned_repository_prefixes": ["billing/", "invoices/"],
                    "owned_statement_sid_prefix": "Billing",
                    "replication_destinations": [
                        {"registry_id": ACCOUNT, "regions": ["eu-west-1"]},
                        {"registry_id": PARTNER_ACCOUNT, "regions": ["us-west-2"]},
                    ],
                }
            ],
        },
        {
            "name": "platform",
            "api_keys": [hash_key(ADMIN_KEY)],
            "registries": [
                {
                    "registry_id": ACCOUNT,
                    "regions": ["us-east-1"],
                    "operations": list(ECR_OPERATIONS),
                    "replication_destinations": [
                        {"registry_id": ACCOUNT, "regions": ["eu-west-1"]},
                        {"registry_id": PARTNER_ACCOUNT, "regions": ["us-west-2"]},
                    ],
                }
            ],
        },
    ]
    return raw


def rule(*filters: str, to: pb.ReplicationDestination = EU) -> pb.ReplicationRule:
    """A rule replicating `filters` (prefix matches; none: every repository) to `to`."""
    return pb.ReplicationRule(
        destinations=[to],
        repository_filters=[
            pb.RepositoryFilter(filter=f, filter_type="PREFIX_MATCH") for f in filters
        ],
    )


def aws_rule(
    *filters: str, registry_id: str = ACCOUNT, region: str = "eu-west-1"
) -> dict[str, Any]:
    """A rule as AWS stores it."""
    found: dict[str, Any] = {"destinations": [{"region": region, "registryId": registry_id}]}
    if filters:
        found["repositoryFilters"] = [{"filter": f, "filterType": "PREFIX_MATCH"} for f in filters]
    return found


def seed_rules(*rules: dict[str, Any]) -> None:
    """Put rules straight into moto (what another writer, outside the gateway, left)."""
    ecr_backends[ACCOUNT]["us-east-1"].replication_config = {"rules": list(rules)}


def stored_rules() -> list[dict[str, Any]]:
    """The rules moto holds for the shared registry."""
    rules: list[dict[str, Any]] = ecr_backends[ACCOUNT]["us-east-1"].replication_config["rules"]
    return rules


def statement(sid: str, account: str = PARTNER_ACCOUNT) -> dict[str, Any]:
    """A statement granting `account` replication into the registry."""
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
        "Action": ["ecr:CreateRepository", "ecr:ReplicateImage"],
        "Resource": f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/*",
    }


def seed_policy(*statements: dict[str, Any]) -> None:
    """Put a policy of `statements` straight into moto."""
    policy = {"Version": "2012-10-17", "Statement": list(statements)}
    ecr_backends[ACCOUNT]["us-east-1"].registry_policy = json.dumps(policy)


def stored_sids() -> list[str] | None:
    """The Sids of the policy moto holds, in order; None when there is none."""
    text = ecr_backends[ACCOUNT]["us-east-1"].registry_policy
    if text is None:
        return None
    return [s["Sid"] for s in json.loads(text)["Statement"]]


def quota_failure(error: grpc.aio.AioRpcError) -> error_details_pb2.QuotaFailure:
    """The QuotaFailure detail of a failed call (fails the test when there is none)."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            found = error_details_pb2.QuotaFailure()
            detail.Unpack(found)
            return found
    raise AssertionError("no QuotaFailure in the status")
