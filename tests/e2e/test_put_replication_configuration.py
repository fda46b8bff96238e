"""PutReplicationConfiguration through the gateway."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from moto.ecr.models import ECRBackend, ecr_backends

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.support.helpers import ACCOUNT, metadata, rich_error

EU = pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)
US_WEST = pb.ReplicationDestination(region="us-west-2", registry_id="210987654321")


def stored() -> dict[str, Any]:
    config: dict[str, Any] = ecr_backends[ACCOUNT]["us-east-1"].replication_config
    return config


def request(*rules: pb.ReplicationRule, **kw: Any) -> pb.PutReplicationConfigurationRequest:
    return pb.PutReplicationConfigurationRequest(
        replication_configuration=pb.ReplicationConfiguration(rules=rules), **kw
    )


@pytest.fixture
def several_rules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto refuses more than one rule ("This feature is disabled"); ECR takes up to 10."""

    def put(self: ECRBackend, replication_config: dict[str, Any]) -> dict[str, Any]:
        self.replication_config = replication_config
        return {"replicationConfiguration": replication_config}

    monkeypatch.setattr(ECRBackend, "put_replication_configuration", put)
    yield


async def test_puts_and_answers_the_fresh_configuration(
    stub: pb_grpc.RegistryConfigServiceAsyncStub,
) -> None:
    rule = pb.ReplicationRule(
        destinations=[EU],
        repository_filters=[pb.RepositoryFilter(filter="prod", filter_type="PREFIX_MATCH")],
    )
    response = await stub.PutReplicationConfiguration(request(rule), metadata=metadata())
    assert list(response.replication_configuration.rules) == [rule]
    assert response.registry_id == ACCOUNT
    described = await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
    assert response.etag == described.etag
    assert stored()["rules"][0]["repositoryFilters"] == [
        {"filter": "prod", "filterType": "PREFIX_MATCH"}
    ]


async def test_empty_filters_mean_all_repositories(
    stub: pb_grpc.RegistryConfigServiceAsyncStub,
) -> None:
    await stub.PutReplicationConfiguration(
        request(pb.ReplicationRule(destinations=[EU])), metadata=metadata()
    )
    # The key is omitted rather than sent empty: AWS wants at least one filter when present.
    assert stored()["rules"] == [{"destinations": [{"region": "eu-west-1", "registryId": ACCOUNT}]}]


async def test_several_rules(
    stub: pb_grpc.RegistryConfigServiceAsyncStub, several_rules: None
) -> None:
    rules = [pb.ReplicationRule(destinations=[EU]), pb.ReplicationRule(destinations=[US_WEST])]
    response = await stub.PutReplicationConfiguration(request(*rules), metadata=metadata())
    assert list(response.replication_configuration.rules) == rules


async def test_stale_etag_is_aborted_and_changes_nothing(
    stub: pb_grpc.RegistryConfigServiceAsyncStub,
) -> None:
    before = await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
    await stub.PutReplicationConfiguration(
        request(pb.ReplicationRule(destinations=[EU])), metadata=metadata()
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutReplicationConfiguration(
            request(pb.ReplicationRule(destinations=[US_WEST]), etag=before.etag),
            metadata=metadata(),
        )
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.ABORTED
    assert err.info.reason == "ETAG_MISMATCH"
    assert stored()["rules"][0]["destinations"][0]["region"] == "eu-west-1"


async def test_validate_only_changes_nothing(stub: pb_grpc.RegistryConfigServiceAsyncStub) -> None:
    response = await stub.PutReplicationConfiguration(
        request(pb.ReplicationRule(destinations=[EU]), validate_only=True), metadata=metadata()
    )
    assert len(response.replication_configuration.rules) == 1
    assert stored() == {"rules": []}


async def test_a_rule_only_aws_knows_is_invalid_argument(
    stub: pb_grpc.RegistryConfigServiceAsyncStub,
) -> None:
    # Two rules are valid for the gateway (ECR takes 10); unpatched moto refuses more than
    # one: a stand-in for a rule only AWS knows. (The gateway itself refuses the source
    # registry as a destination: tests/e2e/test_validation.py.)
    rules = [pb.ReplicationRule(destinations=[EU]), pb.ReplicationRule(destinations=[US_WEST])]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutReplicationConfiguration(request(*rules), metadata=metadata())
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.info.reason == "AWS_INVALID_PARAMETER"
    assert err.info.metadata["awsErrorCode"] == "ValidationException"
    assert stored() == {"rules": []}


async def test_missing_filter_type_is_invalid_before_aws(
    stub: pb_grpc.RegistryConfigServiceAsyncStub,
) -> None:
    rule = pb.ReplicationRule(
        destinations=[EU], repository_filters=[pb.RepositoryFilter(filter="p")]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutReplicationConfiguration(request(rule), metadata=metadata())
    assert rich_error(caught.value).code == grpc.StatusCode.INVALID_ARGUMENT
    assert stored() == {"rules": []}
