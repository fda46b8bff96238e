"""Many teams on one registry (issue 22): slices packed into ECR's 10 rules, and writes that
queue on the registry's lock applied together (group commit).

For each size of SIZES (tenants), two gateway processes (`registry-gateway serve`, pinned to
the server's core like the others) share one Redis: two replicas. Each tenant owns a
repository prefix and replicates 2 or 3 filters under it to one of 4 common destination sets
(a catalog every tenant shares: `destination_sets`, so the config check proves 703 filters
always pack into 10 rules). Then, per size:

- **all at once**: every tenant writes its slice (PutReplicationRules) at the same moment,
  half through each replica;
- **a third change**: a third of them move their filters to another of the 4 sets, at once.

After each phase: every write answered OK; AWS holds at most 10 rules (read from moto
directly, not through the counting proxy); every tenant reads back (GetReplicationRules)
exactly its intent in its canonical form; and the PutReplicationConfiguration calls the
phase made (the stand-in's counting proxy) are at most half its slice writes. Reported: the
time to converge (from the first write sent to the last answered) and the p99 of a slice
write, the 200 tenants against the same run with 10.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3  # type: ignore[import-untyped]  # no stubs; aioboto3's botocore pin
import grpc

from bench.common import ACCOUNT, REGION, Row, Verdict, _delta, _hash_key
from bench.stats import Measurement, measured, percentile
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.registry.model import packing

if TYPE_CHECKING:
    from bench.harness import Run
    from bench.processes import ServerProcess

SCENARIO = "teams"
SIZES = {"quick": (10, 200), "full": (10, 200)}
# The four destination sets every tenant's catalog holds (same account, other regions: no
# cross-account destination policy to judge).
SETS: tuple[tuple[str, ...], ...] = (
    ("eu-west-1",),
    ("us-west-2",),
    ("eu-west-1", "us-west-2"),
    ("eu-central-1", "ap-southeast-2"),
)
SEED = 22
PUT = "ecr:PutReplicationConfiguration"
DESCRIBE = "ecr:DescribeRegistry"
MAX_RULES = 10
CALL_TIMEOUT_SECONDS = 60.0
REPLICAS = 2


@dataclass(frozen=True)
class Team:
    """One tenant: its name, key, filters and the destination set they go to."""

    name: str
    key: str
    filters: tuple[str, ...]
    destinations: int  # an index of SETS

    def rules(self, destinations: int | None = None) -> list[pb.ReplicationRule]:
        """Its slice: one rule, its filters to its set (or to `destinations`)."""
        regions = SETS[self.destinations if destinations is None else destinations]
        return [
            pb.ReplicationRule(
                destinations=[
                    pb.ReplicationDestination(registry_id=ACCOUNT, region=r) for r in regions
                ],
                repository_filters=[
                    pb.RepositoryFilter(filter=f, filter_type="PREFIX_MATCH") for f in self.filters
                ],
            )
        ]


def teams(count: int, key_prefix: str) -> list[Team]:
    """`count` tenants: 2 or 3 filters each under its own prefix, a set drawn from SETS."""
    draw = random.Random(SEED)  # noqa: S311 - a reproducible draw, not a secret
    found = []
    for i in range(count):
        name = f"team{i:03d}"
        filters = tuple(f"{name}/{part}" for part in ("api", "web", "jobs")[: 2 + i % 2])
        found.append(Team(name, f"{key_prefix}-{name}", filters, draw.randrange(len(SETS))))
    return found


# The comparison of hand-over on and off: a burst of WIDE_TEAMS writes through WIDE_REPLICAS
# replicas, each DescribeRegistry and PutReplicationConfiguration held by the proxy about
# what real ECR takes.
SLOW_AWS_MS = 60
WIDE_TEAMS = 24
WIDE_REPLICAS = 6


def teams_config(
    proxy_url: str, redis_url: str, prefix: str, members: list[Team]
) -> dict[str, Any]:
    """Two replicas' config: Redis shared, every tenant a slice of one registry, the catalog
    of SETS; limits that a test of one tenant's flood sets lower are out of the way."""
    allowed = [{"registry_id": ACCOUNT, "regions": sorted({r for s in SETS for r in s})}]
    catalog = [[{"registry_id": ACCOUNT, "regions": list(s)}] for s in SETS]
    return {
        "listen": "127.0.0.1:0",
        "server": {
            "max_concurrent_rpcs": 4096,
            "drain_seconds": 0,
            "grace_seconds": 2,
            "max_deadline_seconds": CALL_TIMEOUT_SECONDS,
        },
        "drift": {"check_seconds": 0},
        "aws": {
            "region": REGION,
            "endpoint_url": proxy_url,
            "max_attempts": 2,
            "tenant_upstream_per_second": 1_000_000,
            "tenant_upstream_burst": 1_000_000,
        },
        "cache": {"backend": "redis", "redis_url": redis_url, "key_prefix": prefix},
        "tenants": [
            {
                "name": team.name,
                "api_keys": [_hash_key(team.key)],
                "registries": [
                    {
                        "registry_id": ACCOUNT,
                        "regions": [REGION],
                        "operations": ["GetReplicationRules", "PutReplicationRules"],
                        "owned_repository_prefixes": [f"{team.name}/"],
                        "replication_destinations": allowed,
                        "destination_sets": catalog,
                    }
                ],
            }
            for team in members
        ],
    }


