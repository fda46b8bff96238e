"""The background drift check: every `drift.check_seconds`, each configured (registry,
region)'s replication configuration and policy are read from AWS, so a change made around
the gateway (console, Terraform, a script) is seen even when no tenant calls.

Each read is an ordinary fresh read through the cache (service/registry/writes/operations.py): it
shares the cache's single flight with any caller's load of the same key, goes through the
breaker (open: refused locally, no AWS call), and is observed by the drift detector like any
other read from AWS. Before reading a (registry, region) the check claims it for the period
(service/state/claims.py; in Redis, so N replicas together read each key once a period).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from service.auth.targets import Target
from service.errors import GatewayError
from service.gen.v1 import registry_pb2 as pb
from service.registry.writes.operations import RegistryOperations
from service.state.claims import PeriodClaims

log = logging.getLogger("registry_gateway.drift")


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
    ) -> None:
        self._clock = clock
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
                        if self._destinations is not None and isinstance(
                            described, pb.DescribeRegistryResponse
                        ):
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
