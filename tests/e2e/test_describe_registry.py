"""DescribeRegistry through the gateway, against moto over HTTP."""

from __future__ import annotations

import grpc
import pytest

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.support.helpers import ACCOUNT, metadata, rich_error


async def test_describes_an_empty_registry(stub: pb_grpc.RegistryConfigServiceAsyncStub) -> None:
    call = stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
    response = await call
    assert response.registry_id == ACCOUNT
    assert list(response.replication_configuration.rules) == []
    assert len(response.etag) == 32
    trailers = dict(await call.trailing_metadata())
    assert trailers["x-request-id"]


async def test_describes_what_was_put(stub: pb_grpc.RegistryConfigServiceAsyncStub) -> None:
    empty = await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
    rule = pb.ReplicationRule(
        destinations=[pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)],
        repository_filters=[pb.RepositoryFilter(filter="prod", filter_type="PREFIX_MATCH")],
    )
    await stub.PutReplicationConfiguration(
        pb.PutReplicationConfigurationRequest(
            replication_configuration=pb.ReplicationConfiguration(rules=[rule])
        ),
        metadata=metadata(),
    )
    response = await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
    assert list(response.replication_configuration.rules) == [rule]
    assert response.etag != empty.etag


async def test_explicit_registry_and_region(stub: pb_grpc.RegistryConfigServiceAsyncStub) -> None:
    response = await stub.DescribeRegistry(
        pb.DescribeRegistryRequest(registry_id=ACCOUNT, region="eu-west-1"), metadata=metadata()
    )
    assert response.registry_id == ACCOUNT


async def test_caller_request_id_is_echoed(stub: pb_grpc.RegistryConfigServiceAsyncStub) -> None:
    call = stub.DescribeRegistry(
        pb.DescribeRegistryRequest(), metadata=(*metadata(), ("x-request-id", "trace-me-42"))
    )
    await call
    assert dict(await call.trailing_metadata())["x-request-id"] == "trace-me-42"


@pytest.mark.parametrize(
    ("registry_id", "region"),
    [("999999999999", "us-east-1"), ("123456789012", "ap-south-1")],
    ids=["unknown-registry", "region-not-listed"],
)
async def test_target_outside_the_tenant_is_denied(
    stub: pb_grpc.RegistryConfigServiceAsyncStub, registry_id: str, region: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DescribeRegistry(
            pb.DescribeRegistryRequest(registry_id=registry_id, region=region), metadata=metadata()
        )
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert err.info.reason == "TARGET_NOT_ALLOWED"
    assert (
        dict(err.info.metadata).items()
        >= {
            "tenant": "payments",
            "rpc": "DescribeRegistry",
            "registryId": registry_id,
            "region": region,
        }.items()
    )
    assert registry_id in err.message and "DescribeRegistry" in err.message