@dataclass
class Phase:
    """What one phase of writes measured."""

    writes: int
    latencies: list[float]  # seconds, sorted
    codes: dict[str, int]
    details: dict[str, str]
    converge_s: float
    puts: int
    upstream: dict[str, int]
    rules_in_aws: int
    read_back_ok: int  # tenants reading back exactly their intent
    cpu_s: float  # both replicas'


async def _write_all(
    addresses: list[str], writes: list[tuple[Team, int]]
) -> tuple[list[float], dict[str, int], dict[str, str], float]:
    """Every (team, set) written at once, alternating replicas: latencies, codes, the first
    message of each failed code, and the time from the first sent to the last answered."""
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    stubs = [pb_grpc.RegistryConfigServiceStub(c) for c in channels]
    latencies: list[float] = []
    codes: dict[str, int] = {}
    details: dict[str, str] = {}

    async def one(i: int, team: Team, destinations: int) -> None:
        started = time.perf_counter()
        code, text = "OK", ""
        try:
            await stubs[i % len(stubs)].PutReplicationRules(
                pb.PutReplicationRulesRequest(rules=team.rules(destinations)),
                metadata=(("authorization", f"Bearer {team.key}"),),
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            code, text = exc.code().name, str(exc.details())[:300]
        latencies.append(time.perf_counter() - started)
        codes[code] = codes.get(code, 0) + 1
        if text:
            details.setdefault(code, text)

    try:
        for channel in channels:
            await channel.channel_ready()
        started = time.perf_counter()
        await asyncio.gather(*(one(i, t, d) for i, (t, d) in enumerate(writes)))
        converge = time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close()
    return sorted(latencies), codes, details, converge


async def _read_back(address: str, intents: dict[str, tuple[Team, int]]) -> int:
    """How many tenants read back exactly their intent (canonical form), 32 at a time."""
    limit = asyncio.Semaphore(32)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)

        async def one(team: Team, destinations: int) -> bool:
            async with limit:
                got = await stub.GetReplicationRules(
                    pb.GetReplicationRulesRequest(),
                    metadata=(("authorization", f"Bearer {team.key}"),),
                    timeout=CALL_TIMEOUT_SECONDS,
                )
            return list(got.rules) == packing.canonical(team.rules(destinations))

        found = await asyncio.gather(*(one(t, d) for t, d in intents.values()))
    return sum(found)


def _rules_in_aws(moto_url: str) -> int:
    ecr = boto3.client(
        "ecr",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto's placeholder
    )
    return len(ecr.describe_registry()["replicationConfiguration"]["rules"])


def _clear_replication(moto_url: str) -> None:
    ecr = boto3.client(
        "ecr",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto's placeholder
    )
    ecr.put_replication_configuration(replicationConfiguration={"rules": []})


