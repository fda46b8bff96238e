"""What the AWS clients of one process share, and how long they are held (issue 27).

Every test here undoes the suite's shared loader (tests/conftest.py
`botocore_data_parsed_once`): what is shared must be shared by the service itself.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.loaders
import botocore.session
import pytest
from aiobotocore.httpsession import AIOHTTPSession
from botocore.loaders import JSONFileLoader

from service.app.embedded import session_factory
from service.auth.targets import Target
from service.aws.upstream import Upstream
from service.bounded_gather import gather_bounded
from service.config import AwsConfig, RegistryConfig
from service.errors import FailedPrecondition
from tests.conftest import wait_until
from tests.support.aws_proxy import CountingProxy, Fault
from tests.support.helpers import ACCOUNT

ACCOUNTS = [f"30000000000{i}" for i in range(5)]
REGIONS = ("us-east-1", "eu-west-1")


def role_registry(account: str) -> RegistryConfig:
    return RegistryConfig(
        registry_id=account,
        role_arn=f"arn:aws:iam::{account}:role/registry-gateway",
        regions=REGIONS,
    )


def targets(accounts: list[str] = ACCOUNTS) -> list[Target]:
    return [Target("payments", role_registry(a), region) for a in accounts for region in REGIONS]


@pytest.fixture
def own_loaders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each botocore session makes its own loader again, as outside the test suite."""
    monkeypatch.setattr(botocore.session, "create_loader", botocore.loaders.create_loader)


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch, own_loaders: None) -> Counter[str]:
    """How many times the gateway's code (this thread: moto answers in threads of its own,
    with loaders of its own) parses each of botocore's data files (e.g. `ecr/service-2`)."""
    counts: Counter[str] = Counter()
    load_file = JSONFileLoader.load_file

    def counting(self: JSONFileLoader, file_path: str) -> Any:
        data = load_file(self, file_path)
        if data is not None and threading.current_thread() is threading.main_thread():
            path = Path(file_path)
            # <service>/<api version>/<name>, or <name> (endpoints, partitions, ...).
            versioned = path.parent.name[:1].isdigit()
            counts[f"{path.parent.parent.name}/{path.name}" if versioned else path.name] += 1
        return data

    monkeypatch.setattr(JSONFileLoader, "load_file", counting)
    return counts


