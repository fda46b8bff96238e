"""The drift check's second look: do the configured replication rules' destinations still
accept replication?

A destination's registry policy can change after a rule to it was written (someone edits
it): replication then stops without a word from ECR. The background drift check
(service/app/drift_check.py) hands each registry configuration it reads to `rejudge`, which
judges every cross-account destination of its rules again, reading the destinations'
policies fresh (service/registry/rpcs/destinations.py, `verdict_of`), and reports:

- the gauge `registry_gateway_replication_destination_accepting{registry_id,region,destination}`
  1 or 0 (removed while it cannot be verified);
- an audit event `destination_not_accepting` when a destination is first seen not accepting
  (at start or after accepting or being unverified): once per change, not once per period.

A report that fails is logged; nothing raises into the drift check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from service.auth.targets import Target
from service.config import GatewayConfig
from service.ecr import destination_policy as judge
from service.gen.v1 import registry_pb2 as pb
from service.registry.rpcs.destinations import (
    Destination,
    cross_account,
    registries_by_account,
    verdict_of,
)
from service.registry.writes.operations import RegistryOperations

log = logging.getLogger("registry_gateway.destinations")

EVENT = "destination_not_accepting"


class AuditEvents(Protocol):
    """The audit trail's event lines (service/observability/audit.py, `AuditLog.event`)."""

    def event(self, event: str, /, **fields: object) -> None: ...


Gauge = Callable[[str, str, str, bool | None], None]


class DestinationWatch:
    """Re-judges the destinations of a registry's configured rules; remembers which were
    reported not accepting, so each change is audited once."""

    def __init__(
        self,
        operations: RegistryOperations,
        config: Callable[[], GatewayConfig],
        audit: AuditEvents,
        gauge: Gauge,
    ) -> None:
        self._ops = operations
        self._config = config
        self._audit = audit
        self._gauge = gauge
        # (registry, region, destination) last seen not accepting. Bounded by the config:
        # at most 25 destinations per configured (registry, region).
        self._refusing: set[tuple[str, str, str]] = set()

    async def rejudge(self, target: Target, described: pb.DescribeRegistryResponse) -> None:
        """Judge every cross-account destination of `described`'s rules again."""
        rules = described.replication_configuration.rules
        registries = registries_by_account(self._config())
        for destination in cross_account(target, rules):
            verdict = await verdict_of(
                self._ops, target, destination, registries.get(destination.account), fresh=True
            )
            self._report(target, destination, verdict)

    def _report(self, target: Target, destination: Destination, verdict: judge.Verdict) -> None:
        key = (target.registry_id, target.region, str(destination))
        accepting = (
            None if isinstance(verdict, judge.Unverified) else isinstance(verdict, judge.Accepts)
        )
        try:
            self._gauge(*key, accepting)
            if isinstance(verdict, judge.DoesNotAccept):
                if key not in self._refusing:
                    self._refusing.add(key)
                    self._audit.event(
                        EVENT,
                        registry_id=target.registry_id,
                        region=target.region,
                        destination=str(destination),
                        missing_actions=list(verdict.missing),
                        explicit_deny=verdict.denied,
                    )
            else:
                self._refusing.discard(key)
        except Exception as exc:  # a report must never break the drift check
            # Its type only: no stack trace or message (it may hold what a sink was given).
            log.warning(
                "reporting destination %s of %s failed: %s",
                destination,
                target.registry_id,
                type(exc).__name__,
            )