def _phase(
    run: Run,
    gateways: list[ServerProcess],
    writes: list[tuple[Team, int]],
    intents: dict[str, tuple[Team, int]],
) -> Phase:
    before = run.aws.control("counts")
    cpu_before = sum(g.cpu_seconds() for g in gateways)
    latencies, codes, details, converge = asyncio.run(
        _write_all([g.address for g in gateways], writes)
    )
    cpu = sum(g.cpu_seconds() for g in gateways) - cpu_before
    upstream = _delta(run.aws.control("counts"), before)
    for team, destinations in writes:
        intents[team.name] = (team, destinations)
    ok = asyncio.run(_read_back(gateways[-1].address, intents))
    return Phase(
        writes=len(writes),
        latencies=latencies,
        codes=codes,
        details=details,
        converge_s=converge,
        puts=upstream.get(PUT, 0),
        upstream=upstream,
        rules_in_aws=_rules_in_aws(run.aws.moto_url),
        read_back_ok=ok,
        cpu_s=cpu,
    )


def measure_size(
    run: Run, count: int, *, hand_over: bool = True, aws_ms: int = 0, replicas: int = REPLICAS
) -> tuple[Phase, Phase]:
    """Two replicas for `count` tenants: every one writing at once, then a third changing.
    `hand_over`: `cache.hand_over_writes`; `aws_ms`: each DescribeRegistry and put held that
    long by the proxy (real ECR answers in tens of ms; moto in one or two)."""
    members = teams(count, run.key[:12])
    prefix = f"{run.redis_prefix}teams{count}{'' if hand_over else 'alone'}{aws_ms}:"
    config = teams_config(run.aws.proxy_url, run.redis_url, prefix, members)
    config["cache"]["hand_over_writes"] = hand_over
    _clear_replication(run.aws.moto_url)
    for op in (PUT, DESCRIBE):
        run.aws.control(f"hold?op={op}&ms={aws_ms}")
    label = f"{count}-{'h' if hand_over else 'n'}{aws_ms}-{replicas}"
    gateways = [run._start_gateway(f"gateway-teams-{label}-{i}", config) for i in range(replicas)]
    try:
        intents: dict[str, tuple[Team, int]] = {}
        first = _phase(run, gateways, [(t, t.destinations) for t in members], intents)
        movers = members[::3]
        moved = [(t, (t.destinations + 1 + i % 3) % len(SETS)) for i, t in enumerate(movers)]
        second = _phase(run, gateways, moved, intents)
    finally:
        for gateway in gateways:
            gateway.stop()
        for op in (PUT, DESCRIBE):
            run.aws.control(f"hold?op={op}&ms=0")
    return first, second


def _measurement(phase: Phase) -> Measurement:
    return measured(phase.latencies, phase.converge_s, phase.cpu_s, phase.codes, phase.details)


def _row(run: Run, count: int, name: str, title: str, phase: Phase) -> Row:
    row = Row(
        f"teams.{count}.{name}",
        SCENARIO,
        f"{count} teams, {title}: PutReplicationRules",
        phase.writes,
        _measurement(phase),
        f"{REPLICAS} gateways {'cpu0' if run.pin else 'unpinned'}, one Redis; "
        f"{phase.writes} calls at once, 1 channel per gateway",
        upstream=phase.upstream,
    )
    row.extra.update(
        tenants=count,
        writes=phase.writes,
        puts=phase.puts,
        converge_s=round(phase.converge_s, 3),
        rules_in_aws=phase.rules_in_aws,
        read_back_ok=phase.read_back_ok,
    )
    row.notes.append(
        "seconds = time to converge (first write sent to last answered); AWS calls "
        "counted by the stand-in's proxy"
    )
    return row


def _checks(count: int, name: str, phase: Phase, tenants: int) -> list[Verdict]:
    what = f"many teams: {count} teams, {name}"
    found = [
        Verdict(
            f"{what}: every slice write answered OK",
            set(phase.codes) == {"OK"},
            f"{phase.codes}" + "".join(f"; {c}: {t!r}" for c, t in phase.details.items()),
            "all OK",
            "check",
        ),
        Verdict(
            f"{what}: AWS holds at most {MAX_RULES} rules",
            phase.rules_in_aws <= MAX_RULES,
            f"{phase.rules_in_aws} rules",
            f"<= {MAX_RULES}",
            "check",
        ),
        Verdict(
            f"{what}: every tenant reads back exactly its intent",
            phase.read_back_ok == tenants,
            f"{phase.read_back_ok} of {tenants}",
            f"{tenants} of {tenants}",
            "check",
        ),
    ]
    if count >= 100:
        found.append(
            Verdict(
                f"{what}: PutReplicationConfiguration calls per slice write",
                phase.puts * 2 <= phase.writes,
                f"{phase.puts} puts for {phase.writes} writes",
                "<= half",
                "target",
            )
        )
    return found


