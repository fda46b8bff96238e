"""Slices over their shares: the shares are a guarantee only while every tenant keeps to its
own, and a reload that adds a tenant shrinks the others' shares while what they wrote stays in
AWS (as does a full PutReplicationConfiguration filling a tenant's prefixes past its share).

A broken premise is seen and named: a neighbour's write, within its own share, that meets
the registry full is refused as `SLICES_OVER_SHARE` in counts only (never the other tenant's
name nor its rules); the tenant over its share sees it in its own GetReplicationRules; the
drift check tells operators which tenant, once per change (audit event, gauge).

On the in-memory ECR with real in-process locks, cache and history (as
tests/registry/test_group_commit.py), real Metrics; the review test this began as came from
tests/adversarial/test_review_group_commit.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from service import config as config_mod
from service.app.drift_check import OVER_SHARE_EVENT, DriftCheck, OverShareWatch
from service.app.reload import shrunk_shares
from service.auth.content import ContentRules
from service.auth.targets import Target
from service.aws.memory import MemoryEcr
from service.config import DestinationAllow, GatewayConfig, RegistryConfig
from service.ecr import limits
from service.errors import FailedPrecondition
from service.gen.v1 import registry_pb2 as pb
from service.observability.metrics import Metrics
from service.registry.rpcs.slice_operations import SliceOperations
from service.registry.rpcs.validation import RequestValidator
from service.registry.writes.operations import RegistryOperations
from service.state.cache import MemoryStore, ReadCache
from service.state.claims import MemoryClaims
from service.state.locks import RegistryLocks
from tests.registry.conftest import ACCOUNT, CACHE, REGION, Clock

REGIONS = (
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "ap-south-1",
    "ap-northeast-1",
    "ap-southeast-1",
)  # 11 destinations: K is not enumerable, so each tenant's rules are its part of the 10


def _entry(name: str) -> dict[str, object]:
    return {
        "registry_id": ACCOUNT,
        "regions": [REGION],
        "owned_repository_prefixes": [f"{name}/"],
        "replication_destinations": [{"registry_id": ACCOUNT, "regions": list(REGIONS)}],
    }


def _config(names: list[str]) -> GatewayConfig:
    return config_mod.from_mapping(
        {"tenants": [{"name": n, "registries": [_entry(n)]} for n in names]}, environ={}
    )


def _target(name: str, names: list[str]) -> Target:
    """`name`'s target under a config of the tenants `names` (its share from share_plan)."""
    share = limits.share_plan(_config(names).tenants).shares[(name, ACCOUNT)]
    registry = RegistryConfig(
        registry_id=ACCOUNT,
        regions=(REGION,),
        owned_repository_prefixes=(f"{name}/",),
        replication_destinations=(DestinationAllow(registry_id=ACCOUNT, regions=REGIONS),),
    )
    return Target(tenant=name, registry=registry, region=REGION, share=share)


def _to(region: str, *filters: str) -> pb.ReplicationRule:
    return pb.ReplicationRule(
        destinations=[pb.ReplicationDestination(region=region, registry_id=ACCOUNT)],
        repository_filters=[
            pb.RepositoryFilter(filter=f, filter_type="PREFIX_MATCH") for f in filters
        ],
    )


@dataclasses.dataclass
class Domain:
    ecr: MemoryEcr
    ops: RegistryOperations
    writes: SliceOperations


def _domain() -> Domain:
    ecr = MemoryEcr()
    ops = RegistryOperations(
        ecr, RegistryLocks(), ReadCache(CACHE, MemoryStore(100), clock=Clock(), jitter=lambda: 1.0)
    )
    return Domain(ecr, ops, SliceOperations(ops, ContentRules(), RequestValidator()))


ALPHA_TEN = [_to(region, f"alpha/{i}") for i, region in enumerate(REGIONS[:10])]


async def _alpha_fills_the_registry_then_beta_is_added(domain: Domain) -> Target:
    """Alpha, alone, uses its whole share (10 canonical rules); a reload adds beta (5 each):
    the config check passes, alpha's 10 rules stay in AWS. Answers beta's new target."""
    alone = _target("alpha", ["alpha"])
    assert alone.share.rules == limits.MAX_RULES
    await domain.writes.put_rules(alone, ALPHA_TEN, "", False)
    assert len(domain.ecr.replication(ACCOUNT, REGION).rules) == 10
    beta = _target("beta", ["alpha", "beta"])
    assert beta.share.rules == 5
    return beta


