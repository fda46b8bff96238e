"""Packing slices into ECR's limits (service/registry/model/packing.py, slices.py) and shares
that are a guarantee (service/ecr/limits.py): property tests over random tenants, prefixes,
destination sets and orders of writes. Pure logic: the end-to-end behaviour is in
tests/adversarial/test_packing_isolation.py."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from service.auth.targets import Target
from service.config import from_mapping
from service.ecr import limits
from service.gen.v1 import registry_pb2 as pb
from service.registry.model import packing, slices
from tests.support.helpers import ACCOUNT

REGION = "us-east-1"
# Destinations a rule may name: (registry_id, region).
POOL = [
    (f"{n:012d}", region) for n in (1, 2) for region in ("eu-west-1", "us-west-2", "ap-south-1")
]
Intent = list[pb.ReplicationRule]


def make_rule(
    filters: Sequence[str], destinations: Sequence[tuple[str, str]]
) -> pb.ReplicationRule:
    return pb.ReplicationRule(
        destinations=[pb.ReplicationDestination(registry_id=r, region=g) for r, g in destinations],
        repository_filters=[
            pb.RepositoryFilter(filter=f, filter_type="PREFIX_MATCH") for f in filters
        ],
    )


def owner(i: int) -> slices.Ownership:
    return slices.Ownership(f"team{i}", (f"team{i}/",), None)


@st.composite
def intents(draw: Any, tenants: int = 6) -> dict[int, Intent]:
    """Each tenant's rules: filters under its own prefix, to random destination sets (a
    filter may be named by several rules: it goes to their union)."""
    found: dict[int, Intent] = {}
    for i in range(draw(st.integers(1, tenants))):
        names = [f"team{i}/r{n}" for n in range(draw(st.integers(0, 8)))]
        rules = []
        for _ in range(draw(st.integers(0, 5)) if names else 0):
            filters = draw(st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True))
            targets = draw(st.lists(st.sampled_from(POOL), max_size=3, unique=True))
            rules.append(make_rule(filters, targets))
        found[i] = rules
    return found


def outside() -> pb.ReplicationConfiguration:
    """What a full write left: a rule for every repository, and filters no tenant owns."""
    return pb.ReplicationConfiguration(
        rules=[
            make_rule(["shared/a", "team0/shared"], [POOL[0]]),
            make_rule([], [POOL[1]]),
            make_rule(["shared/a"], [POOL[2]]),
        ]
    )


def meaning(rules: Sequence[pb.ReplicationRule]) -> dict[tuple[str, str], frozenset[Any]]:
    return packing.filter_destinations(rules)


def write_all(
    start: pb.ReplicationConfiguration, intent: dict[int, Intent], order: Sequence[int]
) -> pb.ReplicationConfiguration:
    document = start
    for i in order:
        document = owner(i).merge_rules(document, intent[i])
    return document


@settings(max_examples=150, deadline=None)
@given(intents(), st.randoms(use_true_random=False))
def test_packing_replicates_exactly_the_union_of_the_intents(
    intent: dict[int, Intent], random: Any
) -> None:
    order = list(intent)
    random.shuffle(order)
    packed = write_all(outside(), intent, order)
    # For every filter: the destinations it gets equal the union of what was asked of it.
    asked = meaning([r for rules in intent.values() for r in rules])
    carried = {k: v for k, v in meaning(outside().rules).items() if not owner(0).owns_filter(k[0])}
    got = meaning(packed.rules)
    for key, targets in asked.items():
        assert got[key] == targets
    for key, targets in carried.items():  # filters nobody owns keep theirs exactly
        assert got[key] == targets
    assert set(got) == set(asked) | set(carried)
    # The rule for every repository is carried as it was.
    assert [r for r in packed.rules if not r.repository_filters] == [outside().rules[1]]
    # Each tenant reads back its intent, in its canonical form.
    for i, rules in intent.items():
        assert owner(i).rules_in(packed) == packing.canonical(rules)


@settings(max_examples=100, deadline=None)
@given(intents(), st.randoms(use_true_random=False))
def test_the_packed_document_does_not_depend_on_the_order_of_writes(
    intent: dict[int, Intent], random: Any
) -> None:
    documents = set()
    for _ in range(3):
        order = list(intent)
        random.shuffle(order)
        # Some tenants write twice, a first (other) intent then theirs: same end state.
        early = [i for i in order if random.random() < 0.3]
        start = write_all(outside(), {i: intent[(i + 1) % len(intent)] for i in early}, [])
        document = write_all(start, intent, [*early, *order])
        documents.add(document.SerializeToString(deterministic=True))
    assert len(documents) == 1


def test_rules_split_every_100_filters_and_one_rule_per_destination_set() -> None:
    intent = [make_rule([f"team0/f{n:03d}" for n in range(250)], [POOL[0]])]
    intent.append(make_rule(["team0/x", "team0/f007"], [POOL[1]]))
    packed = owner(0).merge_rules(pb.ReplicationConfiguration(), intent)
    sizes = [len(r.repository_filters) for r in packed.rules]
    # team0/f007 goes to both destinations: a set of its own (the larger set sorts last).
    assert sizes == [100, 100, 49, 1, 1]
    assert [len(r.destinations) for r in packed.rules] == [1, 1, 1, 1, 2]
    assert all(len(r.repository_filters) <= limits.MAX_FILTERS_PER_RULE for r in packed.rules)
    # The canonical read-back splits the same way, so it can be written back as it is.
    assert owner(0).rules_in(packed) == list(packed.rules)


@functools.cache
def _most_rules(sets: int, filters: int) -> int:
    """The most rules `filters` filters over at most `sets` sets can take, by trying every
    way (one set takes n filters: ceil(n / 100) rules)."""
    if filters == 0 or sets == 0:
        return 0 if filters == 0 else -(10**9)
    return max(
        -(-n // limits.MAX_FILTERS_PER_RULE) + _most_rules(sets - 1, filters - n)
        for n in range(1, filters + 1)
    )


def test_the_worst_case_formula_is_the_worst_case() -> None:
    for sets in range(1, 5):
        for filters in range(0, 330, 7):
            assert limits.rules_needed(sets, filters) == max(
                _most_rules(s, filters) for s in range(0, sets + 1)
            )
    for sets in range(1, 13):
        capacity = limits.filter_capacity(sets)
        assert limits.rules_needed(sets, capacity) <= limits.MAX_RULES
        assert limits.rules_needed(sets, capacity + 1) > limits.MAX_RULES


# --- shares that are a guarantee ---------------------------------------------------------


@st.composite
def tenancies(draw: Any) -> dict[str, Any]:
    """A config: up to 40 tenants on one registry, some sharing a catalog of destination
    sets, others with allow-lists only, some with explicit shares."""
    catalog = draw(
        st.lists(
            st.lists(st.sampled_from(POOL), min_size=1, max_size=3, unique=True),
            min_size=1,
            max_size=5,
        )
    )
    tenants = []
    for i in range(draw(st.integers(1, 40))):
        entry: dict[str, Any] = {
            "registry_id": ACCOUNT,
            "owned_repository_prefixes": [f"team{i}/"],
            "operations": ["PutReplicationRules"],
        }
        if draw(st.booleans()):
            entry["destination_sets"] = [
                [{"registry_id": r, "regions": [g]} for r, g in s] for s in catalog
            ]
            allowed = sorted({d for s in catalog for d in s})
        else:
            allowed = draw(st.lists(st.sampled_from(POOL), max_size=2, unique=True))
        entry["replication_destinations"] = [{"registry_id": r, "regions": [g]} for r, g in allowed]
        if draw(st.integers(0, 4)) == 0:
            entry["max_filters"] = draw(st.integers(1, 3))
        tenants.append({"name": f"team{i}", "registries": [entry]})
    return {"tenants": tenants}


def targets_of(raw: dict[str, Any]) -> list[Target] | None:
    try:
        config = from_mapping(raw, environ={})
    except Exception:  # a config the check refuses: nothing to guarantee
        return None
    shares = limits.share_plan(config.tenants).shares
    return [
        Target(t.name, t.registries[0], REGION, shares[(t.name, ACCOUNT)]) for t in config.tenants
    ]


def fullest(target: Target, draw: Any) -> Intent:
    """The most the tenant may ask within its share: as many destination sets as it may use,
    its every filter spread over them."""
    share = target.share
    if share.destination_sets is not None:
        choices = sorted(share.destination_sets, key=sorted)
    else:
        allowed = sorted(
            (d.registry_id, g) for d in target.registry.replication_destinations for g in d.regions
        )
        choices = [frozenset(allowed[: n + 1]) for n in range(len(allowed))] or [frozenset()]
    chosen: list[frozenset[tuple[str, str]]] = []
    for s in draw(st.permutations(choices)):
        reach = set().union(*chosen, s)
        if len(chosen) < min(share.rules, share.filters) and len(reach) <= share.destinations:
            chosen.append(s)
    if not chosen:
        return []
    prefix = target.registry.owned_repository_prefixes[0]
    filters = [f"{prefix}f{n}" for n in range(share.filters)]
    rules = [make_rule(filters[k :: len(chosen)], sorted(s)) for k, s in enumerate(chosen)]
    # Its canonical rules may split: keep within its share of rules.
    while len(packing.canonical(rules)) > share.rules:
        filters = filters[: len(filters) - 1]
        rules = [make_rule(filters[k :: len(chosen)], sorted(s)) for k, s in enumerate(chosen)]
    return [r for r in rules if r.repository_filters]


@settings(max_examples=120, deadline=None)
@given(tenancies(), st.data())
def test_every_tenant_within_its_share_always_fits_ecrs_limits(
    raw: dict[str, Any], data: st.DataObject
) -> None:
    targets = targets_of(raw)
    if targets is None:
        return
    document = pb.ReplicationConfiguration()
    for target in targets:
        mine = fullest(target, data.draw)
        # Within its share, by the gateway's own checks (they raise otherwise).
        slices.check_destination_sets(target, mine)
        slices.check_rule_share(target, mine)
        document = slices.Ownership.of(target).merge_rules(document, mine)
        # The backstop never fires for shares the config check accepted.
        slices.check_registry_rules(target, document, mine)
    assert len(document.rules) <= limits.MAX_RULES
    assert len(slices.unique_destinations(document.rules)) <= limits.MAX_UNIQUE_DESTINATIONS
    assert all(len(r.repository_filters) <= limits.MAX_FILTERS_PER_RULE for r in document.rules)
    worst = limits.share_plan(from_mapping(raw, environ={}).tenants).worst_cases[ACCOUNT]
    assert worst.rules <= limits.MAX_RULES
    assert len(document.rules) <= worst.rules
    assert sum(len(r.repository_filters) for r in document.rules) <= worst.filters


# --- registry policy statements: measured, not packed --------------------------------------


def typical_statement(i: int) -> dict[str, Any]:
    """One team's usual statement: a partner account may replicate into its repositories."""
    return {
        "Sid": f"Team{i:03d}Replicate",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::210987654321:root"},
        "Action": ["ecr:CreateRepository", "ecr:ReplicateImage"],
        "Resource": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/team{i:03d}/*",
    }


def policy_teams(count: int) -> dict[str, Any]:
    return {
        "tenants": [
            {
                "name": f"team{i:03d}",
                "registries": [
                    {
                        "registry_id": ACCOUNT,
                        "owned_repository_prefixes": [f"team{i:03d}/"],
                        "owned_statement_sid_prefix": f"Team{i:03d}",
                    }
                ],
            }
            for i in range(count)
        ]
    }


def test_how_many_teams_with_one_typical_statement_fit_the_policy() -> None:
    # The measurement the README quotes: 221 characters as AWS stores it, so 46 teams' equal
    # shares of the 10,201 statement characters hold one each, 47 teams' do not. Statements
    # are not packed (see the README: each is its owner's, by Sid).
    config = from_mapping(policy_teams(47), environ={})
    target = Target("team046", config.tenants[46].registries[0], REGION)
    size = slices.stored_chars(target, [typical_statement(46)])
    assert size == 221
    for count, fits in ((46, True), (47, False)):
        tenants = from_mapping(policy_teams(count), environ={}).tenants
        share = limits.share_plan(tenants).shares[(f"team{count - 1:03d}", ACCOUNT)]
        assert (share.policy_chars >= size) is fits
