"""The Python client's helpers (issue 28), against a live gateway on real moto.

`update_replication_rules` / `update_policy_statements` (and the whole-document
`update_replication_configuration`): read past the cache, apply the caller's change, write
with the read's etag, again on ETAG_MISMATCH, nothing written when nothing changed, one
deadline for the whole loop. `no_cache` on every read. `iter_configuration_history`: every
version, newest first, across pages, a page read only when the previous one is used up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from moto.ecr.models import ecr_backends
from registry_gateway_client import (
    AsyncProceed,
    Attempt,
    CallInfo,
    DeadlineExceeded,
    EtagMismatch,
    InvalidArgument,
    RegistryConfigClient,
    Reply,
    SyncRegistryConfigClient,
)
from registry_gateway_client.v1 import registry_pb2 as pb

from service.app.server import Gateway
from tests.support.helpers import ACCOUNT, KEY, PARTNER_ACCOUNT
from tests.support.moto_writes import behave_like_ecr

EU = {"region": "eu-west-1", "registryId": ACCOUNT}
PARTNER = {"region": "us-west-2", "registryId": PARTNER_ACCOUNT}


@pytest.fixture(autouse=True)
def several_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto takes one replication rule; ECR takes ten (the slices pack several)."""
    behave_like_ecr(monkeypatch)


def target(gateway: Gateway) -> str:
    return f"127.0.0.1:{gateway.port}"


def rule(prefix: str, destination: dict[str, str] = EU) -> dict[str, Any]:
    """A rule of tenant payments' slice (its repositories start with payments/)."""
    return {
        "destinations": [destination],
        "repositoryFilters": [{"filter": f"payments/{prefix}", "filterType": "PREFIX_MATCH"}],
    }


def filters(rules: Any) -> list[str]:
    # Read back in their canonical form, a tenant's filters of one destination set share a rule.
    return [f.filter for r in rules for f in r.repository_filters]


def stored_filters() -> set[str]:
    """The repository filters AWS (moto) holds now, every tenant's."""
    config = ecr_backends[ACCOUNT]["us-east-1"].replication_config
    return {f["filter"] for r in config["rules"] for f in r.get("repositoryFilters", [])}


def add_rule(prefix: str) -> Callable[[list[pb.ReplicationRule]], list[Any]]:
    """A change for update_replication_rules: add a rule for payments/<prefix> if missing."""

    def change(rules: list[pb.ReplicationRule]) -> list[Any]:
        if f"payments/{prefix}" in filters(rules):
            return list(rules)
        return [*rules, rule(prefix)]

    return change


