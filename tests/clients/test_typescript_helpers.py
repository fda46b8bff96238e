"""The TypeScript client's helpers and error hierarchy against a live gateway (issue 28).

Runs clients/typescript/test/helpers.test.ts (compiled by `tsc`, as the other TypeScript
tests) with `node --test`, over gRPC and Connect, against a gateway on moto with two
tenants (`payments`, whole and slice; `team`, a slice reader of the history), a TCP peer
that accepts connections and never answers (so only the client's own deadline or the
caller's AbortSignal can end a call), and a port where nothing listens:

- a deadline the client enforces is `DeadlineExceeded`, the caller's signal `Cancelled`, a
  refused connection `Unavailable`: every failure a `GatewayError`;
- `CallInfo` holds x-cache and the request id whatever the transport; `noCache` on every read;
- `updateReplicationRules` / `updatePolicyStatements`: fresh reads, the slice's etag, no
  write when nothing changed, conflicts retried, one deadline for the whole loop;
- `iterConfigurationHistory` across pages; `restore` of whole documents and of a slice.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator

import pytest

from tests.clients.live_setup import SLICE_KEY, closed_port, silent_peer, with_slice_tenant
from tests.clients.test_typescript_client import run_node, tsc, with_http
from tests.conftest import GatewayFactory
from tests.support.helpers import ACCOUNT, KEY, config_dict
from tests.support.moto_writes import behave_like_ecr

# tsc runs in the first test's setup (bounded at 300 s), node at 120 s.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    assert found, "node is not on PATH: the TypeScript client test needs Node.js 20+"
    tsc(found, "tsconfig.json")
    return found


@pytest.fixture
async def silent() -> AsyncIterator[str]:
    async with silent_peer() as target:
        yield target


async def test_the_typescript_helpers_and_errors_against_a_live_gateway(
    node: str,
    gateway_factory: GatewayFactory,
    aws: str,
    silent: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Several replication rules (the tenants' slices beside each other), as ECR takes.
    behave_like_ecr(monkeypatch)
    gateway = await gateway_factory(with_slice_tenant(with_http(config_dict(aws))))
    env = {
        "GATEWAY_TARGET": f"127.0.0.1:{gateway.port}",
        "GATEWAY_HTTP_TARGET": f"127.0.0.1:{gateway.http_port}",
        "GATEWAY_API_KEY": KEY,
        "GATEWAY_SLICE_API_KEY": SLICE_KEY,
        "GATEWAY_REGISTRY_ID": ACCOUNT,
        "GATEWAY_SILENT_TARGET": silent,
        "GATEWAY_CLOSED_TARGET": closed_port(),
    }
    ran = await run_node(node, "--test", "build/test/helpers.test.js", env=env)
    report = ran.stdout + ran.stderr
    assert ran.returncode == 0, report
    # Every test the file declares ran and passed (a file that declared none would "pass").
    declared = re.search(r"^# tests (\d+)$", ran.stdout, flags=re.M)
    assert declared, report
    assert int(declared.group(1)) == 2 * 13, report
    assert re.search(rf"^# pass {declared.group(1)}$", ran.stdout, flags=re.M), report