@pytest.fixture
def verify_loads(monkeypatch: pytest.MonkeyPatch, aws_trust_store: Path) -> Iterator[list[str]]:
    """Every CA bundle loaded into an SSL context (what aiohttp's connectors verify with)."""
    loads: list[str] = []
    load = ssl.SSLContext.load_verify_locations

    def counting(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> Any:
        cafile = args[0] if args else kwargs.get("cafile")
        if cafile == str(aws_trust_store):
            loads.append(cafile)
        return load(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
    yield loads


async def make_upstream(endpoint: str, **aws: Any) -> Upstream:
    return Upstream(
        AwsConfig(endpoint_url=endpoint, max_attempts=1, **aws), session_factory=session_factory
    )


@pytest.fixture
async def upstream(aws: str) -> AsyncIterator[Upstream]:
    made = await make_upstream(aws)
    yield made
    await made.close()


async def describe_each(upstream: Upstream, each: list[Target]) -> None:
    for target in each:
        answer = await upstream.describe_registry(target)
        assert answer.registry_id == target.registry_id  # each client reached its account


# --- loaded once per process --------------------------------------------------------------------


async def test_botocore_data_is_parsed_once_for_every_role(
    parsed: Counter[str], upstream: Upstream
) -> None:
    await describe_each(upstream, targets())
    # Ten ECR clients of five roles' sessions: ECR's model parsed once. (STS's and the
    # endpoint data: at most once more, by the base session the roles are assumed with.)
    assert parsed["ecr/service-2"] == 1
    assert parsed["ecr/endpoint-rule-set-1"] == 1
    assert max(parsed.values()) <= 2, parsed


async def test_one_tls_context_for_every_client(
    verify_loads: list[str], upstream: Upstream
) -> None:
    await describe_each(upstream, targets())
    # Ten ECR clients, five STS clients (the account checks) and the source STS client of
    # AssumeRole: aiobotocore would load the CA bundle once for each.
    assert verify_loads == [verify_loads[0]]
    assert upstream.shared.tls.made == 1


def test_the_tls_hook_still_exists_in_aiobotocore() -> None:
    # service/aws/shared_botocore.py takes over this method: if aiobotocore renames it or
    # changes what it takes, the shared context silently stops being used.
    assert "_create_connector" in vars(AIOHTTPSession)
    assert list(inspect.signature(AIOHTTPSession._create_connector).parameters) == [
        "self",
        "proxy_url",
    ]


async def test_the_account_is_checked_once_per_role(proxy: CountingProxy) -> None:
    made = await make_upstream(proxy.url)
    try:
        await describe_each(made, targets(ACCOUNTS[:2]))
        # Two roles, two regions each: each role assumed once, its account checked once
        # (the credentials of a role reach one account wherever they are valid).
        assert proxy.count("sts:AssumeRole") == 2
        assert proxy.count("sts:GetCallerIdentity") == 2
        assert proxy.count("ecr:GetAccountSetting") == 4  # each (account, region): once
    finally:
        await made.close()


async def test_the_base_credentials_are_checked_once(proxy: CountingProxy) -> None:
    made = await make_upstream(proxy.url)
    try:
        registry = RegistryConfig(registry_id=ACCOUNT, regions=REGIONS)
        await describe_each(made, [Target("payments", registry, r) for r in REGIONS])
        assert proxy.count("sts:GetCallerIdentity") == 1
    finally:
        await made.close()


async def test_a_role_in_another_account_than_the_registry_is_refused(
    proxy: CountingProxy,
) -> None:
    # The role is in another account than the registry: every call on the registry is
    # refused, in every region (the check asked once).
    registry = RegistryConfig(
        registry_id=ACCOUNTS[0], role_arn=role_registry(ACCOUNTS[1]).role_arn, regions=REGIONS
    )
    made = await make_upstream(proxy.url)
    try:
        for region in REGIONS:
            with pytest.raises(FailedPrecondition) as caught:
                await made.describe_registry(Target("payments", registry, region))
            assert caught.value.reason == "ACCOUNT_MISMATCH"
            assert f"reach account {ACCOUNTS[1]}" in caught.value.message
        assert proxy.count("ecr:DescribeRegistry") == 0
        assert proxy.count("sts:GetCallerIdentity") == 1
    finally:
        await made.close()


# --- closed when idle ---------------------------------------------------------------------------


@pytest.fixture
async def idle_upstream(proxy: CountingProxy) -> AsyncIterator[Upstream]:
    made = await make_upstream(proxy.url, client_idle_seconds=0.2)
    yield made
    await made.close()


async def test_idle_clients_are_closed_and_made_again_without_a_new_check(
    idle_upstream: Upstream, proxy: CountingProxy
) -> None:
    each = targets(ACCOUNTS[:2])
    await describe_each(idle_upstream, each)
    checks = proxy.count("sts:GetCallerIdentity")
    scopes = proxy.count("ecr:GetAccountSetting")
    assert (checks, scopes) == (2, 4)

    # A client leaves the table before its close is counted: wait for both.
    await wait_until(
        lambda: len(idle_upstream.clients) == 0 and idle_upstream.clients.closed_idle >= 4,
        what="the idle clients closed",
    )
    await describe_each(idle_upstream, each)  # made again, transparently
    # Kept from when they were first made: no account check, no policy-scope read again.
    assert proxy.count("sts:GetCallerIdentity") == checks
    assert proxy.count("ecr:GetAccountSetting") == scopes
    assert proxy.count("ecr:DescribeRegistry") == 2 * len(each)


async def test_a_client_with_a_call_in_flight_is_not_closed(
    idle_upstream: Upstream, proxy: CountingProxy
) -> None:
    [target, *_] = targets(ACCOUNTS[:1])
    await idle_upstream.describe_registry(target)  # made
    proxy.fault = Fault(frozenset({"ecr:DescribeRegistry"}), delay_seconds=30)
    call = asyncio.create_task(idle_upstream.describe_registry(target))
    await wait_until(lambda: proxy.count("ecr:DescribeRegistry") == 2, what="the call sent")
    # Several idle periods pass while the call waits on AWS: its client stays open.
    await asyncio.sleep(1.0)
    assert len(idle_upstream.clients) >= 1
    proxy.fault = None
    proxy.released.set()
    answer = await asyncio.wait_for(call, 30)
    assert answer.registry_id == target.registry_id
    await wait_until(lambda: len(idle_upstream.clients) == 0, what="the client closed after")


async def test_zero_keeps_clients_open(aws: str) -> None:
    made = await make_upstream(aws, client_idle_seconds=0)
    try:
        await describe_each(made, targets(ACCOUNTS[:1]))
        assert await made.clients.close_idle() == 0
        assert len(made.clients) == 2
    finally:
        await made.close()
    assert len(made.clients) == 0


# --- a few at a time ----------------------------------------------------------------------------


def holder(
    running: list[int], peak: list[int], gate: asyncio.Event, value: int
) -> Callable[[], Awaitable[int]]:
    async def call() -> int:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        try:
            await gate.wait()
            return value
        finally:
            running[0] -= 1

    return call


async def test_gather_bounded_runs_at_most_limit_at_once_in_order() -> None:
    running, peak, gate = [0], [0], asyncio.Event()
    calls = [holder(running, peak, gate, i) for i in range(10)]
    gathered = asyncio.create_task(gather_bounded(calls, limit=3, patience=60))
    await wait_until(lambda: running[0] == 3, what="three calls running")
    await asyncio.sleep(0.1)
    assert running[0] == 3  # the others wait for a slot
    gate.set()
    assert await gathered == list(range(10))
    assert peak[0] == 3


async def test_gather_bounded_calls_past_their_patience_hold_no_slot() -> None:
    running, peak, hung = [0], [0], asyncio.Event()
    quick = asyncio.Event()
    quick.set()
    calls = [holder(running, peak, hung, i) for i in range(3)]
    calls.append(holder(running, peak, quick, 3))
    gathered = asyncio.create_task(gather_bounded(calls, limit=2, patience=0.05))
    # Three calls that do not answer, two slots: the fourth still runs, once the first two
    # have waited out their patience (not their end).
    await wait_until(lambda: peak[0] == 4, what="every call started")
    assert not gathered.done()
    hung.set()
    assert await gathered == [0, 1, 2, 3]


async def test_gather_bounded_raises_what_a_call_raises() -> None:
    async def fails() -> int:
        raise ValueError("no")

    async def answers() -> int:
        return 1

    with pytest.raises(ValueError, match="no"):
        await gather_bounded([answers, fails, answers], limit=2, patience=1)
