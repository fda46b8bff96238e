"""Request validation on a real server: every problem at once, field paths, and AWS untouched.

Each refused request is checked for its exact BadRequest field paths and for having sent
no write to moto (counted on moto's request handlers) and changed no state in it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto.ecr.models import ecr_backends

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.helpers import (
    ACCOUNT,
    OTHER_KEY,
    PARTNER_ACCOUNT,
    POLICY,
    config_dict,
    metadata,
    rich_error,
)
from tests.support.moto_writes import MotoWrites, behave_like_ecr, configured, count_writes

SERVICE = "/ecr.registry.v1.RegistryConfigService"
RULES = "replication_configuration.rules"
EU = pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)
PARTNER = pb.ReplicationDestination(region="us-west-2", registry_id=PARTNER_ACCOUNT)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> MotoWrites:
    """The write requests moto receives during the test."""
    return count_writes(monkeypatch)


def replication(*rules: pb.ReplicationRule, **kw: Any) -> pb.PutReplicationConfigurationRequest:
    return pb.PutReplicationConfigurationRequest(
        replication_configuration=pb.ReplicationConfiguration(rules=rules), **kw
    )


def policy(*statements: dict[str, Any], version: str = "2012-10-17") -> str:
    return json.dumps({"Version": version, "Statement": list(statements)})


def grant(sid: str = "Replicate", **overrides: Any) -> dict[str, Any]:
    statement = {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{PARTNER_ACCOUNT}:root"},
        "Action": ["ecr:CreateRepository", "ecr:ReplicateImage"],
        "Resource": f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/*",
    }
    statement.update(overrides)
    return {k: v for k, v in statement.items() if v is not None}


async def call(
    stub: pb_grpc.RegistryConfigServiceAsyncStub, request: Message, key: str = ""
) -> Any:
    """Call the RPC whose request `request` is, with the payments key (or `key`)."""
    rpc = type(request).__name__.removesuffix("Request")
    method = getattr(stub, rpc)
    return await method(request, metadata=metadata(key) if key else metadata())


# One row per rule: the request, and the exact field paths of its violations.
TABLE: list[tuple[str, Message, list[str]]] = [
    (
        "registry id pattern",
        replication(
            pb.ReplicationRule(
                destinations=[EU, pb.ReplicationDestination(region="eu-west-1", registry_id="1234")]
            )
        ),
        [f"{RULES}[0].destinations[1].registry_id"],
    ),
    (
        "region pattern and unknown region",
        replication(
            pb.ReplicationRule(
                destinations=[
                    pb.ReplicationDestination(region="EU_WEST_1", registry_id=ACCOUNT),
                    pb.ReplicationDestination(region="mars-east-1", registry_id=ACCOUNT),
                ]
            )
        ),
        [f"{RULES}[0].destinations[0].region", f"{RULES}[0].destinations[1].region"],
    ),
    (
        "request region unknown",
        pb.DescribeRegistryRequest(region="xx-nowhere-9"),
        ["region"],
    ),
    (
        "at most 10 rules",
        replication(*[pb.ReplicationRule(destinations=[EU]) for _ in range(11)]),
        [RULES],
    ),
    (
        "filters: count, length, pattern, type",
        replication(
            pb.ReplicationRule(
                destinations=[EU],
                repository_filters=[
                    pb.RepositoryFilter(filter="p", filter_type="PREFIX_MATCH"),
                    pb.RepositoryFilter(filter="Prod", filter_type="PREFIX_MATCH"),
                    pb.RepositoryFilter(filter="prod", filter_type="prefix"),
                ],
            )
        ),
        [
            f"{RULES}[0].repository_filters[0].filter",
            f"{RULES}[0].repository_filters[1].filter",
            f"{RULES}[0].repository_filters[2].filter_type",
        ],
    ),
    (
        "source registry as destination",
        replication(
            pb.ReplicationRule(
                destinations=[pb.ReplicationDestination(region="us-east-1", registry_id=ACCOUNT)]
            )
        ),
        [f"{RULES}[0].destinations[0]"],
    ),
    (
        "duplicate destination",
        replication(pb.ReplicationRule(destinations=[EU, PARTNER, EU])),
        [f"{RULES}[0].destinations[2]"],
    ),
    (
        "more than 25 unique destinations",
        replication(
            *[
                pb.ReplicationRule(
                    destinations=[
                        pb.ReplicationDestination(
                            region="eu-west-1", registry_id=f"{100000000000 + 10 * r + d}"
                        )
                        for d in range(3)
                    ]
                )
                for r in range(9)
            ]
        ),
        [RULES],
    ),
    (
        "configuration required",
        pb.PutReplicationConfigurationRequest(),
        ["replication_configuration"],
    ),
    ("policy required", pb.PutRegistryPolicyRequest(), ["policy_text"]),
    (
        "policy too long",
        pb.PutRegistryPolicyRequest(policy_text=policy(grant(Sid="x" * 10240))),
        ["policy_text"],
    ),
    (
        "policy trailing garbage",
        pb.PutRegistryPolicyRequest(policy_text=POLICY + "}"),
        ["policy_text"],
    ),
    (
        "policy duplicate key",
        pb.PutRegistryPolicyRequest(
            policy_text=POLICY.replace('"Effect":"Allow"', '"Effect":"Allow","Effect":"Deny"')
        ),
        ["policy_text.Statement[0]"],
    ),
    (
        "policy grammar",
        pb.PutRegistryPolicyRequest(
            policy_text=policy(
                grant(Effect="allow", Action=[]),
                grant(Principal=None, Resource="repo"),
                version="2020-01-01",
            )
        ),
        [
            "policy_text.Version",
            "policy_text.Statement[0].Effect",
            "policy_text.Statement[0].Action",
            "policy_text.Statement[1].Sid",
            "policy_text.Statement[1].Principal",
            "policy_text.Statement[1].Resource",
        ],
    ),
    (
        "policy action outside ECR",
        pb.PutRegistryPolicyRequest(policy_text=policy(grant(Action="s3:GetObject"))),
        ["policy_text.Statement[0].Action"],
    ),
    (
        "delete with an unknown region",
        pb.DeleteRegistryPolicyRequest(region="eu-west-99", validate_only=True),
        ["region"],
    ),
]


@pytest.fixture
async def typo_stub(
    gateway_factory: GatewayFactory, aws: str
) -> AsyncIterator[pb_grpc.RegistryConfigServiceAsyncStub]:
    """A gateway whose operator listed two regions that do not exist (the config does not
    check region names), so that validation, not the target check, meets them."""
    raw_config = config_dict(aws)
    raw_config["tenants"][0]["registries"][0]["regions"] += ["xx-nowhere-9", "eu-west-99"]
    gateway = await gateway_factory(raw_config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        yield pb_grpc.RegistryConfigServiceStub(channel)


@pytest.mark.parametrize(
    ("request_", "expected"), [r[1:] for r in TABLE], ids=[r[0] for r in TABLE]
)
async def test_each_rule_is_invalid_argument_naming_its_fields(
    typo_stub: pb_grpc.RegistryConfigServiceAsyncStub,
    writes: MotoWrites,
    aws_state: Callable[[], dict[str, Any]],
    request_: Message,
    expected: list[str],
) -> None:
    before = configured(aws_state())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(typo_stub, request_)
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.info.reason == "INVALID_REQUEST"
    assert err.bad_request is not None
    assert [v.field for v in err.bad_request.field_violations] == expected
    assert all(v.description for v in err.bad_request.field_violations)
    assert err.info.metadata["violations"] == str(len(expected))
    assert writes.total == 0
    assert configured(aws_state()) == before


async def test_the_answer_reads_as_the_issue_promises(
    stub: pb_grpc.RegistryConfigServiceAsyncStub, writes: MotoWrites
) -> None:
    bad = pb.ReplicationDestination(region="eu-west-1", registry_id="1234")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(stub, replication(pb.ReplicationRule(destinations=[EU, bad])))
    err = rich_error(caught.value)
    assert err.bad_request is not None
    violation = err.bad_request.field_violations[0]
    assert violation.field == "replication_configuration.rules[0].destinations[1].registry_id"
    assert violation.description == "must be 12 digits (an AWS account id), got '1234'"
    assert err.message == (
        "invalid PutReplicationConfiguration request: "
        "replication_configuration.rules[0].destinations[1].registry_id: must be 12 digits "
        "(an AWS account id), got '1234'"
    )
    assert writes.total == 0


async def test_a_thousand_problems_still_fit_the_trailers(
    stub: pb_grpc.RegistryConfigServiceAsyncStub, writes: MotoWrites
) -> None:
    # 10 rules x 100 destinations, each with two bad fields: the status details must stay
    # inside the client's metadata limit, or the caller would see a bare INTERNAL. Each
    # field is as long as a valid one may be, so the request is within the byte limit.
    rule = pb.ReplicationRule(
        destinations=[pb.ReplicationDestination(region="X" * 25, registry_id="x" * 12)] * 100
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(stub, replication(*[rule] * 10))
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    # As many as fit the 4 KiB the gateway allows all details (at most 25).
    assert err.bad_request is not None and 1 <= len(err.bad_request.field_violations) <= 25
    assert len(err.trailing["grpc-status-details-bin"]) < 4096
    # Two bad fields per destination (2,000), and each rule repeats one destination (990).
    assert int(err.info.metadata["violations"]) == 2990
    assert writes.total == 0


async def test_validation_comes_after_the_target_check(
    stub: pb_grpc.RegistryConfigServiceAsyncStub, writes: MotoWrites
) -> None:
    # A tenant that may not write learns nothing about what is wrong with its request.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(stub, pb.PutRegistryPolicyRequest(policy_text="{"), key=OTHER_KEY)
    assert rich_error(caught.value).code == grpc.StatusCode.PERMISSION_DENIED
    assert writes.total == 0


async def test_validation_comes_before_the_content_rules(
    stub: pb_grpc.RegistryConfigServiceAsyncStub, writes: MotoWrites
) -> None:
    # ap-south-1 is not on the allow-list; the bad filter is reported, not the destination.
    outside = pb.ReplicationDestination(region="ap-south-1", registry_id=ACCOUNT)
    rule = pb.ReplicationRule(
        destinations=[outside], repository_filters=[pb.RepositoryFilter(filter="p")]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(stub, replication(rule))
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.bad_request is not None
    assert [v.field for v in err.bad_request.field_violations] == [
        f"{RULES}[0].repository_filters[0].filter",
        f"{RULES}[0].repository_filters[0].filter_type",
    ]
    # Valid, the same request meets the allow-list.
    rule.repository_filters[0].filter, rule.repository_filters[0].filter_type = (
        "prod",
        "PREFIX_MATCH",
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(stub, replication(rule))
    assert rich_error(caught.value).info.reason == "DESTINATION_NOT_ALLOWED"
    assert writes.total == 0


async def test_an_invalid_validate_only_fails_like_the_real_call(
    stub: pb_grpc.RegistryConfigServiceAsyncStub, writes: MotoWrites
) -> None:
    for validate_only in (True, False):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(
                stub, pb.PutRegistryPolicyRequest(policy_text="[]", validate_only=validate_only)
            )
        err = rich_error(caught.value)
        assert (err.code, err.info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert writes.total == 0


def raw(channel: grpc.aio.Channel, rpc: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(
        f"{SERVICE}/{rpc}", request_serializer=None, response_deserializer=None
    )


async def test_unknown_fields_on_a_write_are_refused_naming_them(
    channel: grpc.aio.Channel, writes: MotoWrites
) -> None:
    # A client on a newer proto: field 9 at the top, field 12 inside the first rule.
    body = replication(pb.ReplicationRule(destinations=[EU])).SerializeToString()
    rule = pb.ReplicationRule(destinations=[EU]).SerializeToString() + b"\x60\x01"
    config = b"\x0a" + bytes([len(rule)]) + rule
    newer = b"\x0a" + bytes([len(config)]) + config + b"\x48\x01"
    assert body != newer
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(channel, "PutReplicationConfiguration")(newer, metadata=metadata())
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.bad_request is not None
    assert [v.field for v in err.bad_request.field_violations] == ["9", f"{RULES}[0].12"]
    assert "unknown field 9 (varint)" in err.bad_request.field_violations[0].description
    assert writes.total == 0


async def test_unknown_fields_on_a_read_are_ignored(channel: grpc.aio.Channel) -> None:
    answer = await raw(channel, "DescribeRegistry")(b"\x48\x01\x52\x03abc", metadata=metadata())
    assert pb.DescribeRegistryResponse.FromString(answer).registry_id == ACCOUNT


async def test_invalid_utf8_is_invalid_argument_naming_the_field(
    channel: grpc.aio.Channel, writes: MotoWrites
) -> None:
    region = b"eu-\xc3\x28west-1"
    destination = b"\x0a" + bytes([len(region)]) + region + b"\x12\x0c" + ACCOUNT.encode()
    rule = b"\x0a" + bytes([len(destination)]) + destination
    config = b"\x0a" + bytes([len(rule)]) + rule
    body = b"\x0a" + bytes([len(config)]) + config
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(channel, "PutReplicationConfiguration")(body, metadata=metadata())
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.info.reason == "UNDECODABLE_REQUEST"
    assert err.bad_request is not None
    [violation] = err.bad_request.field_violations
    assert violation.field == f"{RULES}[0].destinations[0].region"
    assert violation.description == "is not valid UTF-8 (byte 0xc3 at position 3 of the text)"
    assert writes.total == 0


async def test_v1_scope_registry_refuses_other_actions(
    gateway_factory: GatewayFactory, aws: str, writes: MotoWrites
) -> None:
    raw_config = config_dict(aws)
    for tenant in raw_config["tenants"]:  # one scope per registry, whoever names it
        tenant["registries"][0]["policy_scope"] = "V1"
    gateway = await gateway_factory(raw_config)
    text = policy(grant(Action=["ecr:ReplicateImage", "ecr:BatchGetImage"]))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PutRegistryPolicy(
                pb.PutRegistryPolicyRequest(policy_text=text), metadata=metadata()
            )
    err = rich_error(caught.value)
    assert err.bad_request is not None
    assert [(v.field, v.description) for v in err.bad_request.field_violations] == [
        (
            "policy_text.Statement[0].Action[1]",
            "policy scope V1 allows only ecr:ReplicateImage, ecr:BatchImportUpstreamImage, "
            "ecr:CreateRepository; got 'ecr:BatchGetImage'",
        )
    ]
    assert writes.total == 0


# --- properties: generated valid input round-trips; mutated input is refused -------------

ALLOWED = [EU, PARTNER]  # the default tenant's allow-list, minus the source itself
filters = st.from_regex(r"[a-z0-9]{2,8}(/[a-z0-9]{1,8}){0,2}/?", fullmatch=True).map(
    lambda f: pb.RepositoryFilter(filter=f, filter_type="PREFIX_MATCH")
)
rules = st.builds(
    lambda ds, fs: pb.ReplicationRule(destinations=ds, repository_filters=fs),
    st.lists(st.sampled_from(ALLOWED), min_size=1, max_size=2, unique_by=lambda d: d.region),
    st.lists(filters, max_size=3),
)
configurations = st.lists(rules, max_size=10).map(lambda rs: pb.ReplicationConfiguration(rules=rs))

ECR_ACTIONS = [
    "ecr:CreateRepository",
    "ecr:ReplicateImage",
    "ecr:BatchImportUpstreamImage",
    "ecr:DescribeImages",
    "ecr:*",
]
statements = st.builds(
    lambda effect, actions, resource: {
        "Effect": effect,
        "Principal": {"AWS": f"arn:aws:iam::{PARTNER_ACCOUNT}:root"},
        "Action": actions,
        "Resource": resource,
    },
    st.sampled_from(["Allow", "Deny"]),
    st.lists(st.sampled_from(ECR_ACTIONS), min_size=1, max_size=3, unique=True),
    st.sampled_from(["*", f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/*"]),
)
policies = st.lists(statements, min_size=1, max_size=4).map(
    lambda ss: policy(*[{"Sid": f"S{i}", **s} for i, s in enumerate(ss)])
)

PROPERTY = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    # One gateway and moto serve every example; each example overwrites what it checks.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture
def ecr_like(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto with ECR's limits: several rules, every ECR action (see
    tests/support/moto_writes.py)."""
    behave_like_ecr(monkeypatch)


