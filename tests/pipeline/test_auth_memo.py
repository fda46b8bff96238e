"""The authentication memo of the admission (`Authenticate.memoized`): an API key accepted
under a tenancy snapshot is not parsed and scanned again under it, and nothing else is
remembered. What a reload revokes stops at once; what a caller sends cannot grow it; a
client certificate still outranks a remembered key."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, cast

import pytest

from service.auth.tenancy import Tenancy, TenancyHolder, build_tenancy
from service.config import ServerConfig, from_mapping
from service.pipeline.gates import FailedAuthentication
from service.pipeline.pipeline import Pipeline
from service.pipeline.slots import CallSlots
from tests.support.helpers import KEY, OTHER_KEY, config_dict, metadata

DESCRIBE = "/ecr.registry.v1.RegistryConfigService/DescribeRegistry"


def _peer() -> str:
    return "ipv4:192.0.2.7:5555"


def _tenancy(revoke_other: bool = False) -> Tenancy:
    raw = config_dict("http://127.0.0.1:1")
    if revoke_other:
        raw["tenants"][1]["api_keys"] = []
    return build_tenancy(from_mapping(raw, environ={}), {})


async def _admit(
    pipeline: Pipeline, md: tuple[tuple[str, str], ...], auth_context: Any = None
) -> str:
    """The tenant a call carrying `md` is admitted as (its slot given back at once)."""
    slots = CallSlots(10, 10, 10)
    outcome = pipeline.started(DESCRIBE, md)
    try:
        call = await pipeline.admit_call(outcome, slots, md, auth_context, _peer, 10.0)
    finally:
        pipeline.ended(outcome)
    slots.release_tenant(call.tenant.name)
    return call.tenant.name


class _Counting:
    """The snapshot's authenticator, counting the calls that reach it."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls = 0

    def authenticate(self, md: Any, auth_context: Any = None) -> Any:
        self.calls += 1
        return self.real.authenticate(md, auth_context)


def _counted(tenancy: Tenancy) -> tuple[Tenancy, _Counting]:
    """The snapshot with its authenticator counted."""
    counting = _Counting(tenancy.authenticator)
    return dataclasses.replace(tenancy, authenticator=cast(Any, counting)), counting


def test_an_accepted_key_is_not_checked_again_under_the_same_snapshot() -> None:
    tenancy, counting = _counted(_tenancy())
    pipeline = Pipeline(ServerConfig(), TenancyHolder(tenancy))

    async def calls() -> list[str]:
        return [await _admit(pipeline, metadata(key)) for key in (KEY, KEY, OTHER_KEY, KEY)]

    assert asyncio.run(calls()) == ["payments", "payments", "readonly", "payments"]
    assert counting.calls == 2  # once per key


def test_a_key_revoked_by_a_reload_is_refused_on_the_next_call() -> None:
    holder = TenancyHolder(_tenancy())
    pipeline = Pipeline(ServerConfig(), holder)

    async def scenario() -> None:
        assert await _admit(pipeline, metadata(OTHER_KEY)) == "readonly"
        assert await _admit(pipeline, metadata(OTHER_KEY)) == "readonly"  # remembered
        holder.swap(_tenancy(revoke_other=True))  # what a reload does
        with pytest.raises(FailedAuthentication) as refused:
            await _admit(pipeline, metadata(OTHER_KEY))
        assert refused.value.error.reason == "INVALID_CREDENTIALS"
        # The key the reload kept still works, checked afresh under the new snapshot.
        assert await _admit(pipeline, metadata(KEY)) == "payments"

    asyncio.run(scenario())


def test_a_stranger_and_a_tenant_respelling_its_key_cannot_grow_the_memo() -> None:
    """Hostile: a stranger's guesses are never remembered (each one checked and counted); a
    tenant sending its own key in every spelling the parser accepts is served, but its
    key takes at most one entry."""
    tenancy, counting = _counted(_tenancy())
    pipeline = Pipeline(ServerConfig(), TenancyHolder(tenancy))
    spellings = [
        f"Bearer {KEY}",
        f"bearer {KEY}",
        f"BEARER {KEY}",
        f"Bearer  {KEY}",
        f"Bearer {KEY} ",
        f" Bearer {KEY}",
        f"Bearer \t{KEY}",
    ]

    async def scenario() -> None:
        for guess in range(20):
            with pytest.raises(FailedAuthentication):
                await _admit(pipeline, metadata(f"guess-{guess}"))
        for spelling in spellings * 2:
            assert await _admit(pipeline, (("authorization", spelling),)) == "payments"

    asyncio.run(scenario())
    assert len(pipeline.authenticate._memo) == 1
    # Every guess and every other spelling was checked in full, each time.
    assert counting.calls == 20 + 1 + (len(spellings) - 1) * 2
    failures = pipeline.metrics.auth_failures.labels("INVALID_CREDENTIALS")
    assert failures._value.get() == 20


def test_a_client_certificate_outranks_a_remembered_key() -> None:
    """Hostile: on an mTLS listener the certificate is the identity; a key remembered from
    another call must not let a connection whose certificate names no tenant through."""
    pipeline = Pipeline(ServerConfig(), TenancyHolder(_tenancy()))
    certificate = {"x509_pem_cert": [b"-----BEGIN CERTIFICATE-----"]}

    async def scenario() -> None:
        assert await _admit(pipeline, metadata(KEY)) == "payments"
        with pytest.raises(FailedAuthentication) as refused:
            await _admit(pipeline, metadata(KEY), certificate)
        assert refused.value.error.reason == "CERTIFICATE_WITHOUT_SPIFFE_ID"

    asyncio.run(scenario())
