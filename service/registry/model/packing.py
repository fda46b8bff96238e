"""Packing: the replication configuration written to AWS as a function of what each filter asks.

ECR replicates a repository to every destination of every rule with a filter that matches it
(each rule is a pair of "replication destinations and repository filters", ReplicationRule in
the ECR API reference; rules do not exclude one another and have no order or priority), so
what a set of rules means is, per repository filter, the union of the destinations of the
rules naming it.
Rules that mean the same can therefore be rewritten: take, per filter, that union; group the
filters by identical destination set; one rule per group (split when it passes ECR's 100
filters a rule). The result replicates exactly what the rules did, and depends only on what
each filter asks: never on the order of the rules, nor on the order of the writes that put
them there. Same meaning, same bytes, same etag.

A rule without filters applies to every repository (only a full PutReplicationConfiguration
writes one): it cannot take filters without narrowing, so it is carried as it is, after the
packed rules, in its own order.

Pure (no I/O); service/registry/model/slices.py builds a tenant's canonical read-back and the
packed merge on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from service.ecr.limits import MAX_FILTERS_PER_RULE, Destination, DestinationSet
from service.gen.v1 import registry_pb2 as pb

# A repository filter, as ECR tells two apart: (filter, filter_type).
FilterKey = tuple[str, str]


def destination_set(rule: pb.ReplicationRule) -> DestinationSet:
    """The (registry, region) pairs a rule replicates to."""
    return frozenset((d.registry_id, d.region) for d in rule.destinations)


def filter_destinations(rules: Iterable[pb.ReplicationRule]) -> dict[FilterKey, DestinationSet]:
    """Per repository filter, the union of the destinations of the rules naming it (what the
    rules mean). Rules without filters are not in it: they name no filter."""
    found: dict[FilterKey, set[Destination]] = {}
    for rule in rules:
        targets = destination_set(rule)
        for repository_filter in rule.repository_filters:
            key = (repository_filter.filter, repository_filter.filter_type)
            found.setdefault(key, set()).update(targets)
    return {key: frozenset(targets) for key, targets in found.items()}


def grouped(meaning: Mapping[FilterKey, DestinationSet]) -> list[pb.ReplicationRule]:
    """The rules of `meaning` packed: one rule per distinct destination set, each holding the
    filters that go exactly there (sorted), split every MAX_FILTERS_PER_RULE filters; rules
    ordered by their destination set (sorted pairs), destinations sorted within a rule."""
    by_set: dict[DestinationSet, list[FilterKey]] = {}
    for key, targets in meaning.items():
        by_set.setdefault(targets, []).append(key)
    rules: list[pb.ReplicationRule] = []
    for targets in sorted(by_set, key=_set_order):
        filters = sorted(by_set[targets])
        destinations = [
            pb.ReplicationDestination(registry_id=registry_id, region=region)
            for registry_id, region in sorted(targets)
        ]
        for start in range(0, len(filters), MAX_FILTERS_PER_RULE):
            rules.append(
                pb.ReplicationRule(
                    destinations=destinations,
                    repository_filters=[
                        pb.RepositoryFilter(filter=value, filter_type=kind)
                        for value, kind in filters[start : start + MAX_FILTERS_PER_RULE]
                    ],
                )
            )
    return rules


def canonical(rules: Iterable[pb.ReplicationRule]) -> list[pb.ReplicationRule]:
    """`rules` (all with filters) in their one canonical form: `grouped` of what they mean."""
    return grouped(filter_destinations(rules))


def pack(
    current: pb.ReplicationConfiguration,
    replaced: Callable[[FilterKey], bool],
    mine: Sequence[pb.ReplicationRule],
) -> pb.ReplicationConfiguration:
    """`current` with every filter `replaced` selects dropped and the filters of `mine` added
    (what each asks), packed; the rules without filters carried after, in their order.

    Every other filter keeps exactly its destinations: the caller's slice is replaced, the
    others' meaning is untouched (whichever rules held it before)."""
    meaning = {
        key: targets
        for key, targets in filter_destinations(current.rules).items()
        if not replaced(key)
    }
    for key, targets in filter_destinations(mine).items():
        meaning[key] = meaning.get(key, frozenset()) | targets
    packed = pb.ReplicationConfiguration(rules=grouped(meaning))
    packed.rules.extend(rule for rule in current.rules if not rule.repository_filters)
    return packed


def _set_order(targets: DestinationSet) -> tuple[int, tuple[Destination, ...]]:
    return (len(targets), tuple(sorted(targets)))
