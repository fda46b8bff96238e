"""The Go helper package exposes unverified and refused replication destinations (issue 24).

clients/go/gateway/destinations_test.go, built as tests/clients/test_go_helpers.py builds the
package's tests (offline, at the declared floor), runs against a gateway on moto whose config
also names the destination account (tests/e2e/test_destination_acceptance.py's
`two_accounts`): `gateway.UnverifiedDestinations` reads the `x-unverified-destinations`
trailer, the response's `UnverifiedDestinations` holds the same (a dry run's plan included,
for both replication writes), and a refusal is `gateway.ErrDestinationNotAccepting` with the
destination in its metadata and the statement to add in its message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clients.test_go_helpers import gateway_tests, run_tests
from tests.conftest import GatewayFactory
from tests.e2e.test_destination_acceptance import two_accounts, written
from tests.support.helpers import ACCOUNT, KEY, OTHER_ACCOUNT, PARTNER_ACCOUNT
from tests.support.moto_writes import behave_like_ecr

# The Go build (bounded at 600 s) runs in the first test's setup.
pytestmark = pytest.mark.timeout(1300)

__all__ = ["gateway_tests"]  # the module's fixture: the package's test binary
TESTS = {"TestUnverifiedDestinationsFromTheTrailer", "TestDestinationsLive"}


async def test_the_go_client_exposes_unverified_and_refused_destinations(
    gateway_tests: Path, gateway_factory: GatewayFactory, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave_like_ecr(monkeypatch)
    gateway = await gateway_factory(two_accounts(aws))
    env = {
        "GATEWAY_DESTINATIONS_TARGET": f"127.0.0.1:{gateway.port}",
        "GATEWAY_API_KEY": KEY,
        "GATEWAY_REGISTRY_ID": ACCOUNT,
        # No registry of the config: unverified. A configured registry with no policy in
        # eu-west-1: refused.
        "GATEWAY_OUTSIDE_DESTINATION": f"{PARTNER_ACCOUNT}/us-west-2",
        "GATEWAY_REFUSING_DESTINATION": f"{OTHER_ACCOUNT}/eu-west-1",
    }
    ran = await run_tests(gateway_tests, env, "^Test(Destinations|UnverifiedDestinations)")
    assert ran.returncode == 0, ran.stdout
    assert ran.passed == TESTS, ran.stdout
    assert not ran.skipped, ran.stdout
    # Dry runs and refusals only: nothing was written.
    assert not written()
