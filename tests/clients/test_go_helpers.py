"""The Go helper package (clients/go/gateway) against a live gateway (issue 28).

The package's tests (`go test`, compiled offline at the declared floor: Debian's grpc-go
1.33 and protobuf-go 1.28, as tests/clients/test_go_client.py builds) run here against a
gateway on moto with two tenants (`payments`, whole and slice; `team`, a slice reader of
the history), a TCP peer that never answers and a port where nothing listens:

- every failure an *gateway.Error (the gateway's status and details, the client's own
  deadline, a refused connection), matched by errors.Is;
- NoCache on every read; UpdateReplicationRules / UpdatePolicyStatements (fresh reads, the
  slice's etag, no write when nothing changed, conflicts retried, one deadline for the
  loop); HistoryIterator across pages; Restore of whole documents and of a slice;
- the default service config: a read of a gateway whose AWS is unreachable is attempted 4
  times (counted by the gateway), a write once; with grpc-go 1.33 only when
  GRPC_GO_RETRY=on (before 1.40 grpc-go retries only then), else once;
- the interceptor: a read refused RESOURCE_EXHAUSTED with a RetryInfo (a gateway limiting
  the tenant's reads) is retried after that delay; one without (past the tenant's share of
  one repository filter) is final.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.app.server import Gateway
from tests.clients.live_setup import SLICE_KEY, closed_port, silent_peer, with_slice_tenant
from tests.clients.test_go_client import DEBIAN_GOCODE, GO_CLIENT, build_offline, go_run
from tests.conftest import GatewayFactory
from tests.support.helpers import ACCOUNT, KEY, OTHER_ACCOUNT, config_dict
from tests.support.moto_writes import behave_like_ecr

# The Go build (bounded at 600 s) runs in the first test's setup.
pytestmark = pytest.mark.timeout(1300)

SERVICE = "ecr.registry.v1.RegistryConfigService"
LIVE_TESTS = {
    "TestLiveEveryFailureIsAnError",
    "TestLiveEveryReadTakesNoCache",
    "TestLiveUpdateReplicationRules",
    "TestLiveOneDeadlineForTheWholeLoop",
    "TestLiveUpdatePolicyStatements",
    "TestLiveHistoryIterator",
    "TestLiveRestore",
    "TestLiveASliceTenantRestoresItsSlice",
    "TestLiveResourceExhausted",
}
UNIT_TESTS = {
    "TestFromErrorDecodesTheDetails",
    "TestFromErrorTypesWhatIsNotAStatus",
    "TestTheServiceConfigRetriesTheReadsOnly",
    "TestTheInterceptorRetriesOnlyTransientResourceExhausted",
}


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    passed: set[str]
    skipped: set[str]


@pytest.fixture(scope="module")
def gateway_tests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's test binary, built offline against Debian's Go sources."""
    assert (DEBIAN_GOCODE / "google.golang.org" / "grpc" / "go.mod").is_file()
    work = tmp_path_factory.mktemp("go-helpers")
    root = work / "clients" / "go"
    shutil.copytree(GO_CLIENT, root)
    build_offline(root, work / "stand-ins")
    binary = work / "gateway.test"
    built = go_run(["test", "-c", "-o", str(binary), "./gateway"], root, work)
    assert built.returncode == 0, built.stderr
    return binary


async def run_tests(binary: Path, env: dict[str, str], pattern: str) -> Ran:
    """Run the test binary without blocking the loop the gateways serve from."""
    process = await asyncio.create_subprocess_exec(
        str(binary),
        "-test.v",
        "-test.count=1",
        f"-test.run={pattern}",
        env={**{k: v for k, v in os.environ.items() if k != "GRPC_GO_RETRY"}, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout=300)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    text = out.decode()
    return Ran(
        process.returncode,
        text,
        set(re.findall(r"^--- PASS: (\w+)", text, flags=re.M)),
        set(re.findall(r"^--- SKIP: (\w+)", text, flags=re.M)),
    )


@pytest.fixture
async def silent() -> AsyncIterator[str]:
    async with silent_peer() as target:
        yield target


def started(gateway: Gateway, rpc: str) -> float:
    labels = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": rpc}
    return gateway.metrics.registry.get_sample_value("grpc_server_started_total", labels) or 0


async def test_the_go_helpers_against_a_live_gateway(
    gateway_tests: Path,
    gateway_factory: GatewayFactory,
    aws: str,
    silent: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Several replication rules (the tenants' slices beside each other), as ECR takes.
    behave_like_ecr(monkeypatch)
    gateway = await gateway_factory(with_slice_tenant(config_dict(aws)))
    # A read every 4 s (a retry waits out the RetryInfo), and a share of one filter (a write
    # of two is refused RESOURCE_EXHAUSTED without RetryInfo, REPLICATION_QUOTA_EXCEEDED).
    limited = config_dict(aws)
    limited["rate_limit"] = {"reads_per_second": 0.25, "writes_per_second": 100, "burst": 1}
    limited["tenants"][0]["registries"][0]["max_filters"] = 1
    limited_gateway = await gateway_factory(limited)
    env = {
        "GATEWAY_LIMITED_TARGET": f"127.0.0.1:{limited_gateway.port}",
        "GATEWAY_TARGET": f"127.0.0.1:{gateway.port}",
        "GATEWAY_API_KEY": KEY,
        "GATEWAY_SLICE_API_KEY": SLICE_KEY,
        "GATEWAY_REGISTRY_ID": ACCOUNT,
        "GATEWAY_FORBIDDEN_REGISTRY": OTHER_ACCOUNT,
        "GATEWAY_SILENT_TARGET": silent,
        "GATEWAY_CLOSED_TARGET": closed_port(),
        "GRPC_GO_RETRY": "on",
    }
    ran = await run_tests(
        gateway_tests, env, "^Test(Live|FromError|TheServiceConfig|TheInterceptor)"
    )
    assert ran.returncode == 0, ran.stdout
    # Every test ran and passed; none skipped (a live test skips without its gateway).
    assert ran.passed == LIVE_TESTS | UNIT_TESTS, ran.stdout
    assert not ran.skipped, ran.stdout


@pytest.mark.parametrize("retry", ["on", ""], ids=["GRPC_GO_RETRY=on", "at the floor without it"])
async def test_the_default_service_config_retries_reads_not_writes(
    gateway_tests: Path, gateway_factory: GatewayFactory, aws: str, retry: str
) -> None:
    # AWS unreachable: every read and write the gateway cannot serve is UNAVAILABLE.
    raw = config_dict(aws)
    raw["aws"]["endpoint_url"] = f"http://{closed_port()}"
    gateway = await gateway_factory(raw)
    env = {"GATEWAY_UNAVAILABLE_TARGET": f"127.0.0.1:{gateway.port}", "GATEWAY_API_KEY": KEY}
    if retry:
        env["GRPC_GO_RETRY"] = retry
    ran = await run_tests(gateway_tests, env, "^TestUnavailable$")
    assert ran.returncode == 0, ran.stdout
    assert ran.passed == {"TestUnavailable"}, ran.stdout
    assert started(gateway, "DescribeRegistry") == (4 if retry else 1)
    assert started(gateway, "PutRegistryPolicy") == 1
