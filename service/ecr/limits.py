"""ECR's registry-wide limits, and each tenant's share of them on a shared registry.

One registry has one replication configuration and one policy, so ECR's limits on them are
shared by every tenant holding a slice (service/registry/model/slices.py). Each slice gets its
own share, so that one team filling its part never refuses another team's write:

- configured per registry entry (`max_rules`, `max_destinations`, `max_policy_chars`), or
- absent, an equal split of what ECR allows among the tenants holding slices of that kind
  on that registry (repository prefixes for rules and destinations, a Sid prefix for
  policy characters), after the explicit shares are taken out.

The shares of one registry must fit ECR's limits; `effective_shares` refuses a config
whose shares do not, so it is checked at load and at every reload.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# "A maximum of 10 rules" per replication configuration (the service model's list maximum).
MAX_RULES = 10
# AWS quota: "a maximum of 25 unique destinations across all rules" (Private image
# replication in Amazon ECR, considerations:
# https://docs.aws.amazon.com/AmazonECR/latest/userguide/replication.html). The model's
# 100 per rule is not the real limit.
MAX_UNIQUE_DESTINATIONS = 25
# `policyText` is at most 10,240 characters (the service model's maximum length).
MAX_POLICY_CHARS = 10_240
# What a merged policy holds besides its statements (service/registry/model/slices.py writes
# it compact).
POLICY_ENVELOPE = '{"Version":"2012-10-17","Statement":[]}'
# What the statements of every slice together may take: each statement costs its compact
# JSON plus one comma, which over-counts the whole document by one character at most.
POLICY_STATEMENT_CHARS = MAX_POLICY_CHARS - len(POLICY_ENVELOPE)


@dataclass(frozen=True)
class Share:
    """What one tenant's slice of one registry may hold."""

    rules: int
    destinations: int
    policy_chars: int


# A target built without a config (a test, a tool) may use the whole registry.
WHOLE_REGISTRY = Share(MAX_RULES, MAX_UNIQUE_DESTINATIONS, POLICY_STATEMENT_CHARS)
# A tenant holding no slice of a registry.
NOTHING = Share(0, 0, 0)


def statement_chars(statements: Sequence[Any]) -> int:
    """The characters statements take in a merged policy (compact JSON, one comma each).

    A share is measured on the statements as AWS stores them (service/registry/model/slices.py's
    `stored_chars`): what a merge carries of a slice is AWS's form of it, not the request."""
    return sum(len(json.dumps(s, separators=(",", ":"))) + 1 for s in statements)


@dataclass(frozen=True)
class _Kind:
    field: str  # of Share
    key: str  # of RegistryConfig: the explicit share
    slice_key: str  # of RegistryConfig: what holding a slice of this kind takes
    budget: int
    what: str  # for a person: "the <budget> <what>"


_KINDS = (
    _Kind(
        "rules",
        "max_rules",
        "owned_repository_prefixes",
        MAX_RULES,
        "replication rules ECR allows per registry",
    ),
    _Kind(
        "destinations",
        "max_destinations",
        "owned_repository_prefixes",
        MAX_UNIQUE_DESTINATIONS,
        "unique replication destinations ECR allows per registry",
    ),
    _Kind(
        "policy_chars",
        "max_policy_chars",
        "owned_statement_sid_prefix",
        POLICY_STATEMENT_CHARS,
        f"policy characters ECR allows for statements ({MAX_POLICY_CHARS} less the "
        f"{len(POLICY_ENVELOPE)} of the document around them)",
    ),
)


class SliceEntry(Protocol):
    """What `effective_shares` reads of a tenant's registry entry (service/config's
    RegistryConfig): the slices it holds and their explicit shares."""

    @property
    def registry_id(self) -> str: ...
    @property
    def owned_repository_prefixes(self) -> Sequence[str]: ...
    @property
    def owned_statement_sid_prefix(self) -> str | None: ...
    @property
    def max_rules(self) -> int | None: ...
    @property
    def max_destinations(self) -> int | None: ...
    @property
    def max_policy_chars(self) -> int | None: ...


class SliceHolder(Protocol):
    """What `effective_shares` reads of a tenant (service/config's TenantConfig): this
    module is below the config, which imports its limits."""

    @property
    def name(self) -> str: ...
    @property
    def registries(self) -> Sequence[SliceEntry]: ...


def effective_shares(tenants: Sequence[SliceHolder]) -> dict[tuple[str, str], Share]:
    """The share of every (tenant, registry_id) holding a slice.

    ValueError (one line, naming the registry and the tenants) when an explicit share is
    given without the slice it limits, or when one registry's shares do not fit ECR's limits.
    """
    # registry -> kind -> tenant -> explicit share (None: an equal part of the rest)
    holders: dict[str, dict[str, dict[str, int | None]]] = {}
    for tenant in tenants:
        for registry in tenant.registries:
            for kind in _KINDS:
                explicit: int | None = getattr(registry, kind.key)
                if not getattr(registry, kind.slice_key):
                    if explicit is not None:
                        raise ValueError(
                            f"tenant {tenant.name}: {kind.key} on registry "
                            f"{registry.registry_id} limits a slice it does not hold "
                            f"({kind.slice_key} is not set)"
                        )
                    continue
                by_tenant = holders.setdefault(registry.registry_id, {}).setdefault(kind.field, {})
                if tenant.name in by_tenant and by_tenant[tenant.name] != explicit:
                    # Two entries of one tenant on one registry (other regions): one share.
                    raise ValueError(
                        f"tenant {tenant.name}: its entries for registry {registry.registry_id} "
                        f"give different {kind.key}; give the same value in each"
                    )
                by_tenant[tenant.name] = explicit
    shares: dict[tuple[str, str], dict[str, int]] = {}
    for registry_id, kinds in holders.items():
        for kind in _KINDS:
            by_tenant = kinds.get(kind.field, {})
            for name, amount in _split(registry_id, kind, by_tenant).items():
                shares.setdefault((name, registry_id), {})[kind.field] = amount
    return {
        key: Share(
            rules=amounts.get("rules", 0),
            destinations=amounts.get("destinations", 0),
            policy_chars=amounts.get("policy_chars", 0),
        )
        for key, amounts in shares.items()
    }


def _split(registry_id: str, kind: _Kind, by_tenant: dict[str, int | None]) -> dict[str, int]:
    explicit = {name: amount for name, amount in by_tenant.items() if amount is not None}
    implicit = [name for name, amount in by_tenant.items() if amount is None]
    committed = sum(explicit.values())
    if committed > kind.budget:
        listed = ", ".join(f"{name} {amount}" for name, amount in explicit.items())
        raise ValueError(
            f"registry {registry_id}: the {kind.key} of tenants {listed} add up to "
            f"{committed}, more than the {kind.budget} {kind.what}"
        )
    split = dict(explicit)
    if implicit:
        each = (kind.budget - committed) // len(implicit)
        if each < 1:
            raise ValueError(
                f"registry {registry_id}: {kind.budget - committed} of the {kind.budget} "
                f"{kind.what} are left after the explicit {kind.key}, too few to split among "
                f"tenants {', '.join(implicit)} (none each); give them {kind.key} or lower "
                f"the others'"
            )
        split.update(dict.fromkeys(implicit, each))
    return split