def _told(error: FailedPrecondition) -> str:
    """Everything the caller hears of a refusal: message, metadata, quota violations."""
    violations = [f"{v.subject} {v.description}" for v in error.quota_violations]
    return " ".join([error.message, *error.metadata.values(), *violations])


async def test_a_reload_shrinking_shares_refuses_a_neighbours_write_as_slices_over_share() -> None:
    """(Began as test_review_a_reload_shrinking_shares_lets_an_old_slice_fail_a_new_tenants_write.)
    Beta's first write is within its share, and the registry is full only because alpha's
    slice passes its new share: refused FAILED_PRECONDITION `SLICES_OVER_SHARE` (an operator
    can alert on it), in counts only — not 'rules outside the slices', which is not what
    happened — and nothing of alpha (its name, its filters, its destinations) is told."""
    domain = _domain()
    beta = await _alpha_fills_the_registry_then_beta_is_added(domain)
    with pytest.raises(FailedPrecondition) as caught:
        await domain.writes.put_rules(beta, [_to(REGIONS[10], "beta/app")], "", False)
    error = caught.value
    assert error.reason == "SLICES_OVER_SHARE"
    told = _told(error)
    assert "1 other slice(s) hold more than their shares after a config change" in told
    assert "10 canonical rule(s) for shares of 5" in told
    assert "0 rule(s) holding 0 filter(s) are outside every slice" in told
    assert "alpha" not in told.lower()
    assert REGIONS[0] not in told  # none of alpha's destinations
    assert error.quota_violations  # the QuotaFailure: which of ECR's limits is full
    # Nothing written: AWS holds alpha's ten rules (packed in their own order).
    held = domain.ecr.replication(ACCOUNT, REGION).rules
    assert sorted(r.SerializeToString() for r in held) == sorted(
        r.SerializeToString() for r in ALPHA_TEN
    )


async def test_the_tenant_over_its_share_sees_it_in_its_own_answer_and_can_shrink() -> None:
    """Alpha's own GetReplicationRules shows it past its share (rules_used > rules_limit);
    once it shrinks to its share, beta's write goes through."""
    domain = _domain()
    beta = await _alpha_fills_the_registry_then_beta_is_added(domain)
    alpha = _target("alpha", ["alpha", "beta"])
    answer = (await domain.writes.get_rules(alpha, fresh=True)).value
    assert answer is not None
    assert (answer.rules_used, answer.rules_limit) == (10, 5)
    # Alpha keeps 5 rules (within its share): refused nothing.
    await domain.writes.put_rules(alpha, ALPHA_TEN[:5], answer.etag, False)
    await domain.writes.put_rules(beta, [_to(REGIONS[10], "beta/app")], "", False)
    assert len(domain.ecr.replication(ACCOUNT, REGION).rules) == 6


async def test_a_full_write_filling_a_tenants_prefixes_past_its_share_is_named_the_same() -> None:
    """An administrator's full PutReplicationConfiguration puts 10 rules inside alpha's
    prefixes while alpha's share is 5: beta's write meets the same, named, refusal."""
    domain = _domain()
    beta = _target("beta", ["alpha", "beta"])
    admin = dataclasses.replace(beta, tenant="admin", share=limits.WHOLE_REGISTRY)
    await domain.ecr.put_replication_configuration(
        admin, pb.ReplicationConfiguration(rules=ALPHA_TEN)
    )
    with pytest.raises(FailedPrecondition) as caught:
        await domain.writes.put_rules(beta, [_to(REGIONS[10], "beta/app")], "", False)
    assert caught.value.reason == "SLICES_OVER_SHARE"
    assert "alpha" not in _told(caught.value).lower()


async def test_rules_outside_every_slice_are_counted_and_keep_their_reason() -> None:
    """Rules no slice owns fill the registry: REPLICATION_QUOTA_EXCEEDED as before, now
    with how many rules and filters are outside every slice (counts, no content)."""
    domain = _domain()
    beta = _target("beta", ["alpha", "beta"])
    admin = dataclasses.replace(beta, tenant="admin", share=limits.WHOLE_REGISTRY)
    nobodys = [_to(region, f"legacy/{i}") for i, region in enumerate(REGIONS[:10])]
    await domain.ecr.put_replication_configuration(
        admin, pb.ReplicationConfiguration(rules=nobodys)
    )
    with pytest.raises(FailedPrecondition) as caught:
        await domain.writes.put_rules(beta, [_to(REGIONS[10], "beta/app")], "", False)
    assert caught.value.reason == "REPLICATION_QUOTA_EXCEEDED"
    told = _told(caught.value)
    assert "10 rule(s) holding 10 filter(s) are outside every slice" in told
    assert "legacy" not in told


