"""The Python client exposes the destinations a write could not verify (issue 24): the
`x-unverified-destinations` trailer (a header over HTTP) as `CallInfo.unverified_destinations`,
and the response's `unverified_destinations` (a dry run's plan), over gRPC and Connect; and a
refusal as the typed error with its reason."""

from __future__ import annotations

import pytest
from registry_gateway_client import CallInfo, RegistryConfigClient, RegistryGatewayError
from registry_gateway_client.v1 import registry_pb2 as pb

from tests.clients.test_python_connect import address
from tests.conftest import GatewayFactory
from tests.e2e.test_destination_acceptance import two_accounts
from tests.support.helpers import ACCOUNT, KEY, OTHER_ACCOUNT, PARTNER_ACCOUNT

OUTSIDE = pb.ReplicationDestination(registry_id=PARTNER_ACCOUNT, region="us-west-2")
SAME = pb.ReplicationDestination(registry_id=ACCOUNT, region="eu-west-1")
# A registry of the config with no policy: it does not accept.
DEST = pb.ReplicationDestination(registry_id=OTHER_ACCOUNT, region="eu-west-1")


def configuration(*destinations: pb.ReplicationDestination) -> pb.ReplicationConfiguration:
    return pb.ReplicationConfiguration(rules=[pb.ReplicationRule(destinations=destinations)])


@pytest.mark.parametrize("transport", ["grpc", "connect"])
async def test_the_client_exposes_unverified_destinations(
    gateway_factory: GatewayFactory, aws: str, transport: str
) -> None:
    raw = two_accounts(aws)
    raw["http"] = {"listen": "127.0.0.1:0"}
    gateway = await gateway_factory(raw)
    async with RegistryConfigClient(
        address(gateway, transport), api_key=KEY, registry_id=ACCOUNT, region="us-east-1"
    ) as client:
        unverified, verified = CallInfo(), CallInfo()
        plan = await client.put_replication_configuration(
            replication_configuration=configuration(OUTSIDE), validate_only=True, info=unverified
        )
        written = await client.put_replication_configuration(
            replication_configuration=configuration(SAME), info=verified
        )
        with pytest.raises(RegistryGatewayError) as caught:
            await client.put_replication_configuration(
                replication_configuration=configuration(DEST)
            )
    assert unverified.unverified_destinations == (f"{PARTNER_ACCOUNT}/us-west-2",)
    assert verified.unverified_destinations == ()
    # The dry run's plan names them too; the verified write's answer none.
    assert list(plan.unverified_destinations) == [OUTSIDE]
    assert list(written.unverified_destinations) == []
    assert caught.value.reason == "DESTINATION_NOT_ACCEPTING"