@PROPERTY
@given(configurations)
async def test_generated_configurations_round_trip(
    stub: pb_grpc.RegistryConfigServiceAsyncStub,
    ecr_like: None,
    config: pb.ReplicationConfiguration,
) -> None:
    put = await stub.PutReplicationConfiguration(
        pb.PutReplicationConfigurationRequest(replication_configuration=config), metadata=metadata()
    )
    assert put.replication_configuration == config
    described = await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
    assert described.replication_configuration == config
    assert described.etag == put.etag


@PROPERTY
@given(policies)
async def test_generated_policies_round_trip(
    stub: pb_grpc.RegistryConfigServiceAsyncStub, ecr_like: None, text: str
) -> None:
    await stub.PutRegistryPolicy(pb.PutRegistryPolicyRequest(policy_text=text), metadata=metadata())
    got = await stub.GetRegistryPolicy(pb.GetRegistryPolicyRequest(), metadata=metadata())
    assert got.policy_text == text
    assert ecr_backends[ACCOUNT]["us-east-1"].registry_policy == text


def _mutate_configuration(config: pb.ReplicationConfiguration, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["too_long", "pattern", "too_many", "enum", "unknown_region"]))
    if not config.rules or kind == "too_many":
        config.rules.extend([pb.ReplicationRule(destinations=[EU])] * 11)
        return
    rule = data.draw(st.sampled_from(list(config.rules)))
    if kind == "too_long":
        rule.repository_filters.add(filter="a" * 257, filter_type="PREFIX_MATCH")
    elif kind == "pattern":
        rule.destinations[0].registry_id = data.draw(
            st.from_regex(r"[0-9]{1,11}|[0-9]{13,20}", fullmatch=True)
        )
    elif kind == "enum":
        rule.repository_filters.add(
            filter="prod",
            filter_type=data.draw(st.text(max_size=20).filter(lambda t: t != "PREFIX_MATCH")),
        )
    else:
        rule.destinations[0].region = data.draw(
            st.sampled_from(["mars-east-1", "us-east-99", "eu"])
        )


