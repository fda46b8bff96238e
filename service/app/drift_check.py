"""The background drift check: every `drift.check_seconds`, each configured (registry,
region)'s replication configuration and policy are read from AWS, so a change made around
the gateway (console, Terraform, a script) is seen even when no tenant calls.

Each read is an ordinary fresh read through the cache (service/registry/writes/operations.py): it
shares the cache's single flight with any caller's load of the same key, goes through the
breaker (open: refused locally, no AWS call), and is observed by the drift detector like any
other read from AWS. Before reading a (registry, region) the check claims it for the period
(service/state/claims.py; in Redis, so N replicas together read each key once a period).

Each replication configuration it reads is also counted against the shares of the current
config (`OverShareWatch`): the shares are a guarantee only while every slice keeps to its
own, and a reload that shrinks them (a tenant added) leaves what the others wrote in AWS. A
slice over its share is told to operators, naming the tenant (operators may see names): the
gauge `registry_gateway_slice_over_share{registry_id,region,tenant}` (1 over, 0 within) and
an audit event `slice_over_share` with its counts, once per change, not once per period. So
within one period of a reload (or of a full PutReplicationConfiguration filling a tenant's
prefixes past its share), before a neighbour's write meets the backstop
(service/registry/model/slices.py: `SLICES_OVER_SHARE`, counts only).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from service.auth.targets import Target
from service.config import GatewayConfig, registry_regions
from service.ecr import limits
from service.errors import GatewayError
from service.gen.v1 import registry_pb2 as pb
from service.registry.model import slices
from service.registry.writes.operations import RegistryOperations
from service.state.claims import PeriodClaims

log = logging.getLogger("registry_gateway.drift")

OVER_SHARE_EVENT = "slice_over_share"


class AuditEvents(Protocol):
    """The audit trail's event lines (service/observability/audit.py, `AuditLog.event`)."""

    def event(self, event: str, /, **fields: object) -> None: ...


# (registry_id, region, tenant, over): True over its share, False within, None no slice
# any more (service/observability/metrics.py's `slice_judged`).
OverShareGauge = Callable[[str, str, str, bool | None], None]


class OverShareWatch:
    """Counts each replication configuration read against the current config's shares, and
    reports every slice over its share: the gauge each time, the audit line and the log line
    once per change of its counts."""

    def __init__(
        self, config: Callable[[], GatewayConfig], audit: AuditEvents, gauge: OverShareGauge
    ) -> None:
        self._config = config
        self._audit = audit
        self._gauge = gauge
        # (registry, region, tenant) -> the counts last reported over its share. Bounded by
        # the config: one entry per slice.
        self._reported: dict[tuple[str, str, str], tuple[int, int, int, int, int, int]] = {}
        # (registry, region) -> the tenants gauged there, to drop those a reload removed.
        self._gauged: dict[tuple[str, str], set[str]] = {}

    def judge(self, target: Target, described: pb.DescribeRegistryResponse) -> None:
        """Count `described` against the shares; never raises into the drift check."""
        try:
            self._judge(target, described)
        except Exception as exc:  # a report must never break the drift check
            # Its type only: no stack trace or message (it may hold what a sink was given).
            log.warning(
                "judging the shares of %s in %s failed: %s",
                target.registry_id,
                target.region,
                type(exc).__name__,
            )

    def _judge(self, target: Target, described: pb.DescribeRegistryResponse) -> None:
        where = (target.registry_id, target.region)
        held = self.slices_of(target.registry_id, target.region)
        found = slices.census(described.replication_configuration, held)
        over = {use.tenant: use for use in found.over_share}
        for gone in self._gauged.get(where, set()) - {s.tenant for s in held}:
            self._gauge(*where, gone, None)
            self._reported.pop((*where, gone), None)
        self._gauged[where] = {s.tenant for s in held}
        for share in held:
            key = (*where, share.tenant)
            use = over.get(share.tenant)
            self._gauge(*where, share.tenant, use is not None)
            if use is None:
                if self._reported.pop(key, None) is not None:
                    log.info(
                        "slice of tenant %s on registry %s in %s is within its share again",
                        share.tenant,
                        *where,
                    )
                continue
            counts = (
                use.rules,
                share.rules,
                use.filters,
                share.filters,
                use.destinations,
                share.destinations,
            )
            if self._reported.get(key) == counts:
                continue
            self._reported[key] = counts
            self._audit.event(
                OVER_SHARE_EVENT,
                registry_id=target.registry_id,
                region=target.region,
                tenant=share.tenant,
                rules=use.rules,
                rules_share=share.rules,
                filters=use.filters,
                filters_share=share.filters,
                destinations=use.destinations,
                destinations_share=share.destinations,
                rules_outside_slices=found.rules_outside,
            )
            log.warning(
                "slice of tenant %s on registry %s in %s holds more than its share (rules "
                "%d of %d, filters %d of %d, unique destinations %d of %d), after a config "
                "change or a full PutReplicationConfiguration: other tenants' slice writes "
                "may be refused (SLICES_OVER_SHARE) until it shrinks or the shares grow",
                share.tenant,
                *where,
                *counts,
            )

    def slices_of(self, registry_id: str, region: str) -> tuple[limits.RegistrySlice, ...]:
        """The replication slices the current config gives the registry in the region."""
        config = self._config()
        present = {
            tenant.name
            for tenant in config.tenants
            for entry in tenant.registries
            if entry.registry_id == registry_id and region in registry_regions(config, entry)
        }
        plan = limits.share_plan(config.tenants)
        for (_, registry), share in plan.shares.items():
            if registry == registry_id:
                return tuple(s for s in share.registry_slices if s.tenant in present)
        return ()


