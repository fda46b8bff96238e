"""The domain (service/registry/) on the in-memory ECR, a real ReadCache over a MemoryStore
and real in-process RegistryLocks: everything but AWS is the server's own."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from service.auth.content import ContentRules
from service.auth.targets import Target
from service.aws.memory import MemoryEcr
from service.config import CacheConfig, DestinationAllow, RegistryConfig
from service.ecr import limits
from service.registry.rpcs.slice_operations import SliceOperations
from service.registry.rpcs.validation import RequestValidator
from service.registry.writes.operations import RegistryOperations
from service.state.cache import MemoryStore, ReadCache
from service.state.locks import RegistryLocks

ACCOUNT = "123456789012"
REGION = "us-east-1"
PARTNER = "210987654321"
CACHE = CacheConfig(ttl_seconds=30, negative_ttl_seconds=10, max_stale_seconds=60)


def target(
    tenant: str = "payments",
    *,
    prefixes: tuple[str, ...] = ("payments/",),
    sid_prefix: str | None = "Payments",
    share: limits.Share = limits.WHOLE_REGISTRY,
    region: str = REGION,
) -> Target:
    """A tenant's target on the shared registry: its slice, its destinations, its share."""
    registry = RegistryConfig(
        registry_id=ACCOUNT,
        regions=(region,),
        owned_repository_prefixes=prefixes,
        owned_statement_sid_prefix=sid_prefix,
        replication_destinations=(
            DestinationAllow(registry_id=ACCOUNT, regions=("eu-west-1", "us-west-2")),
            DestinationAllow(registry_id=PARTNER, regions=("us-west-2",)),
        ),
    )
    return Target(tenant=tenant, registry=registry, region=region, share=share)


class Clock:
    """Wall-clock time the test moves."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Domain:
    """The pieces a test drives and inspects."""

    ecr: MemoryEcr
    cache: ReadCache
    locks: RegistryLocks
    ops: RegistryOperations
    slices: SliceOperations
    clock: Clock


def build(ecr: MemoryEcr | None = None, *, max_writes_per_tenant: int = 4) -> Domain:
    """A domain on a fresh in-memory ECR."""
    ecr = ecr or MemoryEcr()
    clock = Clock()
    cache = ReadCache(CACHE, MemoryStore(100), clock=clock, jitter=lambda: 1.0)
    locks = RegistryLocks()
    ops = RegistryOperations(ecr, locks, cache, max_writes_per_tenant=max_writes_per_tenant)
    slices = SliceOperations(ops, ContentRules(), RequestValidator())
    return Domain(ecr, cache, locks, ops, slices, clock)


@pytest.fixture
def domain() -> Domain:
    return build()
