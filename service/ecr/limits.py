"""ECR's registry-wide limits, and each tenant's share of them on a shared registry.

One registry has one replication configuration and one policy, so ECR's limits on them are
shared by every tenant holding a slice (service/registry/model/slices.py). Each slice gets its
own share, and the shares are a guarantee: if every tenant keeps to its own, the registry's
document always fits ECR's limits, so one team filling its part never refuses another's
write, and a tenant past its share is refused alone.

Replication slices are packed (service/registry/model/packing.py: one rule per distinct
destination set, split every 100 filters), so what they consume is filters and destination
sets, not rules. For one registry, with K the most distinct destination sets the slices can
use together and F the filters of every share, the packed rules are at most
`rules_needed(K, F)` = min(K, F) + floor((F - min(K, F)) / 100), which must be <= 10:

- K is the number of destination sets the tenants' catalogs list together
  (`destination_sets`: the only sets a slice may use), or every subset of their allow-lists
  (`replication_destinations`); when those are more than 10, each tenant's canonical rules
  count against its own part of the 10 (`max_rules`, else an equal part);
- F is the sum of the `max_filters` shares: explicit, else an equal part of what
  `filter_capacity(K)` leaves;
- unique destinations: every destination the slices can reach, when that fits ECR's 25;
  else each tenant's `max_destinations` (else an equal part of the 25);
- policy characters: `max_policy_chars`, else an equal part of what is left.

`share_plan` refuses a config whose shares could pass ECR's limits (checked at load and
at every reload) and gives each registry's worst case, which `registry-gateway check-config`
prints. Rules and filters written around the slices (a full PutReplicationConfiguration)
are outside the guarantee: a slice write that would pass ECR's limits because of them is
refused naming counts only (service/registry/model/slices.py's backstop). So are slices a
reload left over their new, smaller shares (a tenant added): the backstop names that
overflow apart (`SLICES_OVER_SHARE`), each tenant's own answers show it past its share, and
operators see it per tenant (service/app/drift_check.py).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# "A maximum of 10 rules" per replication configuration (the service model's list maximum).
MAX_RULES = 10
# AWS quota: "a maximum of 25 unique destinations across all rules" (Private image
# replication in Amazon ECR, considerations:
# https://docs.aws.amazon.com/AmazonECR/latest/userguide/replication.html). The model's
# 100 per rule is not the real limit.
MAX_UNIQUE_DESTINATIONS = 25
# "A maximum of 100 repository filters" per rule (the service model's RepositoryFilterList).
MAX_FILTERS_PER_RULE = 100
# `policyText` is at most 10,240 characters (the service model's maximum length).
MAX_POLICY_CHARS = 10_240
# What a merged policy holds besides its statements (service/registry/model/slices.py writes
# it compact).
POLICY_ENVELOPE = '{"Version":"2012-10-17","Statement":[]}'
# What the statements of every slice together may take: each statement costs its compact
# JSON plus one comma, which over-counts the whole document by one character at most.
POLICY_STATEMENT_CHARS = MAX_POLICY_CHARS - len(POLICY_ENVELOPE)


# A destination (registry_id, region), and a destination set: where a rule replicates to.
Destination = tuple[str, str]
DestinationSet = frozenset[Destination]


@dataclass(frozen=True)
class Share:
    """What one tenant's slice of one registry may hold.

    `rules`: its rules in their canonical form (service/registry/model/slices.py: one rule per
    destination set of its filters, split every 100 filters); `filters`: its repository
    filters; `destinations`: the unique destinations its rules name; `destination_sets`: when
    its registry entry lists a catalog, the only destination sets its filters may go to."""

    rules: int
    destinations: int
    policy_chars: int
    filters: int = MAX_RULES * MAX_FILTERS_PER_RULE
    destination_sets: frozenset[DestinationSet] | None = None
    # Every replication slice of the registry with its share (the holder's own included):
    # what the backstop counts when the registry is full although the caller keeps to its
    # share (service/registry/model/slices.py's `census`). Only counts of it are ever told
    # to a tenant; it takes no part in comparing shares.
    registry_slices: tuple[RegistrySlice, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class RegistrySlice:
    """One tenant's replication slice of a registry as the config gives it: its repository
    prefixes and its share of rules, filters and unique destinations. A reload that adds a
    tenant shrinks the others' shares, while what they wrote stays in AWS: the census of
    service/registry/model/slices.py compares the two."""

    tenant: str
    repository_prefixes: tuple[str, ...]
    rules: int
    filters: int
    destinations: int


# A target built without a config (a test, a tool) may use the whole registry.
WHOLE_REGISTRY = Share(MAX_RULES, MAX_UNIQUE_DESTINATIONS, POLICY_STATEMENT_CHARS)
# A tenant holding no slice of a registry.
NOTHING = Share(0, 0, 0, 0)


def rules_needed(sets: int, filters: int) -> int:
    """The most rules `filters` filters spread over at most `sets` destination sets can take
    once packed (one rule per set, split every 100 filters): a set with n filters takes
    ceil(n / 100) rules, and over m sets used the sum of those is at most
    m + floor((filters - m) / 100), which does not shrink as m grows: the worst case uses
    every set it can."""
    used = min(sets, filters)
    return used + (filters - used) // MAX_FILTERS_PER_RULE if used > 0 else 0


def filter_capacity(sets: int, rules: int = MAX_RULES) -> int:
    """The most filters that, over at most `sets` destination sets, always pack into `rules`
    rules: the largest F with rules_needed(sets, F) <= rules (0 when sets is 0)."""
    if sets <= 0:
        return 0
    if sets > rules:
        return rules  # every filter may go to a set of its own: one rule each
    # sets + floor((F - sets) / 100) <= rules  <=>  F <= sets + 100 * (rules - sets) + 99
    return sets + MAX_FILTERS_PER_RULE * (rules - sets + 1) - 1


def statement_chars(statements: Sequence[Any]) -> int:
    """The characters statements take in a merged policy (compact JSON, one comma each).

    A share is measured on the statements as AWS stores them (service/registry/model/slices.py's
    `stored_chars`): what a merge carries of a slice is AWS's form of it, not the request."""
    return sum(len(json.dumps(s, separators=(",", ":"))) + 1 for s in statements)