class Audit:
    """The audit trail's `event` (service/observability/audit.py), kept in a list."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def event(self, event: str, /, **fields: object) -> None:
        self.lines.append({"event": event, **fields})


def _gauge(metrics: Metrics, tenant: str) -> float | None:
    return metrics.registry.get_sample_value(
        "registry_gateway_slice_over_share",
        {"registry_id": ACCOUNT, "region": REGION, "tenant": tenant},
    )


async def test_the_drift_check_tells_operators_which_slice_is_over_once_per_change() -> None:
    """After the reload, the periodic drift check names alpha to operators (audit event with
    its counts, gauge 1; beta's gauge 0), once per change, not once per period; alpha back
    within its share: 0; a reload that drops a tenant drops its gauge."""
    domain = _domain()
    await _alpha_fills_the_registry_then_beta_is_added(domain)
    config = [_config(["alpha", "beta"])]
    audit, metrics = Audit(), Metrics()
    watch = OverShareWatch(lambda: config[0], audit, metrics.slice_judged)
    slot = [0.0]
    check = DriftCheck(
        domain.ops,
        lambda: [_target("alpha", ["alpha", "beta"])],
        MemoryClaims(),
        60,
        clock=lambda: slot[0],
        over_share=watch.judge,
    )
    assert await check.check_once() == 1
    assert audit.lines == [
        {
            "event": OVER_SHARE_EVENT,
            "registry_id": ACCOUNT,
            "region": REGION,
            "tenant": "alpha",
            "rules": 10,
            "rules_share": 5,
            "filters": 10,
            "filters_share": limits.share_plan(config[0].tenants)
            .shares[("alpha", ACCOUNT)]
            .filters,
            "destinations": 10,
            "destinations_share": 11,  # all 11 reachable together fit ECR's 25
            "rules_outside_slices": 0,
        }
    ]
    assert (_gauge(metrics, "alpha"), _gauge(metrics, "beta")) == (1.0, 0.0)
    # The next periods: the same state, no new line.
    for period in (1, 2):
        slot[0] = 60.0 * period
        assert await check.check_once() == 1
    assert len(audit.lines) == 1
    # Alpha shrinks to its share: back to 0, nothing more audited.
    alpha = _target("alpha", ["alpha", "beta"])
    await domain.writes.put_rules(alpha, ALPHA_TEN[:5], "", False)
    slot[0] = 180.0
    assert await check.check_once() == 1
    assert _gauge(metrics, "alpha") == 0.0 and len(audit.lines) == 1
    # A reload drops beta: its gauge goes.
    config[0] = _config(["alpha"])
    slot[0] = 240.0
    assert await check.check_once() == 1
    assert _gauge(metrics, "beta") is None and _gauge(metrics, "alpha") == 0.0


async def test_a_failing_sink_never_breaks_the_drift_check() -> None:
    """A gauge that raises is logged by type; the check still reads both resources."""
    domain = _domain()
    await _alpha_fills_the_registry_then_beta_is_added(domain)

    def broken(*_: object) -> None:
        raise RuntimeError("sink down")

    watch = OverShareWatch(lambda: _config(["alpha", "beta"]), Audit(), broken)
    check = DriftCheck(
        domain.ops,
        lambda: [_target("alpha", ["alpha", "beta"])],
        MemoryClaims(),
        60,
        over_share=watch.judge,
    )
    domain.ecr.calls.clear()
    assert await check.check_once() == 1
    assert sorted(c.operation for c in domain.ecr.calls) == [
        "describe_registry",
        "get_registry_policy",
    ]
    await asyncio.sleep(0)


def test_a_reload_that_shrinks_shares_names_the_registry_and_its_tenants() -> None:
    """What the reload warns about: alpha's share shrank when beta was added; nothing when
    a tenant leaves (the shares grow)."""
    one, two = _config(["alpha"]), _config(["alpha", "beta"])
    assert shrunk_shares(one, two) == {ACCOUNT: ["alpha"]}
    assert shrunk_shares(two, one) == {}
    assert shrunk_shares(two, two) == {}
