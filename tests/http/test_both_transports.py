"""A representative set of the e2e suite's cases, each run over both transports (gRPC, and
Connect over HTTP/JSON) from one parametrized fixture (`transport`, tests/http/conftest.py):
each RPC's success, each mapped error, authorization denials, validation, etag conflicts,
slices, deadlines, and the per-call facts (`x-request-id`, `x-cache`).

The same gateway answers both: the same code, reason, field paths and details, and over
HTTP the status the Connect spec gives each code (checked in tests/http/support.py)."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from service.app.server import Gateway
from service.gen.v1 import registry_pb2 as pb
from tests.conftest import Gate, GatewayFactory
from tests.http.conftest import Connect, http_config, with_http
from tests.http.support import Transport
from tests.support.helpers import (
    ACCOUNT,
    OTHER_ACCOUNT,
    OTHER_KEY,
    PARTNER_ACCOUNT,
    POLICY,
    config_dict,
)
from tests.support.moto_writes import behave_like_ecr
from tests.support.slices_support import EU, aws_rule, rule, seed_rules, statement, stored_rules

OK = grpc.StatusCode.OK


def replication(*destinations: pb.ReplicationDestination) -> pb.ReplicationConfiguration:
    return pb.ReplicationConfiguration(
        rules=[
            pb.ReplicationRule(
                destinations=list(destinations),
                repository_filters=[
                    pb.RepositoryFilter(filter="prod/", filter_type="PREFIX_MATCH")
                ],
            )
        ]
    )


# --- each RPC's success -------------------------------------------------------------------


async def test_describe_registry_and_its_per_call_facts(transport: Transport) -> None:
    first = await transport.call("DescribeRegistry", pb.DescribeRegistryRequest())
    assert first.code == OK, first
    assert first.response.registry_id == ACCOUNT
    assert first.meta["x-cache"] == "miss" and len(first.meta["x-request-id"]) == 32
    again = await transport.call(
        "DescribeRegistry", pb.DescribeRegistryRequest(), headers={"x-request-id": "debug-42"}
    )
    assert again.meta == {**again.meta, "x-cache": "hit", "x-request-id": "debug-42"}
    fresh = await transport.call(
        "DescribeRegistry", pb.DescribeRegistryRequest(), headers={"cache-control": "no-cache"}
    )
    assert fresh.code == OK and fresh.meta["x-cache"] == "miss"
    # A request id that is not safe to repeat is replaced, not echoed.
    replaced = await transport.call(
        "DescribeRegistry", pb.DescribeRegistryRequest(), headers={"x-request-id": "a b<c>"}
    )
    assert replaced.meta["x-request-id"] != "a b<c>"


async def test_policy_round_trip_with_etags(transport: Transport) -> None:
    missing = await transport.call("GetRegistryPolicy", pb.GetRegistryPolicyRequest())
    assert missing.code == grpc.StatusCode.NOT_FOUND
    assert missing.info.metadata["requestId"] == missing.meta["x-request-id"]
    created = await transport.call(
        "PutRegistryPolicy", pb.PutRegistryPolicyRequest(policy_text=POLICY, etag="absent")
    )
    assert created.code == OK, created
    # "absent" creates only: a second create is an etag conflict.
    again = await transport.call(
        "PutRegistryPolicy", pb.PutRegistryPolicyRequest(policy_text=POLICY, etag="absent")
    )
    assert again.code == grpc.StatusCode.ABORTED and again.info.reason == "ETAG_MISMATCH"
    read = await transport.call("GetRegistryPolicy", pb.GetRegistryPolicyRequest())
    assert read.code == OK and json.loads(read.response.policy_text) == json.loads(POLICY)
    stale = await transport.call(
        "DeleteRegistryPolicy", pb.DeleteRegistryPolicyRequest(etag="0" * 32)
    )
    assert stale.code == grpc.StatusCode.ABORTED and stale.info.reason == "ETAG_MISMATCH"
    dry = await transport.call(
        "DeleteRegistryPolicy",
        pb.DeleteRegistryPolicyRequest(etag=read.response.etag, validate_only=True),
    )
    assert dry.code == OK, dry
    deleted = await transport.call(
        "DeleteRegistryPolicy", pb.DeleteRegistryPolicyRequest(etag=read.response.etag)
    )
    assert deleted.code == OK, deleted
    gone = await transport.call("GetRegistryPolicy", pb.GetRegistryPolicyRequest())
    assert gone.code == grpc.StatusCode.NOT_FOUND


async def test_put_replication_configuration_dry_run_then_for_real(transport: Transport) -> None:
    wanted = replication(EU)
    dry = await transport.call(
        "PutReplicationConfiguration",
        pb.PutReplicationConfigurationRequest(replication_configuration=wanted, validate_only=True),
    )
    assert dry.code == OK, dry
    assert not stored_rules_or_none()
    done = await transport.call(
        "PutReplicationConfiguration",
        pb.PutReplicationConfigurationRequest(replication_configuration=wanted),
    )
    assert done.code == OK, done
    assert done.response.replication_configuration == wanted
    described = await transport.call("DescribeRegistry", pb.DescribeRegistryRequest())
    assert described.response.replication_configuration == wanted


def stored_rules_or_none() -> Any:
    from moto.ecr.models import ecr_backends

    config = ecr_backends[ACCOUNT]["us-east-1"].replication_config
    return config["rules"] if config else None


async def test_slice_rules_and_statements(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave_like_ecr(monkeypatch)  # moto as strict as ECR about merged rules
    seed_rules(aws_rule("someone-else/"))
    mine = await transport.call("GetReplicationRules", pb.GetReplicationRulesRequest())
    assert mine.code == OK and list(mine.response.rules) == []
    put = await transport.call(
        "PutReplicationRules",
        pb.PutReplicationRulesRequest(rules=[rule("payments/api")], etag=mine.response.etag),
    )
    assert put.code == OK, put
    # The other tenant's filter is kept; ours is added, packed into the rule of its
    # destination set.
    assert [[f["filter"] for f in r.get("repositoryFilters", [])] for r in stored_rules()] == [
        ["payments/api", "someone-else/"]
    ]
    outside = await transport.call(
        "PutReplicationRules", pb.PutReplicationRulesRequest(rules=[rule("billing/")])
    )
    assert outside.code == grpc.StatusCode.PERMISSION_DENIED, outside
    statements = await transport.call("GetPolicyStatements", pb.GetPolicyStatementsRequest())
    assert statements.code == OK and json.loads(statements.response.statements_json) == []
    written = await transport.call(
        "PutPolicyStatements",
        pb.PutPolicyStatementsRequest(statements_json=json.dumps([statement("PaymentsA")])),
    )
    assert written.code == OK, written
    read = await transport.call("GetPolicyStatements", pb.GetPolicyStatementsRequest())
    assert [s["Sid"] for s in json.loads(read.response.statements_json)] == ["PaymentsA"]


# --- each mapped error --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "headers", "reason"),
    [
        (None, {}, "MISSING_CREDENTIALS"),
        (None, {"authorization": "Basic abc"}, "MALFORMED_CREDENTIALS"),
        ("not-a-key-we-know", {}, "INVALID_CREDENTIALS"),
    ],
    ids=["none", "wrong-scheme", "unknown-key"],
)
async def test_bad_credentials_are_unauthenticated(
    transport: Transport, key: str | None, headers: dict[str, str], reason: str
) -> None:
    answer = await transport.call(
        "DescribeRegistry", pb.DescribeRegistryRequest(), key=key, headers=headers
    )
    assert answer.code == grpc.StatusCode.UNAUTHENTICATED
    assert answer.info.reason == reason
    assert "not-a-key-we-know" not in answer.message


async def test_authorization_denials(transport: Transport) -> None:
    other = await transport.call(
        "DescribeRegistry", pb.DescribeRegistryRequest(registry_id=OTHER_ACCOUNT)
    )
    assert other.code == grpc.StatusCode.PERMISSION_DENIED
    assert other.info.reason == "TARGET_NOT_ALLOWED"
    assert other.info.metadata["registryId"] == OTHER_ACCOUNT
    region = await transport.call(
        "DescribeRegistry", pb.DescribeRegistryRequest(region="us-west-2")
    )
    assert region.code == grpc.StatusCode.PERMISSION_DENIED
    # `readonly` may read, not write.
    write = await transport.call(
        "PutRegistryPolicy", pb.PutRegistryPolicyRequest(policy_text=POLICY), key=OTHER_KEY
    )
    assert write.code == grpc.StatusCode.PERMISSION_DENIED
    assert write.info.metadata["tenant"] == "readonly"
    destination = await transport.call(
        "PutReplicationConfiguration",
        pb.PutReplicationConfigurationRequest(
            replication_configuration=replication(
                pb.ReplicationDestination(region="ap-south-1", registry_id=PARTNER_ACCOUNT)
            )
        ),
    )
    assert destination.code == grpc.StatusCode.PERMISSION_DENIED
    assert destination.info.reason == "DESTINATION_NOT_ALLOWED"


async def test_validation_names_every_field(transport: Transport) -> None:
    policy = await transport.call(
        "PutRegistryPolicy", pb.PutRegistryPolicyRequest(policy_text="not JSON")
    )
    assert policy.code == grpc.StatusCode.INVALID_ARGUMENT
    assert policy.fields == ["policy_text"]
    bad = pb.ReplicationConfiguration(
        rules=[
            pb.ReplicationRule(
                destinations=[pb.ReplicationDestination(region="eu-west-1", registry_id="12")],
                repository_filters=[pb.RepositoryFilter(filter="prod/", filter_type="NOPE")],
            )
        ]
    )
    answer = await transport.call(
        "PutReplicationConfiguration",
        pb.PutReplicationConfigurationRequest(replication_configuration=bad),
    )
    assert answer.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(answer.fields) >= {
        "replication_configuration.rules[0].destinations[0].registry_id",
        "replication_configuration.rules[0].repository_filters[0].filter_type",
    }


async def test_rate_limit_is_resource_exhausted_with_retry_and_quota(
    connect: Connect, gateway_factory: GatewayFactory, aws: str
) -> None:
    raw = http_config(aws)
    raw["rate_limit"] = {"reads_per_second": 0.5, "writes_per_second": 0.5, "burst": 2}
    transport = await connect(await gateway_factory(raw))
    codes = [(await transport.call("DescribeRegistry", pb.DescribeRegistryRequest())).code]
    codes.append((await transport.call("DescribeRegistry", pb.DescribeRegistryRequest())).code)
    assert codes == [OK, OK]
    limited = await transport.call("DescribeRegistry", pb.DescribeRegistryRequest())
    assert limited.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited.info.reason == "RATE_LIMITED" and limited.info.metadata["tenant"] == "payments"
    assert limited.retry_info is not None and limited.retry_info.retry_delay.ToNanoseconds() > 0
    assert limited.quota_failure is not None


async def test_unreachable_aws_is_unavailable_with_retry_info(
    connect: Connect, gateway_factory: GatewayFactory
) -> None:
    transport = await connect(await gateway_factory(with_http(config_dict("http://127.0.0.1:9"))))
    answer = await transport.call("DescribeRegistry", pb.DescribeRegistryRequest(), timeout=5)
    assert answer.code == grpc.StatusCode.UNAVAILABLE
    assert answer.retry_info is not None
    assert "127.0.0.1:9" not in answer.message


async def test_the_callers_deadline_is_kept(
    connect: Connect, gateway_factory: GatewayFactory, aws: str, slow_describe: Gate
) -> None:
    transport = await connect(await gateway_factory(http_config(aws)))
    answer = await transport.call("DescribeRegistry", pb.DescribeRegistryRequest(), timeout=0.3)
    assert answer.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_the_default_deadline_applies_without_one(
    connect: Connect, gateway_factory: GatewayFactory, aws: str, slow_describe: Gate
) -> None:
    gateway: Gateway = await gateway_factory(http_config(aws, default_deadline_seconds=0.3))
    transport = await connect(gateway)
    answer = await transport.call("DescribeRegistry", pb.DescribeRegistryRequest())
    assert answer.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert answer.info.reason == "DEADLINE_EXCEEDED"
    assert answer.info.metadata["requestId"] == answer.meta["x-request-id"]


async def test_the_callers_deadline_is_capped(
    connect: Connect, gateway_factory: GatewayFactory, aws: str, slow_describe: Gate
) -> None:
    raw = http_config(aws, default_deadline_seconds=0.2, max_deadline_seconds=0.3)
    transport = await connect(await gateway_factory(raw))
    answer = await transport.call("DescribeRegistry", pb.DescribeRegistryRequest(), timeout=60)
    assert answer.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert answer.message == "deadline of 0.3s exceeded"
