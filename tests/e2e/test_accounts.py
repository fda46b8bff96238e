"""Which AWS account each registry's client reaches: assumed roles, and the mismatch refusal."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from moto.ecr.models import ecr_backends

from service.auth.api_keys import hash_key
from service.config import OPERATIONS
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.helpers import (
    ACCOUNT,
    KEY,
    OTHER_ACCOUNT,
    POLICY,
    config_dict,
    metadata,
    rich_error,
)

WRONG_ACCOUNT = "222222222222"


def with_registries(aws: str, *registries: dict[str, Any]) -> dict[str, Any]:
    raw = config_dict(aws)
    raw["tenants"] = [
        {
            "name": "payments",
            "api_keys": [hash_key(KEY)],
            "registries": [
                # The slice writes need a slice: they may act on nothing else.
                {
                    "regions": ["us-east-1"],
                    "operations": list(OPERATIONS),
                    "owned_repository_prefixes": ["payments/"],
                    "owned_statement_sid_prefix": "Payments",
                    **r,
                }
                for r in registries
            ],
        }
    ]
    return raw


async def test_two_registries_in_two_accounts(gateway_factory: GatewayFactory, aws: str) -> None:
    # moto honours STS AssumeRole into another account: later calls act on that account.
    gateway = await gateway_factory(
        with_registries(
            aws,
            {"registry_id": ACCOUNT},
            {
                "registry_id": OTHER_ACCOUNT,
                "role_arn": f"arn:aws:iam::{OTHER_ACCOUNT}:role/registry-gateway",
            },
        )
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        put = await stub.PutRegistryPolicy(
            pb.PutRegistryPolicyRequest(policy_text=POLICY, registry_id=OTHER_ACCOUNT),
            metadata=metadata(),
        )
        assert put.registry_id == OTHER_ACCOUNT
        described = await stub.DescribeRegistry(
            pb.DescribeRegistryRequest(registry_id=ACCOUNT), metadata=metadata()
        )
        assert described.registry_id == ACCOUNT
    assert ecr_backends[OTHER_ACCOUNT]["us-east-1"].registry_policy == POLICY
    assert ecr_backends[ACCOUNT]["us-east-1"].registry_policy is None


async def test_external_id_from_env_is_required(gateway_factory: GatewayFactory, aws: str) -> None:
    gateway = await gateway_factory(
        with_registries(
            aws,
            {
                "registry_id": OTHER_ACCOUNT,
                "role_arn": f"arn:aws:iam::{OTHER_ACCOUNT}:role/registry-gateway",
                "external_id_env": "TEST_UNSET_EXTERNAL_ID",
            },
        )
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.info.reason == "EXTERNAL_ID_MISSING"
    assert "TEST_UNSET_EXTERNAL_ID" in err.message


@pytest.mark.parametrize("rpc", ["DescribeRegistry", "PutRegistryPolicy"])
async def test_credentials_reaching_another_account_are_refused(
    gateway_factory: GatewayFactory, aws: str, rpc: str
) -> None:
    # Configured as 222222222222, but the default credentials reach moto's 123456789012.
    gateway = await gateway_factory(with_registries(aws, {"registry_id": WRONG_ACCOUNT}))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        for _ in range(2):  # refused on first use, and every time after
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                if rpc == "DescribeRegistry":
                    await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
                else:
                    await stub.PutRegistryPolicy(
                        pb.PutRegistryPolicyRequest(policy_text=POLICY), metadata=metadata()
                    )
            err = rich_error(caught.value)
            assert err.code == grpc.StatusCode.FAILED_PRECONDITION
            assert err.info.reason == "ACCOUNT_MISMATCH"
            assert err.info.metadata["registryId"] == WRONG_ACCOUNT
    # Nothing reached the account the credentials really belong to.
    assert ecr_backends[ACCOUNT]["us-east-1"].registry_policy is None
