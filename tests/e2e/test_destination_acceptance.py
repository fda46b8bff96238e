"""A replication write to another account is checked against the destination's registry
policy before it is written (service/registry/rpcs/destinations.py), against moto with two
accounts: the source (moto's default credentials) and a destination reached by role_arn."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from moto.ecr.models import ecr_backends

from service.auth.api_keys import hash_key
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory, wait_until
from tests.support.helpers import (
    ACCOUNT,
    KEY,
    OTHER_ACCOUNT,
    OTHER_KEY,
    PARTNER_ACCOUNT,
    config_dict,
    metadata,
    rich_error,
)
from tests.support.moto_writes import behave_like_ecr
from tests.support.slices_support import aws_rule, seed_rules

UNREADABLE_ACCOUNT = "222222222222"  # configured, but its credentials reach another account
DEST = pb.ReplicationDestination(registry_id=OTHER_ACCOUNT, region="eu-west-1")
REPOS = f"arn:aws:ecr:eu-west-1:{OTHER_ACCOUNT}:repository/*"
BOTH = ["ecr:CreateRepository", "ecr:ReplicateImage"]
SECRET = "SecretPartnerDetail"  # in the destination's other statements: never shown


def two_accounts(aws: str, audit: Path | None = None) -> dict[str, Any]:
    raw = config_dict(aws)
    payments = raw["tenants"][0]["registries"][0]
    payments["replication_destinations"] += [
        {"registry_id": OTHER_ACCOUNT, "regions": ["eu-west-1"]},
        {"registry_id": UNREADABLE_ACCOUNT, "regions": ["eu-west-1"]},
    ]
    # The destination accounts are registries of the config (another tenant's, read only):
    # the gateway can read their policies with their entries' credentials.
    raw["tenants"].append(
        {
            "name": "partner-side",
            "api_keys": [hash_key("test-key-partner-side")],
            "registries": [
                {
                    "registry_id": OTHER_ACCOUNT,
                    "role_arn": f"arn:aws:iam::{OTHER_ACCOUNT}:role/registry-gateway",
                    "regions": ["eu-west-1"],
                    "operations": ["GetRegistryPolicy"],
                },
                {
                    "registry_id": UNREADABLE_ACCOUNT,
                    "regions": ["eu-west-1"],
                    "operations": ["GetRegistryPolicy"],
                },
            ],
        }
    )
    if audit is not None:
        raw["audit"] = {"path": str(audit)}
    return raw


def destination_policy(*statements: dict[str, Any]) -> None:
    ecr_backends[OTHER_ACCOUNT]["eu-west-1"].registry_policy = json.dumps(
        {"Version": "2012-10-17", "Statement": list(statements)}
    )


def allow(principal: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "Sid": "AllowSource",
        "Effect": "Allow",
        "Principal": principal or {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
        "Action": BOTH,
        "Resource": REPOS,
        **extra,
    }


def secret_statements() -> list[dict[str, Any]]:
    """Statements of the destination's own that the source's tenant must never see."""
    return [
        {
            "Sid": f"{SECRET}One",
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::999999999999:root"},
            "Action": ["ecr:ReplicateImage"],
            "Resource": f"arn:aws:ecr:eu-west-1:{OTHER_ACCOUNT}:repository/{SECRET.lower()}/*",
        }
    ]


def written() -> list[dict[str, Any]]:
    """The rules moto holds for the source registry."""
    stored = ecr_backends[ACCOUNT]["us-east-1"].replication_config or {}
    rules: list[dict[str, Any]] = stored.get("rules", [])
    return rules


def full_write(
    *destinations: pb.ReplicationDestination, validate_only: bool = False
) -> pb.PutReplicationConfigurationRequest:
    return pb.PutReplicationConfigurationRequest(
        registry_id=ACCOUNT,
        region="us-east-1",
        validate_only=validate_only,
        replication_configuration=pb.ReplicationConfiguration(
            rules=[pb.ReplicationRule(destinations=list(destinations))]
        ),
    )


async def put(gateway_port: int, request: Any, key: str = KEY) -> tuple[Any, dict[str, Any]]:
    """The answer of a write and its trailers."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway_port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        method = (
            stub.PutReplicationRules
            if isinstance(request, pb.PutReplicationRulesRequest)
            else stub.PutReplicationConfiguration
        )
        call = method(request, metadata=metadata(key) if key else ())
        answer = await call
        trailers = dict(await call.trailing_metadata() or ())
        return answer, trailers


async def refused(gateway_port: int, request: Any, key: str = KEY) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await put(gateway_port, request, key)
    return rich_error(caught.value)


