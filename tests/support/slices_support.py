"""Shared pieces of the slice tests: a registry shared by two tenants, and AWS seeding."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from moto.ecr.models import ecr_backends

from service.auth.api_keys import hash_key
from service.config import ECR_OPERATIONS
from service.gen.v1 import registry_pb2 as pb
from tests.support.helpers import ACCOUNT, PARTNER_ACCOUNT, config_dict

BILLING_KEY = "test-key-billing"
ADMIN_KEY = "test-key-platform-admin"
SLICE_READS = ["GetReplicationRules", "GetPolicyStatements"]
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


def filters_in(rules: Iterable[pb.ReplicationRule | dict[str, Any]]) -> set[str]:
    """Every repository filter of `rules` (messages, or rules as AWS stores them), whichever
    rule holds it: slices are packed, several tenants' filters sharing one rule."""
    found: set[str] = set()
    for r in rules:
        if isinstance(r, dict):
            found.update(f["filter"] for f in r.get("repositoryFilters", ()))
        else:
            found.update(f.filter for f in r.repository_filters)
    return found


def seed_rules(*rules: dict[str, Any]) -> None:
    """Put rules straight into moto (what another writer, outside the gateway, left)."""
    ecr_backends[ACCOUNT]["us-east-1"].replication_config = {"rules": list(rules)}


def stored_rules() -> list[dict[str, Any]]:
    """The rules moto holds for the shared registry."""
    rules: list[dict[str, Any]] = ecr_backends[ACCOUNT]["us-east-1"].replication_config["rules"]
    return rules


# The repositories a statement of each tenant's Sid prefix acts on: a slice statement must
# stay inside its owner's repositories; other Sids (nobody's) act on every repository.
OWNED_REPOSITORIES = {"Payments": "payments/", "Billing": "billing/"}


def repositories(prefix: str) -> str:
    """The ARN pattern of the shared registry's repositories starting with `prefix`."""
    return f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/{prefix}*"


def statement(sid: str, account: str = PARTNER_ACCOUNT) -> dict[str, Any]:
    """A statement granting `account` replication into the repositories of the Sid's owner."""
    owned = next((p for s, p in OWNED_REPOSITORIES.items() if sid.startswith(s)), "")
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
        "Action": ["ecr:CreateRepository", "ecr:ReplicateImage"],
        "Resource": repositories(owned),
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


# --- isolation: what billing holds that payments must never see nor change ----------------

BILLING_PARTNER = "444455556666"  # the account billing grants to; payments may not
BILLING_FAR = pb.ReplicationDestination(region="ap-southeast-2", registry_id="999999999999")
BILLING_SID = "BillingSecretPull"
BILLING_FILTERS = ("billing/ledger", "invoices/2024")
# Strings only billing's slice holds: none may show in what payments is answered or logs.
BILLING_SECRETS = (
    BILLING_PARTNER,
    BILLING_FAR.registry_id,
    BILLING_FAR.region,
    *BILLING_FILTERS,
    "BillingSecret",
)


def isolation_config(endpoint_url: str) -> dict[str, Any]:
    """shared_config with guardrails that tell the two apart: payments may grant only to
    PARTNER_ACCOUNT, billing only to BILLING_PARTNER, and billing may replicate far away."""
    raw = shared_config(endpoint_url)
    payments, billing = raw["tenants"][0], raw["tenants"][2]
    assert (payments["name"], billing["name"]) == ("payments", "billing")
    payments["policy_guardrails"] = {"principal_accounts": [PARTNER_ACCOUNT]}
    billing["policy_guardrails"] = {"principal_accounts": [BILLING_PARTNER]}
    billing["registries"][0]["replication_destinations"].append(
        {"registry_id": BILLING_FAR.registry_id, "regions": [BILLING_FAR.region]}
    )
    return raw


def billing_rules() -> list[pb.ReplicationRule]:
    """Billing's slice of rules, naming what only billing uses."""
    return [rule(BILLING_FILTERS[0], to=BILLING_FAR), rule(BILLING_FILTERS[1])]


def billing_statement() -> dict[str, Any]:
    """Billing's statement: its partner, its repositories."""
    return statement(BILLING_SID, account=BILLING_PARTNER)


def seed_billing() -> None:
    """Billing's slice straight into moto (rules and policy), as its own writes leave it."""
    seed_rules(
        aws_rule(
            BILLING_FILTERS[0], registry_id=BILLING_FAR.registry_id, region=BILLING_FAR.region
        ),
        aws_rule(BILLING_FILTERS[1]),
    )
    seed_policy(billing_statement())


def billing_slice() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Billing's rules and statements as moto holds them now."""
    rules = [
        r
        for r in stored_rules()
        if r.get("repositoryFilters")
        and all(f["filter"].startswith(("billing/", "invoices/")) for f in r["repositoryFilters"])
    ]
    text = ecr_backends[ACCOUNT]["us-east-1"].registry_policy
    statements = json.loads(text)["Statement"] if text else []
    return rules, [s for s in statements if s.get("Sid", "").startswith("Billing")]


def exposed(answer: Any) -> str:
    """Everything a caller sees of an answer: a response's fields, or an error's message and
    every byte of its trailers (ErrorInfo metadata, BadRequest, QuotaFailure)."""
    if isinstance(answer, grpc.aio.AioRpcError):
        trailers = answer.trailing_metadata() or ()
        raw = b"".join(
            value if isinstance(value, bytes) else str(value).encode() for _, value in trailers
        )
        return f"{answer.details()}\n{raw.decode('utf-8', 'replace')}"
    return str(answer)


def leaked(answer: Any) -> list[str]:
    """Billing's strings found in what an answer exposes."""
    text = exposed(answer)
    return [secret for secret in BILLING_SECRETS if secret in text]


def clear_registry() -> None:
    """No replication rules and no policy in the shared registry."""
    backend = ecr_backends[ACCOUNT]["us-east-1"]
    backend.replication_config = {"rules": []}
    backend.registry_policy = None
