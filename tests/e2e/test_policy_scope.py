"""`policy_scope`: auto reads ECR's REGISTRY_POLICY_SCOPE; a pin AWS disagrees with is
logged and counted; an unreadable setting fails policy writes closed, reads go on.

moto lacks GetAccountSetting: tests/support/moto_account_settings.py adds it (installed for the
whole session by conftest.py, answering V2); these tests set what it answers.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
import pytest

from service.app.server import Gateway
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.helpers import ACCOUNT, POLICY, config_dict, metadata, rich_error
from tests.support.moto_account_settings import refuse_reads, set_policy_scope

REGION = "us-east-1"
# ecr:BatchGetImage: allowed by scope V2 only (V1 allows CreateRepository, ReplicateImage
# and BatchImportUpstreamImage).
V2_ONLY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PaymentsPull",
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::210987654321:root"},
                "Action": ["ecr:BatchGetImage"],
                "Resource": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/payments/*",
            }
        ],
    }
)


def pinned(aws: str, scope: str) -> dict[str, Any]:
    raw = config_dict(aws)
    for tenant in raw["tenants"]:
        for registry in tenant["registries"]:
            registry["policy_scope"] = scope
    return raw


def stub_of(channel: grpc.aio.Channel) -> Any:
    return pb_grpc.RegistryConfigServiceStub(channel)


async def refused(call: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return rich_error(caught.value)


def mismatches(gateway: Gateway) -> float:
    value = gateway.metrics.registry.get_sample_value(
        "registry_gateway_policy_scope_mismatch_total",
        {"registry_id": ACCOUNT, "region": REGION},
    )
    return value or 0.0


async def test_default_is_auto_and_reads_v2(gateway_factory: GatewayFactory, aws: str) -> None:
    gateway = await gateway_factory()
    assert gateway.config.tenants[0].registries[0].policy_scope == "auto"
    assert gateway.upstream.policy_scopes.read(ACCOUNT, REGION) == "V2"
    # eu-west-1 is no registry's first region: read at start-up too, after the probe.
    assert gateway.upstream.policy_scopes.read(ACCOUNT, "eu-west-1") == "V2"


async def test_auto_reads_v1_and_refuses_a_v2_only_action(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    set_policy_scope(ACCOUNT, REGION, "V1")
    gateway = await gateway_factory()
    assert gateway.upstream.policy_scopes.read(ACCOUNT, REGION) == "V1"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = stub_of(channel)
        error = await refused(
            stub.PutRegistryPolicy(
                pb.PutRegistryPolicyRequest(policy_text=V2_ONLY), metadata=metadata()
            )
        )
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.bad_request is not None
        assert any("policy scope V1" in v.description for v in error.bad_request.field_violations)
        # The same slice statement through PutPolicyStatements: refused under V1 as well.
        statements = json.dumps(json.loads(V2_ONLY)["Statement"])
        error = await refused(
            stub.PutPolicyStatements(
                pb.PutPolicyStatementsRequest(statements_json=statements), metadata=metadata()
            )
        )
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error.message
        # What V1 allows is written.
        await stub.PutRegistryPolicy(
            pb.PutRegistryPolicyRequest(policy_text=POLICY), metadata=metadata()
        )
    assert mismatches(gateway) == 0


async def test_pinned_v2_against_v1_in_aws_warns_and_counts(
    gateway_factory: GatewayFactory, aws: str, caplog: pytest.LogCaptureFixture
) -> None:
    set_policy_scope(ACCOUNT, REGION, "V1")
    with caplog.at_level(logging.WARNING, logger="registry_gateway.account_settings"):
        gateway = await gateway_factory(pinned(aws, "V2"))
    assert mismatches(gateway) == 1
    assert any(
        "pins policy scope V2" in r.getMessage() and "is V1" in r.getMessage()
        for r in caplog.records
    ), caplog.text
    # The pin is what validation uses: a V2-only action passes it (validate_only: AWS,
    # which is V1, is not asked).
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        await stub_of(channel).PutRegistryPolicy(
            pb.PutRegistryPolicyRequest(policy_text=V2_ONLY, validate_only=True),
            metadata=metadata(),
        )
    # Read again (as on reload): counted again, still disagreeing.
    await gateway.upstream.refresh_policy_scopes(gateway.config)
    assert mismatches(gateway) == 2


async def test_pinned_matching_aws_is_not_counted(
    gateway_factory: GatewayFactory, aws: str
) -> None:
    gateway = await gateway_factory(pinned(aws, "V2"))
    assert mismatches(gateway) == 0


async def test_unreadable_setting_fails_policy_writes_closed_and_reads_go_on(
    gateway_factory: GatewayFactory, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    refuse_reads(monkeypatch)
    gateway = await gateway_factory()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = stub_of(channel)
        writes = [
            stub.PutRegistryPolicy(
                pb.PutRegistryPolicyRequest(policy_text=POLICY), metadata=metadata()
            ),
            stub.PutPolicyStatements(
                pb.PutPolicyStatementsRequest(statements_json="[]"), metadata=metadata()
            ),
        ]
        for write in writes:
            error = await refused(write)
            assert error.code == grpc.StatusCode.FAILED_PRECONDITION
            assert error.info.reason == "POLICY_SCOPE_UNKNOWN"
            assert "AccessDeniedException" in error.message, error.message
        # Reads go on; so do writes that are no policy.
        await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
        missing = await refused(
            stub.GetRegistryPolicy(pb.GetRegistryPolicyRequest(), metadata=metadata())
        )
        assert missing.code == grpc.StatusCode.NOT_FOUND
        await stub.GetPolicyStatements(pb.GetPolicyStatementsRequest(), metadata=metadata())
        # Once it can be read again (the reload's read), policy writes go through.
        monkeypatch.undo()
        await gateway.upstream.refresh_policy_scopes(gateway.config)
        await stub.PutRegistryPolicy(
            pb.PutRegistryPolicyRequest(policy_text=POLICY), metadata=metadata()
        )


async def test_pinned_scope_writes_on_when_the_setting_is_unreadable(
    gateway_factory: GatewayFactory, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    refuse_reads(monkeypatch)
    gateway = await gateway_factory(pinned(aws, "V1"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        await stub_of(channel).PutRegistryPolicy(
            pb.PutRegistryPolicyRequest(policy_text=POLICY), metadata=metadata()
        )
