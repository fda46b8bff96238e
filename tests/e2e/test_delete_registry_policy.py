"""DeleteRegistryPolicy through the gateway."""

from __future__ import annotations

import grpc
import pytest
from moto.ecr.models import ecr_backends

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.support.helpers import ACCOUNT, POLICY, metadata, rich_error


def stored_policy() -> str | None:
    policy: str | None = ecr_backends[ACCOUNT]["us-east-1"].registry_policy
    return policy


async def put(stub: pb_grpc.RegistryConfigServiceAsyncStub) -> pb.PutRegistryPolicyResponse:
    response: pb.PutRegistryPolicyResponse = await stub.PutRegistryPolicy(
        pb.PutRegistryPolicyRequest(policy_text=POLICY), metadata=metadata()
    )
    return response


async def test_deletes_and_answers_the_old_policy(
    stub: pb_grpc.RegistryConfigServiceAsyncStub,
) -> None:
    await put(stub)
    response = await stub.DeleteRegistryPolicy(
        pb.DeleteRegistryPolicyRequest(), metadata=metadata()
    )
    assert response.registry_id == ACCOUNT
    assert response.policy_text == POLICY
    assert response.etag == "absent"
    assert stored_policy() is None


async def test_nothing_to_delete_is_not_found(stub: pb_grpc.RegistryConfigServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DeleteRegistryPolicy(pb.DeleteRegistryPolicyRequest(), metadata=metadata())
    assert rich_error(caught.value).code == grpc.StatusCode.NOT_FOUND


async def test_stale_etag_keeps_the_policy(stub: pb_grpc.RegistryConfigServiceAsyncStub) -> None:
    put_response = await put(stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DeleteRegistryPolicy(
            pb.DeleteRegistryPolicyRequest(etag="0" * 32), metadata=metadata()
        )
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.ABORTED
    assert err.info.metadata["currentEtag"] == put_response.etag
    assert stored_policy() == POLICY


async def test_validate_only_keeps_the_policy(stub: pb_grpc.RegistryConfigServiceAsyncStub) -> None:
    put_response = await put(stub)
    response = await stub.DeleteRegistryPolicy(
        pb.DeleteRegistryPolicyRequest(validate_only=True, etag=put_response.etag),
        metadata=metadata(),
    )
    assert response.policy_text == POLICY
    assert stored_policy() == POLICY