class AllowedDestinations(Protocol):
    """One entry of an allow-list (service/config's DestinationAllow): a registry, regions."""

    @property
    def registry_id(self) -> str: ...
    @property
    def regions(self) -> Sequence[str]: ...


class SliceEntry(Protocol):
    """What `share_plan` reads of a tenant's registry entry (service/config's RegistryConfig):
    the slices it holds, their explicit shares, where its rules may replicate to."""

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
    def max_filters(self) -> int | None: ...
    @property
    def max_policy_chars(self) -> int | None: ...
    @property
    def replication_destinations(self) -> Sequence[AllowedDestinations]: ...
    @property
    def destination_sets(self) -> Sequence[Sequence[AllowedDestinations]] | None: ...


class SliceHolder(Protocol):
    """What `share_plan` reads of a tenant (service/config's TenantConfig): this module is
    below the config, which imports its limits."""

    @property
    def name(self) -> str: ...
    @property
    def registries(self) -> Sequence[SliceEntry]: ...


@dataclass(frozen=True)
class WorstCase:
    """One registry's replication configuration and policy if every tenant holding a slice
    used its whole share (per region: each region has its own configuration)."""

    registry_id: str
    rule_slices: int  # tenants holding repository prefixes
    destination_sets: int  # the most distinct destination sets the slices can use together
    filters: int
    rules: int  # rules_needed(destination_sets, filters): at most MAX_RULES
    destinations: int  # unique destinations: at most MAX_UNIQUE_DESTINATIONS
    policy_chars: int  # of the statements: at most POLICY_STATEMENT_CHARS


@dataclass(frozen=True)
class SharePlan:
    """Every (tenant, registry_id) slice's share, and each registry's worst case."""

    shares: Mapping[tuple[str, str], Share]
    worst_cases: Mapping[str, WorstCase]


def share_plan(tenants: Sequence[SliceHolder]) -> SharePlan:
    """The shares of every slice and the worst case of every registry holding slices.

    ValueError (one line, naming the registry and the tenants) when an explicit share is
    given without the slice it limits, or when one registry's shares could pass ECR's limits.
    Computed once per config: the config check (at load and reload) and the target
    authorizer built from the same config share one result.
    """
    return _plan(tuple(tenants))


# Keys limiting a replication slice, and the one limiting a policy slice.
_RULE_KEYS = ("max_rules", "max_destinations", "max_filters", "destination_sets")
_POLICY_KEYS = ("max_policy_chars",)
# An allow-list of at most this many destinations has its subsets counted one by one (2**10
# at most); a longer one can reach more destination sets than ECR has rules anyway.
_ENUMERABLE = 10