@PROPERTY
@given(configurations, st.data())
async def test_mutated_configurations_are_refused_and_write_nothing(
    stub: pb_grpc.RegistryConfigServiceAsyncStub,
    writes: MotoWrites,
    config: pb.ReplicationConfiguration,
    data: st.DataObject,
) -> None:
    _mutate_configuration(config, data)
    before = writes.total
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutReplicationConfiguration(
            pb.PutReplicationConfigurationRequest(replication_configuration=config),
            metadata=metadata(),
        )
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.bad_request is not None and err.bad_request.field_violations
    assert writes.total == before


def _mutate_policy(text: str, data: st.DataObject) -> str:
    kind = data.draw(
        st.sampled_from(["truncate", "garbage", "duplicate", "version", "action", "effect", "long"])
    )
    document = json.loads(text)
    if kind == "truncate":
        return text[: data.draw(st.integers(0, len(text) - 1))]
    if kind == "garbage":
        return text + data.draw(st.sampled_from(["}", " x", "{}", "[", "\x00"]))
    if kind == "duplicate":
        return text.replace('"Effect": ', '"Effect": "Allow", "Effect": ', 1)
    if kind == "version":
        document["Version"] = data.draw(st.sampled_from(["2012-10-18", "", 2012, None]))
    elif kind == "action":
        document["Statement"][0]["Action"] = data.draw(
            st.sampled_from(["s3:GetObject", "*", [], "ecr"])
        )
    elif kind == "effect":
        document["Statement"][0]["Effect"] = data.draw(st.sampled_from(["allow", "", None]))
    else:
        document["Id"] = "x" * 10240
    return json.dumps(document)


@PROPERTY
@given(policies, st.data())
async def test_mutated_policies_are_refused_and_write_nothing(
    stub: pb_grpc.RegistryConfigServiceAsyncStub, writes: MotoWrites, text: str, data: st.DataObject
) -> None:
    mutated = _mutate_policy(text, data)
    before = writes.total
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutRegistryPolicy(
            pb.PutRegistryPolicyRequest(policy_text=mutated), metadata=metadata()
        )
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.bad_request is not None and err.bad_request.field_violations
    assert writes.total == before
