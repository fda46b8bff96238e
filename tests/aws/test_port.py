"""The ECR port's contract, run against both implementations: `Upstream` on a real moto
server, and `MemoryEcr`. The domain's unit tests trust the fake because it answers here as
the real client does."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from service.app.embedded import session_factory
from service.auth.targets import Target
from service.aws.memory import MemoryEcr
from service.aws.port import EcrPort, NoPolicy
from service.aws.upstream import Upstream
from service.config import AwsConfig, RegistryConfig
from service.ecr import convert, etags
from service.errors import NotFound
from service.gen.v1 import registry_pb2 as pb
from tests.support.helpers import ACCOUNT, POLICY

TARGET = Target("payments", RegistryConfig(registry_id=ACCOUNT), "us-east-1")
RULE = pb.ReplicationRule(
    destinations=[pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)],
    repository_filters=[pb.RepositoryFilter(filter="prod/", filter_type="PREFIX_MATCH")],
)


@pytest.fixture(params=["moto", "memory"])
async def ecr(request: pytest.FixtureRequest) -> AsyncIterator[EcrPort]:
    if request.param == "memory":
        yield MemoryEcr()
        return
    aws: str = request.getfixturevalue("aws")
    upstream = Upstream(
        AwsConfig(endpoint_url=aws, max_attempts=1), session_factory=session_factory
    )
    try:
        yield upstream
    finally:
        await upstream.close()


async def test_no_policy(ecr: EcrPort) -> None:
    absent = await ecr.get_registry_policy(TARGET)
    assert isinstance(absent, NoPolicy)
    assert absent.aws_request_id  # quoted to the operators in the NOT_FOUND
    error = absent.not_found()
    assert (error.reason, error.metadata["awsErrorCode"]) == (
        "REGISTRY_POLICY_NOT_FOUND",
        "RegistryPolicyNotFoundException",
    )
    with pytest.raises(NotFound) as caught:
        await ecr.delete_registry_policy(TARGET, finish_once_sent=True)
    assert caught.value.reason == "REGISTRY_POLICY_NOT_FOUND"
    assert caught.value.metadata["operation"] == "delete_registry_policy"


async def test_policy_put_get_delete(ecr: EcrPort) -> None:
    assert await ecr.put_registry_policy(TARGET, POLICY, finish_once_sent=True) == POLICY
    assert await ecr.get_registry_policy(TARGET, shared=True) == POLICY
    assert await ecr.delete_registry_policy(TARGET) == POLICY
    assert isinstance(await ecr.get_registry_policy(TARGET), NoPolicy)


async def test_replication_configuration(ecr: EcrPort) -> None:
    empty = await ecr.describe_registry(TARGET)
    assert (empty.registry_id, list(empty.replication_configuration.rules)) == (ACCOUNT, [])
    assert empty.etag == etags.of_json({"rules": []})
    configuration = pb.ReplicationConfiguration(rules=[RULE])
    taken = await ecr.put_replication_configuration(TARGET, configuration, finish_once_sent=True)
    assert taken == configuration
    described = await ecr.describe_registry(TARGET, shared=True)
    assert described.replication_configuration == configuration
    assert described.etag == etags.of_json(convert.replication_to_aws(configuration))
    # A rule for every repository (no filters) is sent without the key, and read back so.
    everything = pb.ReplicationConfiguration(
        rules=[pb.ReplicationRule(destinations=RULE.destinations)]
    )
    await ecr.put_replication_configuration(TARGET, everything)
    assert (await ecr.describe_registry(TARGET)).replication_configuration == everything