@dataclass
class _Holder:
    """One tenant's entries on one registry, together."""

    name: str
    rules: bool = False  # holds repository prefixes
    statements: bool = False  # holds a Sid prefix
    explicit: dict[str, object] = field(default_factory=dict)
    allowed: set[Destination] = field(default_factory=set)
    prefixes: set[str] = field(default_factory=set)  # of every entry on the registry

    @property
    def catalog(self) -> frozenset[DestinationSet] | None:
        found = self.explicit.get("destination_sets")
        return found if isinstance(found, frozenset) else None

    def amount(self, key: str) -> int | None:
        found = self.explicit.get(key)
        return found if isinstance(found, int) else None

    def reach(self) -> set[Destination]:
        """Every destination its rules may name: its catalog's, else its allow-list."""
        catalog = self.catalog
        return set().union(*catalog) if catalog is not None else set(self.allowed)

    def set_count(self) -> int:
        """How many destination sets its rules may use, by its catalog or allow-list."""
        catalog = self.catalog
        return len(catalog) if catalog is not None else 2 ** min(len(self.allowed), 30)


def _pairs(entries: Sequence[AllowedDestinations]) -> set[Destination]:
    return {(entry.registry_id, region) for entry in entries for region in entry.regions}


@functools.lru_cache(maxsize=4)
def _plan(tenants: tuple[SliceHolder, ...]) -> SharePlan:
    # The config is frozen (service/config's models) and a reload builds a new one: the cache
    # only spares the authorizer recomputing what the config check computed from it.
    registries: dict[str, dict[str, _Holder]] = {}
    for tenant in tenants:
        for entry in tenant.registries:
            holder = registries.setdefault(entry.registry_id, {}).setdefault(
                tenant.name, _Holder(tenant.name)
            )
            _gather(tenant.name, entry, holder)
    shares: dict[tuple[str, str], Share] = {}
    worst: dict[str, WorstCase] = {}
    for registry_id, by_name in registries.items():
        holders = list(by_name.values())
        if not any(h.rules or h.statements for h in holders):
            continue
        found, case = _registry(registry_id, holders)
        shares.update({(name, registry_id): share for name, share in found.items()})
        worst[registry_id] = case
    return SharePlan(shares, worst)


def _gather(tenant: str, entry: SliceEntry, holder: _Holder) -> None:
    """Add one registry entry of a tenant to what it holds on that registry."""
    given: dict[str, object] = {
        "max_rules": entry.max_rules,
        "max_destinations": entry.max_destinations,
        "max_filters": entry.max_filters,
        "max_policy_chars": entry.max_policy_chars,
        "destination_sets": None
        if entry.destination_sets is None
        else frozenset(frozenset(_pairs(s)) for s in entry.destination_sets),
    }
    slices = {
        _RULE_KEYS: ("owned_repository_prefixes", bool(entry.owned_repository_prefixes)),
        _POLICY_KEYS: ("owned_statement_sid_prefix", bool(entry.owned_statement_sid_prefix)),
    }
    for keys, (slice_key, held) in slices.items():
        for key in keys:
            if given[key] is not None and not held:
                raise ValueError(
                    f"tenant {tenant}: {key} on registry {entry.registry_id} limits a slice "
                    f"it does not hold ({slice_key} is not set)"
                )
    first = not (holder.rules or holder.statements or holder.allowed or holder.explicit)
    for key, value in given.items():
        if not first and holder.explicit.get(key) != value:
            # Two entries of one tenant on one registry (other regions): one share.
            raise ValueError(
                f"tenant {tenant}: its entries for registry {entry.registry_id} give "
                f"different {key}; give the same value in each"
            )
        holder.explicit[key] = value
    holder.rules = holder.rules or bool(entry.owned_repository_prefixes)
    holder.prefixes.update(entry.owned_repository_prefixes)
    holder.statements = holder.statements or bool(entry.owned_statement_sid_prefix)
    holder.allowed |= _pairs(entry.replication_destinations)


