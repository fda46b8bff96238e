"""GetRegistryPolicy through the gateway."""

from __future__ import annotations

import grpc
import pytest

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.support.helpers import ACCOUNT, OTHER_KEY, POLICY, metadata, rich_error


async def test_no_policy_is_not_found(stub: pb_grpc.RegistryConfigServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetRegistryPolicy(pb.GetRegistryPolicyRequest(), metadata=metadata())
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert err.info.domain == "registry-gateway"
    assert err.info.metadata["awsErrorCode"] == "RegistryPolicyNotFoundException"
    assert err.info.metadata["awsRequestId"]
    assert err.info.metadata["requestId"] == err.trailing["x-request-id"]


async def test_reads_the_policy_with_its_etag(stub: pb_grpc.RegistryConfigServiceAsyncStub) -> None:
    put = await stub.PutRegistryPolicy(
        pb.PutRegistryPolicyRequest(policy_text=POLICY), metadata=metadata()
    )
    got = await stub.GetRegistryPolicy(pb.GetRegistryPolicyRequest(), metadata=metadata(OTHER_KEY))
    assert got.registry_id == ACCOUNT
    assert got.policy_text == POLICY
    assert got.etag == put.etag != "absent"