def statement(sid: str) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{PARTNER_ACCOUNT}:root"},
        "Action": ["ecr:CreateRepository", "ecr:ReplicateImage"],
        "Resource": f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/payments/*",
    }


def sids(statements_json: str) -> list[str]:
    return [s["Sid"] for s in json.loads(statements_json or "[]")]


class Calls:
    """An interceptor that records each attempt's RPC and metadata (observes, changes nothing)."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []

    async def intercept(self, attempt: Attempt, proceed: AsyncProceed) -> Reply:
        self.attempts.append(attempt)
        return await proceed(attempt)

    @property
    def rpcs(self) -> list[str]:
        return [a.rpc for a in self.attempts]


# --- update_replication_rules --------------------------------------------------------------


async def test_update_replication_rules_keeps_a_concurrent_writers_rule(gateway: Gateway) -> None:
    seen: list[list[str]] = []
    async with (
        RegistryConfigClient(target(gateway), api_key=KEY) as client,
        RegistryConfigClient(target(gateway), api_key=KEY) as colleague,
    ):

        async def add_api_racing_a_colleague(rules: list[pb.ReplicationRule]) -> list[Any]:
            seen.append(filters(rules))
            if len(seen) == 1:
                # Between our read and our write a colleague writes the slice (made certain).
                await colleague.update_replication_rules(add_rule("web"))
            return add_rule("api")(rules)

        answer = await client.update_replication_rules(add_api_racing_a_colleague)
        mine = await client.get_replication_rules(no_cache=True)
    assert seen == [[], ["payments/web"]]  # called again, on the rules with the colleague's
    assert filters(answer.rules) == ["payments/api", "payments/web"]  # canonical: sorted
    assert answer.etag == mine.etag
    assert stored_filters() == {"payments/web", "payments/api"}


async def test_update_replication_rules_in_place_and_removing(gateway: Gateway) -> None:
    async with RegistryConfigClient(target(gateway), api_key=KEY) as client:
        await client.update_replication_rules(add_rule("api"))
        await client.update_replication_rules(add_rule("web"))

        def drop_web(rules: list[pb.ReplicationRule]) -> None:  # edits the list it was given
            for r in rules:  # one canonical rule holds both filters: drop the filter
                kept = [f for f in r.repository_filters if f.filter != "payments/web"]
                del r.repository_filters[:]
                r.repository_filters.extend(kept)
            rules[:] = [r for r in rules if r.repository_filters]

        answer = await client.update_replication_rules(drop_web)
    assert filters(answer.rules) == ["payments/api"]
    assert stored_filters() == {"payments/api"}


async def test_a_change_that_changes_nothing_writes_nothing(gateway: Gateway) -> None:
    calls = Calls()
    async with RegistryConfigClient(target(gateway), api_key=KEY, interceptors=[calls]) as client:
        first = await client.update_replication_rules(add_rule("api"))
        statements = await client.update_policy_statements(lambda s: [statement("PaymentsA")])
        config = await client.describe_registry()
        calls.attempts.clear()
        again = await client.update_replication_rules(add_rule("api"))
        same = await client.update_policy_statements(lambda s: [statement("PaymentsA")])
        unchanged = await client.update_replication_configuration(lambda c: None)
    assert calls.rpcs == ["GetReplicationRules", "GetPolicyStatements", "DescribeRegistry"]
    assert (again.etag, list(again.rules)) == (first.etag, list(first.rules))
    assert not again.changes
    assert (same.etag, sids(same.statements_json)) == (statements.etag, ["PaymentsA"])
    assert unchanged.etag == config.etag


async def test_the_helpers_read_past_the_cache(gateway: Gateway) -> None:
    """A cached read could make "already there" look true after a change made around the
    gateway (the console, Terraform): the helpers read fresh, so the write is not skipped."""
    calls = Calls()
    async with RegistryConfigClient(target(gateway), api_key=KEY, interceptors=[calls]) as client:
        await client.update_replication_rules(add_rule("api"))
        await client.describe_registry()  # the cache now holds the rule
        ecr_backends[ACCOUNT]["us-east-1"].replication_config = {"rules": []}  # out of band

        def add_eu(config: pb.ReplicationConfiguration) -> None:
            if not config.rules:
                config.rules.add().repository_filters.add(
                    filter="payments/api", filter_type="PREFIX_MATCH"
                )
            wanted = pb.ReplicationDestination(registry_id=ACCOUNT, region="eu-west-1")
            if wanted not in config.rules[0].destinations:
                config.rules[0].destinations.append(wanted)

        await client.update_replication_configuration(add_eu)
        assert stored_filters() == {"payments/api"}  # written back, not skipped
        ecr_backends[ACCOUNT]["us-east-1"].replication_config = {"rules": []}
        await client.update_replication_rules(add_rule("api"))
    assert stored_filters() == {"payments/api"}
    reads = [a for a in calls.attempts if a.rpc in {"GetReplicationRules", "DescribeRegistry"}]
    fresh = [("cache-control", "no-cache") in a.metadata for a in reads]
    assert fresh == [True, False, True, True]  # the helpers' reads; the plain read is cached


async def test_update_policy_statements_keeps_a_concurrent_writers_statement(
    gateway: Gateway,
) -> None:
    seen: list[list[str]] = []
    async with (
        RegistryConfigClient(target(gateway), api_key=KEY) as client,
        RegistryConfigClient(target(gateway), api_key=KEY) as colleague,
    ):

        async def add_mine(statements: list[Any]) -> list[Any]:
            seen.append([s["Sid"] for s in statements])
            if len(seen) == 1:
                await colleague.update_policy_statements(lambda s: [*s, statement("PaymentsB")])
            return [*statements, statement("PaymentsA")]

        answer = await client.update_policy_statements(add_mine)
    assert seen == [[], ["PaymentsB"]]
    assert sids(answer.statements_json) == ["PaymentsB", "PaymentsA"]
    policy = json.loads(ecr_backends[ACCOUNT]["us-east-1"].registry_policy or "{}")
    assert [s["Sid"] for s in policy["Statement"]] == ["PaymentsB", "PaymentsA"]


async def test_a_change_giving_undecodable_rules_is_invalid_argument(gateway: Gateway) -> None:
    async with RegistryConfigClient(target(gateway), api_key=KEY) as client:
        with pytest.raises(InvalidArgument) as caught:
            await client.update_replication_rules(
                lambda rules: [{"destination": [EU], "repositoryFilters": []}]
            )
    assert [v.field for v in caught.value.field_violations] == ["rules[0]"]
    assert 'no field named "destination"' in caught.value.field_violations[0].description
    assert stored_filters() == set()


@pytest.mark.parametrize("helper", ["rules", "statements", "configuration"])
async def test_one_deadline_covers_the_whole_loop(gateway: Gateway, helper: str) -> None:
    """A colleague writes before each of our writes, for ever: the loop ends when its one
    deadline does, long before max_attempts, whatever each call's own timeout would allow."""
    changes: list[int] = []
    async with (
        RegistryConfigClient(target(gateway), api_key=KEY) as client,
        RegistryConfigClient(target(gateway), api_key=KEY) as colleague,
    ):

        async def always_raced(current: Any) -> Any:
            changes.append(1)
            n = len(changes)
            await asyncio.sleep(0.3)  # a slow change: the deadline runs out in a few rounds
            if helper == "rules":
                await colleague.update_replication_rules(add_rule(f"other{n}"))
                return add_rule(f"mine{n}")(current)
            if helper == "statements":
                await colleague.update_policy_statements(lambda s: [statement(f"PaymentsO{n}")])
                return [statement(f"PaymentsM{n}")]
            await colleague.put_replication_configuration(
                replication_configuration={"rules": [rule(f"other{n}", PARTNER)]}
            )
            current.rules.add().repository_filters.add(filter=f"m{n}", filter_type="PREFIX_MATCH")
            current.rules[-1].destinations.add(region="eu-west-1", registry_id=ACCOUNT)
            return None

        update: Any = {
            "rules": client.update_replication_rules,
            "statements": client.update_policy_statements,
            "configuration": client.update_replication_configuration,
        }[helper]
        with pytest.raises((EtagMismatch, DeadlineExceeded)):
            await update(always_raced, max_attempts=50, timeout=2.0)
    assert 1 <= len(changes) < 50


@pytest.mark.parametrize(
    "read",
    [
        "describe_registry",
        "get_registry_policy",
        "get_replication_rules",
        "get_policy_statements",
        "get_configuration_history",
    ],
)
async def test_no_cache_on_every_read(gateway: Gateway, read: str) -> None:
    calls = Calls()
    kwargs: dict[str, Any] = {"resource": "policy"} if read == "get_configuration_history" else {}
    async with RegistryConfigClient(target(gateway), api_key=KEY, interceptors=[calls]) as client:
        await client.put_policy_statements(statements=[statement("PaymentsA")])
        method = getattr(client, read)
        await method(**kwargs)
        info = CallInfo()
        await method(no_cache=True, info=info, **kwargs)
    (fresh,) = [a for a in calls.attempts[1:] if ("cache-control", "no-cache") in a.metadata]
    assert fresh.rpc == calls.attempts[-1].rpc
    if read != "get_configuration_history":  # the history is never cached: no x-cache
        assert info.cache == "miss"


# --- iter_configuration_history ------------------------------------------------------------


async def test_iter_configuration_history_pages_through_every_version(gateway: Gateway) -> None:
    calls = Calls()
    async with RegistryConfigClient(target(gateway), api_key=KEY, interceptors=[calls]) as client:
        written = []
        for sid in ("PaymentsA", "PaymentsB", "PaymentsC"):
            await client.put_policy_statements(statements=[statement(sid)])
            # The history (a full reader's) records the whole policy's etags.
            written.append((await client.get_registry_policy(no_cache=True)).etag)
        calls.attempts.clear()
        versions = [v async for v in client.iter_configuration_history("policy", page_size=1)]
        pages = len(calls.attempts)
        # Stopping early reads no further page.
        calls.attempts.clear()
        newest = None
        async for version in client.iter_configuration_history(
            pb.HISTORY_RESOURCE_POLICY, page_size=1
        ):
            newest = version
            break
        early = len(calls.attempts)
        manual: list[pb.ConfigurationVersion] = []
        token = ""
        while True:
            page = await client.get_configuration_history(
                resource=pb.HISTORY_RESOURCE_POLICY, page_size=1, page_token=token
            )
            manual.extend(page.versions)
            token = page.next_page_token
            if not token:
                break
    etags = [v.etag for v in versions]
    assert etags[:3] == written[::-1]  # newest first
    assert versions == manual
    assert pages >= len(versions) >= 3
    assert newest is not None and (newest.etag, early) == (written[-1], 1)


def sync_history(port: int) -> list[str]:
    with SyncRegistryConfigClient(f"127.0.0.1:{port}", api_key=KEY) as client:
        return [v.etag for v in client.iter_configuration_history("replication", page_size=2)]


async def test_the_sync_twin_iterates_too(gateway: Gateway) -> None:
    async with RegistryConfigClient(target(gateway), api_key=KEY) as client:
        await client.update_replication_rules(add_rule("api"))
        first = await client.describe_registry(no_cache=True)
        await client.update_replication_rules(add_rule("web"))
        second = await client.describe_registry(no_cache=True)
    etags = await asyncio.to_thread(sync_history, gateway.port)
    assert etags[:2] == [second.etag, first.etag]