def run_scenario(run: Run) -> None:
    """Every size: the rows of both phases, their checks, the largest against the smallest."""
    sizes = SIZES.get(run.plan.name, SIZES["quick"])
    run.log(
        "many teams: slice writes of "
        + ", ".join(str(n) for n in sizes)
        + f" tenants at once through {REPLICAS} replicas sharing Redis"
    )
    measured: dict[int, tuple[Phase, Phase]] = {}
    for count in sizes:
        first, second = measure_size(run, count)
        measured[count] = (first, second)
        for name, title, phase in (
            ("all", "all at once", first),
            ("third", "a third change destinations", second),
        ):
            run.log(
                f"  {count:>3} teams, {title}: converged in {phase.converge_s:.2f} s, p99 "
                f"{percentile(phase.latencies, 99) * 1000:.0f} ms, {phase.puts} puts for "
                f"{phase.writes} writes, {phase.rules_in_aws} rules in AWS, "
                f"{phase.read_back_ok}/{count} read back; codes {phase.codes}"
            )
            run._add(_row(run, count, name, title, phase))
            run.verdicts += _checks(count, title, phase, count)
    small, large = min(sizes), max(sizes)
    # Across replicas: a burst spread over many replicas (a few writes each), AWS answering
    # as slowly as real ECR, writes handed to the replica holding the lock (the default)
    # against each replica batching its own (one batch per replica, in turn).
    slow: dict[bool, Phase] = {}
    for hand_over in (False, True):
        slow[hand_over], _ = measure_size(
            run, WIDE_TEAMS, hand_over=hand_over, aws_ms=SLOW_AWS_MS, replicas=WIDE_REPLICAS
        )
        phase = slow[hand_over]
        title = (
            f"{WIDE_TEAMS} teams through {WIDE_REPLICAS} replicas, AWS {SLOW_AWS_MS} ms a "
            f"call, hand-over {'on' if hand_over else 'off'}"
        )
        run.log(
            f"  {title}: converged in {phase.converge_s:.2f} s, p99 "
            f"{percentile(phase.latencies, 99) * 1000:.0f} ms, {phase.puts} puts for "
            f"{phase.writes} writes; codes {phase.codes}"
        )
        run.verdicts += _checks(WIDE_TEAMS, title, phase, WIDE_TEAMS)
    on, off = slow[True], slow[False]
    run.verdicts.append(
        Verdict(
            f"many teams: {WIDE_TEAMS} teams through {WIDE_REPLICAS} replicas, AWS "
            f"{SLOW_AWS_MS} ms a call, writes handed across replicas against each replica's "
            "own batches",
            on.puts < off.puts,
            f"{on.puts} puts, converged in {on.converge_s:.2f} s, p99 "
            f"{percentile(on.latencies, 99) * 1000:.0f} ms against {off.puts} puts, "
            f"{off.converge_s:.2f} s, {percentile(off.latencies, 99) * 1000:.0f} ms",
            "fewer puts",
            "target",
        )
    )
    if small != large:
        for index, title in ((0, "all at once"), (1, "a third change destinations")):
            a, b = measured[small][index], measured[large][index]
            run.verdicts.append(
                Verdict(
                    f"many teams: {title}, {large} teams against {small}",
                    True,
                    f"converged in {b.converge_s:.2f} s against {a.converge_s:.2f} s "
                    f"(x{b.converge_s / max(a.converge_s, 1e-9):.1f}); p99 of a slice write "
                    f"{percentile(b.latencies, 99) * 1000:.0f} ms against "
                    f"{percentile(a.latencies, 99) * 1000:.0f} ms; "
                    f"{b.puts} puts for {b.writes} writes against {a.puts} for {a.writes}",
                    f"{large / small:.0f}x the tenants",
                    "check",
                )
            )
