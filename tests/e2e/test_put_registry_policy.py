"""PutRegistryPolicy through the gateway: writes, etag preconditions, validate_only."""

from __future__ import annotations

import grpc
import pytest
from moto.ecr.models import ecr_backends

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.support.helpers import ACCOUNT, OTHER_KEY, POLICY, metadata, rich_error

OTHER_POLICY = POLICY.replace("ReplicateFromPartner", "ReplicateFromOther")


def stored_policy() -> str | None:
    policy: str | None = ecr_backends[ACCOUNT]["us-east-1"].registry_policy
    return policy


async def test_puts_the_policy(stub: pb_grpc.RegistryConfigServiceAsyncStub) -> None:
    response = await stub.PutRegistryPolicy(
        pb.PutRegistryPolicyRequest(policy_text=POLICY), metadata=metadata()
    )
    assert response.registry_id == ACCOUNT
    assert response.policy_text == POLICY
    assert stored_policy() == POLICY


async def test_create_only_with_absent_etag(stub: pb_grpc.RegistryConfigServiceAsyncStub) -> None:
    created = await stub.PutRegistryPolicy(
        pb.PutRegistryPolicyRequest(policy_text=POLICY, etag="absent"), metadata=metadata()
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutRegistryPolicy(
            pb.PutRegistryPolicyRequest(policy_text=OTHER_POLICY, etag="absent"),
            metadata=metadata(),
        )
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.ABORTED
    assert err.info.reason == "ETAG_MISMATCH"
    assert err.info.metadata["currentEtag"] == created.etag
    assert stored_policy() == POLICY


async def test_matching_etag_writes(stub: pb_grpc.RegistryConfigServiceAsyncStub) -> None:
    first = await stub.PutRegistryPolicy(
        pb.PutRegistryPolicyRequest(policy_text=POLICY), metadata=metadata()
    )
    second = await stub.PutRegistryPolicy(
        pb.PutRegistryPolicyRequest(policy_text=OTHER_POLICY, etag=first.etag), metadata=metadata()
    )
    assert second.etag not in ("", first.etag)
    assert stored_policy() == OTHER_POLICY


async def test_validate_only_changes_nothing(stub: pb_grpc.RegistryConfigServiceAsyncStub) -> None:
    response = await stub.PutRegistryPolicy(
        pb.PutRegistryPolicyRequest(policy_text=POLICY, validate_only=True), metadata=metadata()
    )
    assert response.policy_text == POLICY
    assert response.etag == "absent"
    assert stored_policy() is None


async def test_policy_aws_refuses_is_invalid_argument(
    stub: pb_grpc.RegistryConfigServiceAsyncStub,
) -> None:
    # Valid for the gateway (ECR allows this action in any scope); moto refuses every action
    # but CreateRepository and ReplicateImage: a stand-in for a rule only AWS knows.
    policy = POLICY.replace("ecr:ReplicateImage", "ecr:BatchImportUpstreamImage")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutRegistryPolicy(
            pb.PutRegistryPolicyRequest(policy_text=policy), metadata=metadata()
        )
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.info.reason == "AWS_INVALID_PARAMETER"
    assert err.info.metadata["awsErrorCode"] == "InvalidParameterException"
    assert stored_policy() is None


async def test_read_only_tenant_may_not_write(stub: pb_grpc.RegistryConfigServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutRegistryPolicy(
            pb.PutRegistryPolicyRequest(policy_text=POLICY), metadata=metadata(OTHER_KEY)
        )
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert err.info.metadata["tenant"] == "readonly"
    assert err.info.metadata["rpc"] == "PutRegistryPolicy"
    assert stored_policy() is None
