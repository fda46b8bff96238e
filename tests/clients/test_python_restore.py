"""`restore`: the Python client writes back a recorded version (GetConfigurationHistory) as
an ordinary write with an etag precondition, against a live gateway on real moto."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from registry_gateway_client import (
    CLIENT_DOMAIN,
    EtagMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RegistryConfigClient,
    VersionNotFound,
)
from registry_gateway_client.v1 import registry_pb2 as pb

from service.app.server import Gateway
from service.state.cache.base import CacheKey
from service.state.history import Version
from tests.support.helpers import ACCOUNT, KEY, OTHER_KEY, POLICY

REPLICATION = pb.HISTORY_RESOURCE_REPLICATION


def rules(region: str, prefix: str) -> dict[str, Any]:
    return {
        "rules": [
            {
                "destinations": [{"region": region, "registryId": ACCOUNT}],
                "repositoryFilters": [{"filter": prefix, "filterType": "PREFIX_MATCH"}],
            }
        ]
    }


def target(gateway: Gateway) -> str:
    return f"127.0.0.1:{gateway.port}"


async def test_restore_writes_an_old_version_back_only_over_the_current_etag(
    gateway: Gateway,
) -> None:
    async with RegistryConfigClient(target(gateway), api_key=KEY) as client:
        first = await client.put_replication_configuration(
            replication_configuration=rules("eu-west-1", "prod")
        )
        second = await client.put_replication_configuration(
            replication_configuration=rules("eu-west-1", "staging"), etag=first.etag
        )
        history = await client.get_configuration_history(resource=REPLICATION)
        etags = [v.etag for v in history.versions]
        assert etags[:2] == [second.etag, first.etag]  # newest first

        # A stale "current" etag (the caller's view is out of date): refused, nothing written.
        with pytest.raises(EtagMismatch) as caught:
            await client.restore(first.etag, resource=REPLICATION, etag=first.etag)
        assert caught.value.current_etag == second.etag
        assert (await client.describe_registry(no_cache=True)).etag == second.etag

        # With the current etag: the old version is back, and the history says who did it.
        restored = await client.restore(first.etag, resource=REPLICATION, etag=second.etag)
        assert isinstance(restored, pb.PutReplicationConfigurationResponse)
        now = await client.describe_registry(no_cache=True)
        assert now.replication_configuration == first.replication_configuration
        newest = (await client.get_configuration_history(resource=REPLICATION)).versions[0]
        assert newest.etag == now.etag and newest.origin == pb.CHANGE_ORIGIN_GATEWAY
        assert newest.tenant == "payments"

        # Without an etag the client reads the current one itself.
        await client.restore(second.etag, resource=REPLICATION)
        assert (await client.describe_registry(no_cache=True)).etag == second.etag

        with pytest.raises(LookupError) as missing:
            await client.restore("no-such-etag", resource=REPLICATION)
        # One of the client's typed errors too (issue 28), made by the client itself.
        assert isinstance(missing.value, VersionNotFound) and isinstance(missing.value, NotFound)
        assert (missing.value.domain, missing.value.reason) == (CLIENT_DOMAIN, "VERSION_NOT_FOUND")


async def test_restoring_the_absent_policy_deletes_the_policy(gateway: Gateway) -> None:
    async with RegistryConfigClient(target(gateway), api_key=KEY) as client:
        put = await client.put_registry_policy(policy_text=json.loads(POLICY), etag="absent")
        history = await client.get_configuration_history(resource=pb.HISTORY_RESOURCE_POLICY)
        assert [v.etag for v in history.versions][:2] == [put.etag, "absent"]
        await client.restore("absent", resource=pb.HISTORY_RESOURCE_POLICY, etag=put.etag)
        with pytest.raises(NotFound):
            await client.get_registry_policy(no_cache=True)


async def test_a_tenant_without_the_history_cannot_restore(gateway: Gateway) -> None:
    async with RegistryConfigClient(target(gateway), api_key=KEY) as owner:
        first = await owner.put_replication_configuration(
            replication_configuration=rules("eu-west-1", "prod")
        )
        await owner.put_replication_configuration(
            replication_configuration=rules("eu-west-1", "staging"), etag=first.etag
        )
    # `readonly` may read the registry but has neither the history nor any write.
    async with RegistryConfigClient(target(gateway), api_key=OTHER_KEY) as reader:
        with pytest.raises(PermissionDenied):
            await reader.restore(first.etag, resource=REPLICATION)
    async with RegistryConfigClient(target(gateway), api_key=KEY) as owner:
        described = await owner.describe_registry(no_cache=True)
    assert described.replication_configuration.rules[0].repository_filters[0].filter == "staging"


async def test_a_version_kept_without_its_document_is_never_restored(gateway: Gateway) -> None:
    """Review of issue 17: a version larger than `history.max_bytes` is kept without its
    document, and `restore` wrote that empty document back as "no rules" (or "no policy"),
    deleting what every tenant had."""
    async with RegistryConfigClient(target(gateway), api_key=KEY) as client:
        first = await client.put_replication_configuration(
            replication_configuration=rules("eu-west-1", "prod")
        )
        # A state too large to keep, recorded by the gateway's own store (which drops the
        # document and keeps the etag): no AWS document is that large, so it is appended here.
        too_large = b"\n" * (gateway.config.history.max_bytes + 1)
        big = await gateway.history.append(
            CacheKey(ACCOUNT, "us-east-1", "registry"),
            Version(0, time.time(), "out-of-band", "etag-of-a-huge-state", too_large),
            if_head_etag=first.etag,
        )
        assert big is not None and big.document_omitted
        history = await client.get_configuration_history(resource=REPLICATION)
        shown = history.versions[0]
        assert (shown.etag, shown.document_omitted) == ("etag-of-a-huge-state", True)
        assert len(shown.replication_configuration.rules) == 0  # not "no rules": omitted

        for etag in (first.etag, None):
            with pytest.raises(ValueError, match="etag-of-a-huge-state") as caught:
                await client.restore("etag-of-a-huge-state", resource=REPLICATION, etag=etag)
            assert "cannot be restored" in str(caught.value)
            assert isinstance(caught.value, FailedPrecondition)
            assert caught.value.reason == "DOCUMENT_OMITTED"
        with pytest.raises(InvalidArgument) as empty:
            await client.restore("", resource=REPLICATION)  # no version has an empty etag
        assert [v.field for v in empty.value.field_violations] == ["version_etag"]
        # Nothing was written: no new version, and AWS holds the rules as they were.
        newest = (await client.get_configuration_history(resource=REPLICATION)).versions[0]
        assert newest.etag == "etag-of-a-huge-state"
        now = await client.describe_registry(no_cache=True)
    assert (now.etag, now.replication_configuration) == (
        first.etag,
        first.replication_configuration,
    )
