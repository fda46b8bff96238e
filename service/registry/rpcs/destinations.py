"""Will a replication write replicate? Its cross-account destinations' policies, judged first.

ECR accepts a replication rule to another account whether or not the destination registry's
policy lets the source account replicate into it, and then replicates nothing
(service/ecr/destination_policy.py says why and how a policy is judged). When the gateway
is configured for the destination too (a registry entry of any tenant names its account:
its `role_arn`, or the default credentials, reach it), it reads that registry's policy in
the destination region through the cache (a shared load: no caller's share, single flight)
and judges it, before the write takes the registry's lock:

- certainly refused: FAILED_PRECONDITION `DESTINATION_NOT_ACCEPTING` naming the destination
  (account, region), the actions missing and the statement to add; nothing is written;
- not seen (no registry entry for the account, its policy unreadable, or a policy the judge
  cannot evaluate soundly): the write goes on, and the check answers the destinations
  (`account/region`) for the servicer to tell (trailer `x-unverified-destinations`, the
  response's `unverified_destinations`, a dry run's plan included, and the audit line).

Same-account destinations need no policy and are never judged. Only destinations the caller
may name (its content rules: `replication_destinations`) are ever read, so the check tells a
tenant nothing of an account it could not replicate to anyway; and what it tells is the
verdict and the missing statement, never the policy's text (the judge's verdicts hold none of
it). For a slice write (PutReplicationRules) only the caller's rules are judged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from service.auth.content import ContentRules
from service.auth.targets import Target
from service.config import GatewayConfig, RegistryConfig
from service.ecr import destination_policy as judge
from service.errors import Cancelled, DeadlineExceeded, FailedPrecondition, GatewayError
from service.gen.v1 import registry_pb2 as pb
from service.registry.writes.operations import RegistryOperations

REASON = "DESTINATION_NOT_ACCEPTING"
# The response trailer naming the destinations the gateway could not verify.
UNVERIFIED_KEY = "x-unverified-destinations"


@dataclass(frozen=True)
class Destination:
    """One (account, region) a rule replicates to."""

    account: str
    region: str

    def __str__(self) -> str:
        return f"{self.account}/{self.region}"


@dataclass(frozen=True)
class Checked:
    """What the check found: the destinations it could not verify, in the rules' order."""

    unverified: tuple[Destination, ...] = ()

    def trailer(self) -> str | None:
        """`account/region` comma-separated, or None when every destination was verified."""
        return ",".join(str(d) for d in self.unverified) or None

    def messages(self) -> list[pb.ReplicationDestination]:
        """The unverified destinations as the responses' `unverified_destinations` field
        holds them (a dry run's plan, a write's answer)."""
        return [
            pb.ReplicationDestination(registry_id=d.account, region=d.region)
            for d in self.unverified
        ]


def registries_by_account(config: GatewayConfig) -> dict[str, RegistryConfig]:
    """The first registry entry of each account in the config: its credentials reach it."""
    found: dict[str, RegistryConfig] = {}
    for tenant in config.tenants:
        for registry in tenant.registries:
            found.setdefault(registry.registry_id, registry)
    return found


def cross_account(target: Target, rules: Sequence[pb.ReplicationRule]) -> list[Destination]:
    """The distinct destinations of `rules` in another account than the target's."""
    seen: dict[Destination, None] = {}
    for rule in rules:
        for destination in rule.destinations:
            if destination.registry_id != target.registry_id:
                seen.setdefault(Destination(destination.registry_id, destination.region))
    return list(seen)


def not_accepting(
    target: Target, destination: Destination, verdict: judge.DoesNotAccept
) -> FailedPrecondition:
    """The refusal: the destination, what is missing and the statement to add (built from
    the account ids and the region alone: nothing of the destination's policy). Whether a
    Deny refuses is not said: that is the destination's policy, which the tenant may not
    read (the drift check's audit event, for operators, says it)."""
    missing = ", ".join(verdict.missing)
    statement = judge.statement_to_add(
        target.registry_id, destination.account, destination.region, verdict.missing
    )
    return FailedPrecondition(
        f"destination registry {destination.account} in {destination.region} does not let "
        f"account {target.registry_id} replicate into it (missing {missing}); add this "
        f"statement to its registry policy, with no Deny there refusing it: {statement}",
        reason=REASON,
        metadata={
            "registryId": target.registry_id,
            "region": target.region,
            "destinationRegistryId": destination.account,
            "destinationRegion": destination.region,
            "missingActions": ",".join(verdict.missing),
        },
    )


class DestinationCheck:
    """Judges the cross-account destinations of a replication write."""

    def __init__(self, operations: RegistryOperations, content: ContentRules) -> None:
        self._ops = operations
        self._content = content

    async def check(
        self,
        target: Target,
        config: GatewayConfig,
        rules: Sequence[pb.ReplicationRule],
        *,
        rpc: str = "PutReplicationConfiguration",
        field: str = "replication_configuration.rules",
    ) -> Checked:
        """Raise DESTINATION_NOT_ACCEPTING for the first destination that certainly refuses;
        else answer the ones not verified. `rules` are the caller's (validated: at most 25
        unique destinations, so the reads are bounded)."""
        # Never judge a destination the caller may not name (it would learn of an account
        # it has no business with). The same rule the write applies: cheap, and this check
        # is safe whatever order a caller of it runs the content rules in.
        self._content.check_destinations(
            target, pb.ReplicationConfiguration(rules=rules), rpc=rpc, field=field
        )
        destinations = cross_account(target, rules)
        if not destinations:
            return Checked()
        registries = registries_by_account(config)
        verdicts = await asyncio.gather(
            *(verdict_of(self._ops, target, d, registries.get(d.account)) for d in destinations)
        )
        for destination, verdict in zip(destinations, verdicts, strict=True):
            if isinstance(verdict, judge.DoesNotAccept):
                raise not_accepting(target, destination, verdict)
        return Checked(
            tuple(
                d
                for d, v in zip(destinations, verdicts, strict=True)
                if isinstance(v, judge.Unverified)
            )
        )


async def verdict_of(
    operations: RegistryOperations,
    target: Target,
    destination: Destination,
    registry: RegistryConfig | None,
    *,
    fresh: bool = False,
) -> judge.Verdict:
    """The verdict on one cross-account destination of `target`, whose registry entry is
    `registry` (None: the config has none). `fresh`: past the cache (the drift check)."""
    if registry is None:
        return judge.Unverified(judge.WHY_NOT_CONFIGURED)
    # The destination's own target: its registry entry's credentials, in its region.
    # The read is a shared cache load, so whose tenant it is named for does not matter.
    seen = Target(tenant=target.tenant, registry=registry, region=destination.region)
    try:
        read = await operations.get_registry_policy(seen, fresh=fresh)
    except (Cancelled, DeadlineExceeded):
        raise  # the caller's own end: not a fact about the destination
    except GatewayError:
        # Unreadable (refused, unavailable, another account's credentials): not seen.
        return judge.Unverified(judge.WHY_NO_POLICY_READ)
    text = None if read.value is None else read.value.policy_text
    return judge.judge(text, target.registry_id, destination.account, destination.region)