def statement_in(message: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(message[message.index("{") : message.rindex("}") + 1])
    return found


async def test_no_policy_is_refused_with_the_statement_to_add(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    gateway = await gateway_factory(two_accounts(aws))
    err = await refused(gateway.port, full_write(DEST))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.info.reason == "DESTINATION_NOT_ACCEPTING"
    assert err.info.metadata["destinationRegistryId"] == OTHER_ACCOUNT
    assert err.info.metadata["destinationRegion"] == "eu-west-1"
    assert err.info.metadata["missingActions"] == ",".join(BOTH)
    statement = statement_in(err.message)
    assert statement["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    assert statement["Action"] == BOTH and statement["Resource"] == REPOS
    assert not written()
    # The statement a user pastes makes the same write go through.
    destination_policy(statement)
    gateway = await gateway_factory(two_accounts(aws))  # a fresh cache
    answer, trailers = await put(gateway.port, full_write(DEST))
    assert answer.replication_configuration.rules[0].destinations[0] == DEST
    assert "x-unverified-destinations" not in trailers
    assert written()[0]["destinations"][0]["registryId"] == OTHER_ACCOUNT


async def test_an_allow_accepts(gateway_factory: GatewayFactory, aws: str) -> None:
    destination_policy(allow({"AWS": ACCOUNT}))
    gateway = await gateway_factory(two_accounts(aws))
    _, trailers = await put(gateway.port, full_write(DEST))
    assert "x-unverified-destinations" not in trailers
    assert written()


async def test_an_explicit_deny_wins_over_an_allow(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    gateway = await gateway_factory(two_accounts(aws))
    none = await refused(gateway.port, full_write(DEST))
    destination_policy(allow(), {**allow(), "Sid": "DenySource", "Effect": "Deny"})
    gateway = await gateway_factory(two_accounts(aws))  # a fresh cache
    err = await refused(gateway.port, full_write(DEST))
    assert err.info.reason == "DESTINATION_NOT_ACCEPTING"
    assert err.info.metadata["missingActions"] == ",".join(BOTH)
    assert not written()
    # Hostile: a Deny is not told apart from no policy at all (that is the destination's
    # policy): the same answer but for the request id.
    assert err.message == none.message
    without_id = {k: v for k, v in err.info.metadata.items() if k != "requestId"}
    assert without_id == {k: v for k, v in none.info.metadata.items() if k != "requestId"}


@pytest.mark.parametrize(
    ("condition", "accepted"),
    [
        (None, True),
        ({"StringEquals": {"aws:SourceAccount": ACCOUNT}}, True),
        ({"StringLike": {"aws:PrincipalAccount": "1234*"}}, True),
        ({"StringEquals": {"aws:SourceAccount": "999999999999"}}, False),
    ],
)
async def test_a_wildcard_principal_with_and_without_a_condition(
    gateway_factory: GatewayFactory, aws: str, condition: Any, accepted: bool
) -> None:
    destination_policy(allow("*", **({"Condition": condition} if condition else {})))
    gateway = await gateway_factory(two_accounts(aws))
    if accepted:
        _, trailers = await put(gateway.port, full_write(DEST))
        assert "x-unverified-destinations" not in trailers
        assert written()
    else:
        err = await refused(gateway.port, full_write(DEST))
        assert err.info.reason == "DESTINATION_NOT_ACCEPTING"
        assert not written()


async def test_a_condition_it_cannot_evaluate_is_unverified_never_allowed(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    destination_policy(allow("*", Condition={"StringEquals": {"aws:PrincipalOrgID": "o-x"}}))
    gateway = await gateway_factory(two_accounts(aws))
    _, trailers = await put(gateway.port, full_write(DEST))
    assert trailers["x-unverified-destinations"] == f"{OTHER_ACCOUNT}/eu-west-1"


async def test_unreadable_and_unconfigured_destinations_go_through_unverified(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    gateway = await gateway_factory(two_accounts(aws, audit))
    unreadable = pb.ReplicationDestination(registry_id=UNREADABLE_ACCOUNT, region="eu-west-1")
    outside = pb.ReplicationDestination(registry_id=PARTNER_ACCOUNT, region="us-west-2")
    _, trailers = await put(gateway.port, full_write(unreadable, outside))
    expected = f"{UNREADABLE_ACCOUNT}/eu-west-1,{PARTNER_ACCOUNT}/us-west-2"
    assert trailers["x-unverified-destinations"] == expected
    assert len(written()[0]["destinations"]) == 2

    def audited() -> list[dict[str, Any]]:
        if not audit.exists():
            return []
        return [json.loads(line) for line in audit.read_text().splitlines()]

    [line] = await wait_until(audited, what="the audit line")
    assert line["unverified_destinations"] == expected


async def test_same_account_needs_no_policy(gateway_factory: GatewayFactory, aws: str) -> None:
    gateway = await gateway_factory(two_accounts(aws))
    same = pb.ReplicationDestination(registry_id=ACCOUNT, region="eu-west-1")
    _, trailers = await put(gateway.port, full_write(same))
    assert "x-unverified-destinations" not in trailers
    assert written()


async def test_dry_run_answers_the_same_and_writes_nothing(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    gateway = await gateway_factory(two_accounts(aws))
    err = await refused(gateway.port, full_write(DEST, validate_only=True))
    assert err.info.reason == "DESTINATION_NOT_ACCEPTING"
    outside = pb.ReplicationDestination(registry_id=PARTNER_ACCOUNT, region="us-west-2")
    answer, trailers = await put(gateway.port, full_write(outside, validate_only=True))
    assert trailers["x-unverified-destinations"] == f"{PARTNER_ACCOUNT}/us-west-2"
    assert len(answer.changes) > 0
    assert not written()


async def test_slices_judge_only_the_callers_rules(
    gateway_factory: GatewayFactory, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave_like_ecr(monkeypatch)
    # Someone else's rule to the destination that does not accept: not the caller's to fix.
    seed_rules(aws_rule("billing/", registry_id=OTHER_ACCOUNT))
    gateway = await gateway_factory(two_accounts(aws))
    mine = pb.ReplicationRule(
        destinations=[pb.ReplicationDestination(registry_id=ACCOUNT, region="eu-west-1")],
        repository_filters=[pb.RepositoryFilter(filter="payments/", filter_type="PREFIX_MATCH")],
    )
    request = pb.PutReplicationRulesRequest(registry_id=ACCOUNT, region="us-east-1", rules=[mine])
    _, trailers = await put(gateway.port, request)
    assert "x-unverified-destinations" not in trailers
    assert len(written()) == 2
    # Its own rule to that destination is refused, dry run or not; nothing changes.
    to_other = pb.ReplicationRule(
        destinations=[DEST],
        repository_filters=[pb.RepositoryFilter(filter="payments/", filter_type="PREFIX_MATCH")],
    )
    for validate_only in (True, False):
        err = await refused(
            gateway.port,
            pb.PutReplicationRulesRequest(
                registry_id=ACCOUNT,
                region="us-east-1",
                rules=[to_other],
                validate_only=validate_only,
            ),
        )
        assert err.info.reason == "DESTINATION_NOT_ACCEPTING"
    assert len(written()) == 2


# --- the plan of a dry run and the answer of a write name them; over HTTP/JSON too -----------

UNREADABLE = pb.ReplicationDestination(registry_id=UNREADABLE_ACCOUNT, region="eu-west-1")
OUTSIDE = pb.ReplicationDestination(registry_id=PARTNER_ACCOUNT, region="us-west-2")
SAME = pb.ReplicationDestination(registry_id=ACCOUNT, region="eu-west-1")


async def test_the_plan_of_a_dry_run_names_the_unverified_destinations(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    destination_policy(allow())  # DEST accepts: verified, so never named
    gateway = await gateway_factory(two_accounts(aws))
    answer, trailers = await put(
        gateway.port, full_write(SAME, DEST, UNREADABLE, OUTSIDE, validate_only=True)
    )
    # In the rules' order, as the trailer names them; beside the plan's changes.
    assert list(answer.unverified_destinations) == [UNREADABLE, OUTSIDE]
    assert trailers["x-unverified-destinations"] == (
        f"{UNREADABLE_ACCOUNT}/eu-west-1,{PARTNER_ACCOUNT}/us-west-2"
    )
    assert len(answer.changes) > 0
    assert not written()
    # The write answers the same, and writes.
    answer, _ = await put(gateway.port, full_write(SAME, DEST, UNREADABLE, OUTSIDE))
    assert list(answer.unverified_destinations) == [UNREADABLE, OUTSIDE]
    assert len(written()[0]["destinations"]) == 4
    # Every destination verified (or same-account): the plan names none.
    answer, trailers = await put(gateway.port, full_write(SAME, DEST, validate_only=True))
    assert list(answer.unverified_destinations) == []
    assert "x-unverified-destinations" not in trailers


async def test_a_slice_plan_names_only_the_callers_unverified_destinations(
    gateway_factory: GatewayFactory, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave_like_ecr(monkeypatch)
    # Someone else's rule to a destination the gateway cannot verify: not the caller's to see.
    seed_rules(aws_rule("billing/", registry_id=UNREADABLE_ACCOUNT))
    gateway = await gateway_factory(two_accounts(aws))

    def mine(*to: pb.ReplicationDestination) -> pb.PutReplicationRulesRequest:
        rule = pb.ReplicationRule(
            destinations=list(to),
            repository_filters=[
                pb.RepositoryFilter(filter="payments/", filter_type="PREFIX_MATCH")
            ],
        )
        return pb.PutReplicationRulesRequest(registry_id=ACCOUNT, region="us-east-1", rules=[rule])

    for validate_only in (True, False):
        request = mine(SAME, OUTSIDE)
        request.validate_only = validate_only
        answer, trailers = await put(gateway.port, request)
        assert list(answer.unverified_destinations) == [OUTSIDE]
        assert trailers["x-unverified-destinations"] == f"{PARTNER_ACCOUNT}/us-west-2"
        assert UNREADABLE_ACCOUNT not in repr(answer) + repr(trailers)
    assert len(written()) == 2
    answer, trailers = await put(gateway.port, mine(SAME))
    assert list(answer.unverified_destinations) == []
    assert "x-unverified-destinations" not in trailers


async def test_over_http_the_plan_the_header_and_the_refusal(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    raw = two_accounts(aws)
    raw["http"] = {"listen": "127.0.0.1:0"}
    gateway = await gateway_factory(raw)
    url = f"http://127.0.0.1:{gateway.http_port}/ecr.registry.v1.RegistryConfigService"

    def body(registry_id: str, region: str) -> dict[str, Any]:
        destinations = [{"region": region, "registryId": registry_id}]
        return {
            "validateOnly": True,
            "replicationConfiguration": {"rules": [{"destinations": destinations}]},
        }

    async with httpx.AsyncClient(headers={"authorization": f"Bearer {KEY}"}) as client:
        reply = await client.post(
            f"{url}/PutReplicationConfiguration", json=body(PARTNER_ACCOUNT, "us-west-2")
        )
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-unverified-destinations"] == f"{PARTNER_ACCOUNT}/us-west-2"
        assert reply.json()["unverifiedDestinations"] == [
            {"region": "us-west-2", "registryId": PARTNER_ACCOUNT}
        ]
        reply = await client.post(
            f"{url}/PutReplicationConfiguration", json=body(OTHER_ACCOUNT, "eu-west-1")
        )
    assert reply.status_code == 400, reply.text
    error = reply.json()
    assert error["code"] == "failed_precondition"
    [info] = [d["debug"] for d in error["details"] if d["type"] == "google.rpc.ErrorInfo"]
    assert info["reason"] == "DESTINATION_NOT_ACCEPTING"
    assert info["metadata"]["destinationRegistryId"] == OTHER_ACCOUNT
    assert statement_in(error["message"])["Action"] == BOTH
    assert "x-unverified-destinations" not in reply.headers
    assert not written()


# --- hostile: what a tenant can learn of another account's policy -----------------------------


async def test_a_refusal_never_shows_the_destination_policy(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    # Refused by a Deny among statements of the destination's own: the answer holds the
    # verdict and the missing statement, nothing of the policy.
    deny = {**allow("*"), "Sid": f"{SECRET}Deny", "Effect": "Deny"}
    destination_policy(*secret_statements(), allow(), deny)
    gateway = await gateway_factory(two_accounts(aws))
    err = await refused(gateway.port, full_write(DEST))
    assert err.info.reason == "DESTINATION_NOT_ACCEPTING"
    shown = err.message + repr(err.trailing)
    for secret in (SECRET, SECRET.lower(), "999999999999", "AllowSource"):
        assert secret not in shown
    assert statement_in(err.message)["Sid"] == f"ReplicationFrom{ACCOUNT}"


async def test_an_unverified_destination_tells_nothing_of_why(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    destination_policy(
        *secret_statements(), allow("*", Condition={"StringEquals": {"aws:PrincipalOrgID": SECRET}})
    )
    gateway = await gateway_factory(two_accounts(aws))
    _, trailers = await put(gateway.port, full_write(DEST))
    assert trailers["x-unverified-destinations"] == f"{OTHER_ACCOUNT}/eu-west-1"
    assert SECRET not in repr(trailers)


async def test_a_destination_the_tenant_may_not_name_is_never_judged(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    # A region of the destination account off the tenant's allow-list: the content rule
    # answers, never a verdict on that region's policy (it has none: it would be refused).
    gateway = await gateway_factory(two_accounts(aws))
    elsewhere = pb.ReplicationDestination(registry_id=OTHER_ACCOUNT, region="ap-southeast-2")
    err = await refused(gateway.port, full_write(elsewhere))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert err.info.reason == "DESTINATION_NOT_ALLOWED"
    mine = pb.ReplicationRule(
        destinations=[elsewhere],
        repository_filters=[pb.RepositoryFilter(filter="payments/", filter_type="PREFIX_MATCH")],
    )
    err = await refused(
        gateway.port,
        pb.PutReplicationRulesRequest(registry_id=ACCOUNT, region="us-east-1", rules=[mine]),
    )
    assert err.info.reason == "DESTINATION_NOT_ALLOWED"


async def test_a_caller_that_may_not_write_learns_no_verdict(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    # A tenant without the write RPC, and a stranger without credentials, asking for a dry
    # run to the destination: refused before any verdict, the same answer whether the
    # destination accepts or not (but for the request id).
    answers: list[list[tuple[Any, str, dict[str, str]]]] = []
    for policy in ((), (allow(),)):
        destination_policy(*policy)
        gateway = await gateway_factory(two_accounts(aws))  # a fresh cache
        seen = []
        for key, code in ((OTHER_KEY, grpc.StatusCode.PERMISSION_DENIED), ("", None)):
            err = await refused(gateway.port, full_write(DEST, validate_only=True), key)
            assert err.code == (code or grpc.StatusCode.UNAUTHENTICATED)
            metadata = {k: v for k, v in err.info.metadata.items() if k != "requestId"}
            assert OTHER_ACCOUNT not in err.message + repr(metadata)
            assert "x-unverified-destinations" not in err.trailing
            seen.append((err.code, err.message, metadata))
        answers.append(seen)
    assert answers[0] == answers[1]
    assert not written()


async def test_unreadable_and_unconfigured_look_alike(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    # Why a destination was not verified (no registry entry, a policy it cannot read, one it
    # cannot judge) is never told: only `account/region`, in the trailer and the plan.
    destination_policy(allow("*", Condition={"StringEquals": {"aws:PrincipalOrgID": SECRET}}))
    gateway = await gateway_factory(two_accounts(aws))
    for destination in (DEST, UNREADABLE, OUTSIDE):
        answer, trailers = await put(gateway.port, full_write(destination, validate_only=True))
        assert list(answer.unverified_destinations) == [destination]
        shown = {k: v for k, v in trailers.items() if k.startswith("x-") and k != "x-request-id"}
        assert shown == {
            "x-unverified-destinations": f"{destination.registry_id}/{destination.region}"
        }
        assert SECRET not in repr(answer)


# --- the background drift check judges the configured rules' destinations again -------------


async def test_the_drift_check_reports_a_destination_that_stops_accepting(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    raw = two_accounts(aws, audit)
    raw["drift"] = {"check_seconds": 0.3, "clock_skew_seconds": 0}
    destination_policy(allow())
    gateway = await gateway_factory(raw)
    await put(gateway.port, full_write(DEST))
    labels = {
        "registry_id": ACCOUNT,
        "region": "us-east-1",
        "destination": f"{OTHER_ACCOUNT}/eu-west-1",
    }

    def gauge() -> float | None:
        return gateway.metrics.registry.get_sample_value(
            "registry_gateway_replication_destination_accepting", labels
        )

    def refusals() -> list[dict[str, Any]]:
        if not audit.exists():
            return []
        found = [json.loads(line) for line in audit.read_text().splitlines()]
        return [e for e in found if e.get("event") == "destination_not_accepting"]

    await wait_until(lambda: gauge() == 1, what="the destination judged accepting")
    assert refusals() == []
    # Someone edits the destination's policy: a Deny of the source, among its own statements.
    destination_policy(*secret_statements(), allow(), {**allow(), "Effect": "Deny"})
    await wait_until(lambda: gauge() == 0, what="the destination judged not accepting")
    [event] = await wait_until(refusals, what="the audit event")
    assert event["registry_id"] == ACCOUNT and event["region"] == "us-east-1"
    assert event["destination"] == f"{OTHER_ACCOUNT}/eu-west-1"
    assert event["explicit_deny"] is True
    assert SECRET not in json.dumps(event)
    # Later checks still see it refusing, and do not report it again.
    await asyncio.sleep(1.0)
    assert len(refusals()) == 1
    # Accepting again: the gauge follows.
    destination_policy(allow())
    await wait_until(lambda: gauge() == 1, what="the destination accepting again")