class DriftCheck:
    """Reads every target's two resources fresh from AWS once a period, at most once per
    period across replicas."""

    def __init__(
        self,
        operations: RegistryOperations,
        targets: Callable[[], list[Target]],
        claims: PeriodClaims,
        every_seconds: float,
        *,
        jitter: Callable[[], float] = lambda: random.uniform(0.9, 1.1),  # noqa: S311
        clock: Callable[[], float] = time.time,
        destinations: Callable[[Target, pb.DescribeRegistryResponse], Awaitable[None]]
        | None = None,
        over_share: Callable[[Target, pb.DescribeRegistryResponse], None] | None = None,
    ) -> None:
        self._clock = clock
        # The same read, counted against the shares (`OverShareWatch.judge`); None: not.
        self._over_share = over_share
        # The registry configuration read, handed on to judge its rules' destinations again
        # (service/registry/rpcs/destination_watch.py); None: not judged.
        self._destinations = destinations
        self._operations = operations
        self._targets = targets
        self._claims = claims
        self._every = every_seconds
        self._jitter = jitter

    async def run(self) -> None:
        """Check forever, one period apart (jittered, so replicas started together spread)."""
        while True:
            await asyncio.sleep(self._every * self._jitter())
            await self.check_once()

    async def check_once(self) -> int:
        """Read every target this replica claims for the period; answers how many it read."""
        read = 0
        for target in self._targets():
            # The claim names the period (wall-clock time in slots of one period), so
            # replicas waking at jittered times still read each key once per slot; it
            # expires with its slot.
            slot = int(self._clock() // self._every)
            name = f"drift-check:{target.registry_id}:{target.region}:{slot}"
            if not await self._claims.claim(name, self._every):
                continue
            read += 1
            for load in (self._operations.describe_registry, self._operations.get_registry_policy):
                try:
                    # Bounded by the period: a hung read must not stall the next check.
                    async with asyncio.timeout(self._every):
                        read_now = await load(target, fresh=True)
                        described = read_now.value
                        if isinstance(described, pb.DescribeRegistryResponse):
                            if self._over_share is not None:
                                self._over_share(target, described)
                            if self._destinations is not None:
                                await self._destinations(target, described)
                except (GatewayError, TimeoutError) as exc:
                    # AWS sick (breaker open, unavailable, deadline) or no policy: nothing
                    # to compare; the next period tries again.
                    log.debug(
                        "drift check of %s in %s: %s",
                        target.registry_id,
                        target.region,
                        type(exc).__name__,
                    )
        return read