def _registry(registry_id: str, holders: list[_Holder]) -> tuple[dict[str, Share], WorstCase]:
    """The shares of one registry's slices, and its worst case."""
    rule_holders = [h for h in holders if h.rules]
    statement_holders = [h for h in holders if h.statements]
    reachable = _reachable_sets(rule_holders)
    # Rules (the canonical rules of each slice): when the destination sets every slice can
    # reach together are few enough for ECR's rules, they bound the packing, and each
    # tenant may hold as many rules as ECR allows; else each tenant's rules count against
    # its own part of ECR's rules.
    if reachable is not None and reachable <= MAX_RULES:
        rules = {h.name: h.amount("max_rules") or MAX_RULES for h in rule_holders}
    else:
        rules = _split(registry_id, "max_rules", MAX_RULES, _WHAT["max_rules"], rule_holders)
    spread = sum(min(rules[h.name], h.set_count()) for h in rule_holders)
    sets = spread if reachable is None else min(reachable, spread)
    # Unique destinations: what every slice may reach together, when that fits ECR's 25;
    # else each tenant's own part of the 25.
    reach: set[Destination] = set().union(*(h.reach() for h in rule_holders))
    if len(reach) <= MAX_UNIQUE_DESTINATIONS:
        destinations = {
            h.name: min(h.amount("max_destinations") or len(h.reach()), len(h.reach()))
            for h in rule_holders
        }
    else:
        destinations = _split(
            registry_id,
            "max_destinations",
            MAX_UNIQUE_DESTINATIONS,
            _WHAT["max_destinations"],
            rule_holders,
        )
    # Filters: every slice's together must always pack into ECR's rules over those sets.
    capacity = filter_capacity(sets)
    filters = _split(
        registry_id,
        "max_filters",
        capacity,
        f"repository filters that always pack into the {MAX_RULES} replication rules ECR "
        f"allows per registry over the {sets} destination set(s) the slices can use "
        f"together (narrow them with destination_sets or replication_destinations)",
        rule_holders,
    )
    chars = _split(
        registry_id,
        "max_policy_chars",
        POLICY_STATEMENT_CHARS,
        _WHAT["max_policy_chars"],
        statement_holders,
    )
    registry_slices = tuple(
        RegistrySlice(
            h.name,
            tuple(sorted(h.prefixes)),
            rules.get(h.name, 0),
            filters.get(h.name, 0),
            destinations.get(h.name, 0),
        )
        for h in rule_holders
    )
    shares = {
        h.name: Share(
            rules=rules.get(h.name, 0),
            destinations=destinations.get(h.name, 0),
            policy_chars=chars.get(h.name, 0),
            filters=filters.get(h.name, 0),
            destination_sets=h.catalog,
            registry_slices=registry_slices,
        )
        for h in holders
        if h.rules or h.statements
    }
    used_filters = sum(filters.values())
    case = WorstCase(
        registry_id=registry_id,
        rule_slices=len(rule_holders),
        destination_sets=sets,
        filters=used_filters,
        rules=rules_needed(sets, used_filters),
        destinations=min(len(reach), sum(destinations.values())),
        policy_chars=sum(chars.values()),
    )
    return shares, case


def _reachable_sets(holders: Sequence[_Holder]) -> int | None:
    """How many distinct destination sets the slices can use together (their catalogs, or
    every subset of their allow-lists); None when more than ECR has rules."""
    found: set[DestinationSet] = set()
    for holder in holders:
        catalog = holder.catalog
        if catalog is not None:
            found |= catalog
        elif len(holder.allowed) <= _ENUMERABLE:
            ordered = sorted(holder.allowed)
            found |= {
                frozenset(d for i, d in enumerate(ordered) if mask >> i & 1)
                for mask in range(2 ** len(ordered))
            }
        else:
            return None
        if len(found) > MAX_RULES:
            return None
    return len(found)


_WHAT = {
    "max_rules": "replication rules ECR allows per registry",
    "max_destinations": "unique replication destinations ECR allows per registry",
    "max_policy_chars": f"policy characters ECR allows for statements ({MAX_POLICY_CHARS} "
    f"less the {len(POLICY_ENVELOPE)} of the document around them)",
}


def _split(
    registry_id: str, key: str, budget: int, what: str, holders: Sequence[_Holder]
) -> dict[str, int]:
    """Each holder's share of `budget`: its explicit `key`, else an equal part of the rest."""
    explicit = {h.name: amount for h in holders if (amount := h.amount(key)) is not None}
    implicit = [h.name for h in holders if h.amount(key) is None]
    committed = sum(explicit.values())
    if committed > budget:
        listed = ", ".join(f"{name} {amount}" for name, amount in explicit.items())
        raise ValueError(
            f"registry {registry_id}: the {key} of tenants {listed} add up to "
            f"{committed}, more than the {budget} {what}"
        )
    split = dict(explicit)
    if implicit:
        each = (budget - committed) // len(implicit)
        if each < 1:
            raise ValueError(
                f"registry {registry_id}: {budget - committed} of the {budget} {what} are "
                f"left after the explicit {key}, too few to split among tenants "
                f"{', '.join(implicit)} (none each); give them {key} or lower the others'"
            )
        split.update(dict.fromkeys(implicit, each))
    return split
