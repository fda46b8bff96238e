"""The benchmark run: starts the servers, drives every scenario, checks targets and invariants.

Scenarios (one run, so the ratios compare like with like on this shared, noisy machine):

1. baseline: a bare grpc.aio server answering same-sized responses from memory;
2. cached read: DescribeRegistry / GetRegistryPolicy hits through the full gateway
   (rounds interleaved with the baseline's, medians reported);
3. direct AWS (aioboto3, one long-lived client, to the stand-in) beside the gateway on a
   cold cache (`cache-control: no-cache`) and on a warm one, at the same concurrency;
4. cold storm: N concurrent reads of one never-read key while the stand-in holds the
   upstream call; the upstream calls made must be exactly 1;
5. writes: PutReplicationConfiguration with etag, one writer and several contending;
   ABORTED counted, the final state and the chain of etags checked;
6. scale-out: --workers 1 vs 2, one and two replicas on Redis, Redis vs memory per call.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]  # no stubs; aioboto3's botocore pin
import grpc
import redis
import yaml
from ecr.registry.v1 import registry_pb2 as pb

from bench import machine
from bench.loadgen import SERVICE, AwsJob, Job, JobResult, LoadPool, UnaryJob, WriteJob, split
from bench.processes import (
    BIN,
    AwsStandIn,
    ServerProcess,
    core_busy,
    core_times,
    cpu_seconds,
    free_port,
    pinned,
    set_affinity,
)
from bench.stats import SERVER_BOUND_BUSY, Measurement, measure, median_of

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / "bench" / ".scratch"
ACCOUNT = "123456789012"
REGION = "us-east-1"
REPLICA_REGION = "eu-west-1"
# Never read before a storm round: each round's key is cold. Real ECR regions (the gateway
# checks region names against botocore's endpoint data).
STORM_REGIONS = ("ap-south-1", "ca-central-1", "eu-north-1", "sa-east-1", "ap-northeast-1")
SERVER_CPUS = {0}
CLIENT_CPUS = {1}
ALL_CPUS = {0, 1}
REDIS_URL_ENV = "REGISTRY_GATEWAY_BENCH_REDIS_URL"
# Set by scripts/with_redis.sh (what `make bench` runs under), after finding or starting one.
TEST_REDIS_URL_ENV = "REGISTRY_GATEWAY_TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DESCRIBE = SERVICE + "DescribeRegistry"
POLICY = SERVICE + "GetRegistryPolicy"
READS = {"describe": DESCRIBE, "policy": POLICY}
NAMES = {"describe": "DescribeRegistry", "policy": "GetRegistryPolicy"}
POLICY_TEXT = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReplicateFromPartner",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                "Action": ["ecr:CreateRepository", "ecr:ReplicateImage"],
                "Resource": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/*",
            }
        ],
    }
)


@dataclass(frozen=True)
class Plan:
    """How much of everything one run does."""

    name: str
    rounds: int  # baseline/cached rounds, interleaved; medians reported
    read_calls: int  # per baseline or cached run
    warmup: int
    cold_calls: int  # per direct-AWS or cold-gateway run
    cold_concurrency: tuple[int, ...]
    storm_calls: int
    storm_rounds: int
    storm_hold_ms: int
    sequential_writes: int
    writers: int
    contended_attempts: int  # per writer
    scale_calls: int
    read_concurrency: int = 50
    client_processes: int = 2
    channels_per_process: int = 2


QUICK = Plan(
    name="quick",
    rounds=1,
    read_calls=4000,
    warmup=400,
    cold_calls=120,
    cold_concurrency=(1, 8),
    storm_calls=1000,
    storm_rounds=1,
    storm_hold_ms=1000,
    sequential_writes=15,
    writers=4,
    contended_attempts=6,
    scale_calls=4000,
)
FULL = Plan(
    name="full",
    rounds=3,
    read_calls=20000,
    warmup=1000,
    cold_calls=500,
    cold_concurrency=(1, 8),
    storm_calls=1000,
    storm_rounds=3,
    storm_hold_ms=1000,
    sequential_writes=60,
    writers=4,
    contended_attempts=25,
    scale_calls=20000,
)


@dataclass
class Loaded:
    """What one timed load measured."""

    m: Measurement
    upstream: dict[str, int]  # upstream calls made during the timed part, by operation
    watched: dict[int, float]  # CPU seconds of other watched processes
    cores: list[float]  # each core's busy share (by anyone) during the timed part
    results: list[JobResult]


@dataclass
class Row:
    """One line of the results table."""

    key: str
    group: str
    title: str
    concurrency: int
    m: Measurement
    setup: str  # processes, channels, pinning
    upstream: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def client_bound(self) -> bool:
        """The server was not kept busy: calls/s is not the server's limit."""
        return self.m.server_busy < SERVER_BOUND_BUSY

    @property
    def bound(self) -> str:
        """What limited calls/s: `server`, `client` (the load generator's core was full),
        `other work` (the server's core was full, but not with the server), or `latency`
        (nothing was full: the calls waited, e.g. on AWS)."""
        if not self.client_bound:
            return "server"
        cores = self.extra.get("core_busy") or []
        pinned = "cpu0" in self.setup and len(cores) >= 2
        if pinned and cores[1] >= SERVER_BOUND_BUSY:
            return "client"
        if pinned and cores[0] >= SERVER_BOUND_BUSY:
            return "other work"
        if not pinned and cores and min(cores) >= SERVER_BOUND_BUSY:
            return "client"
        return "latency"

    def to_json(self) -> dict[str, Any]:
        """A plain dict for results JSON."""
        return {
            "key": self.key,
            "group": self.group,
            "title": self.title,
            "concurrency": self.concurrency,
            "setup": self.setup,
            "client_bound": self.client_bound,
            "bound": self.bound,
            **self.m.to_json(),
            "upstream": self.upstream,
            "notes": self.notes,
            "extra": self.extra,
        }


@dataclass
class Verdict:
    """A target (performance) or a check (correctness), met or not."""

    name: str
    ok: bool
    value: str
    goal: str
    kind: str  # target | check

    def to_json(self) -> dict[str, Any]:
        """A plain dict for results JSON."""
        return {
            "name": self.name,
            "ok": self.ok,
            "value": self.value,
            "goal": self.goal,
            "kind": self.kind,
        }


def _ecr(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return _ecr({k: after.get(k, 0) - before.get(k, 0) for k in after})


def _gateway_config(
    proxy_url: str, key: str, *, backend: str = "memory", redis_url: str = "", prefix: str = ""
) -> dict[str, Any]:
    cache: dict[str, Any] = {
        "backend": backend,
        # Long enough that every cached-read run is all hits.
        "ttl_seconds": 3600,
        "negative_ttl_seconds": 3600,
        "max_stale_seconds": 300,
    }
    if backend == "redis":
        cache.update(redis_url=redis_url, key_prefix=prefix)
    return {
        "listen": "127.0.0.1:0",
        # A storm of 1,000 concurrent calls must not meet the default limit of 1,000.
        "server": {"max_concurrent_rpcs": 4096, "drain_seconds": 0, "grace_seconds": 2},
        "aws": {"region": REGION, "endpoint_url": proxy_url, "max_attempts": 2},
        "cache": cache,
        "tenants": [
            {
                "name": "bench",
                "api_keys": [_hash_key(key)],
                "registries": [
                    {
                        "registry_id": ACCOUNT,
                        "regions": [REGION, REPLICA_REGION, *STORM_REGIONS],
                        "operations": [
                            "DescribeRegistry",
                            "GetRegistryPolicy",
                            "PutRegistryPolicy",
                            "DeleteRegistryPolicy",
                            "PutReplicationConfiguration",
                        ],
                        "replication_destinations": [
                            {"registry_id": ACCOUNT, "regions": [REPLICA_REGION]}
                        ],
                    }
                ],
            }
        ],
    }


def _hash_key(key: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class Run:
    """One benchmark run: its processes, its rows, its verdicts."""

    def __init__(
        self,
        plan: Plan,
        *,
        pin: bool = True,
        only: set[str] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.plan = plan
        self.pin = pin
        self.only = only
        self.log = log
        self.rows: list[Row] = []
        self.verdicts: list[Verdict] = []
        self.key = uuid.uuid4().hex
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {self.key}"),)
        self.scratch = SCRATCH / time.strftime("%Y%m%d-%H%M%S")
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._stack = contextlib.ExitStack()
        self.aws: AwsStandIn
        self.gateway: ServerProcess
        self.bare: ServerProcess | None = None
        self.pool: LoadPool
        self.redis_url = (
            os.environ.get(REDIS_URL_ENV) or os.environ.get(TEST_REDIS_URL_ENV) or DEFAULT_REDIS_URL
        )
        self.redis_prefix = f"registry-gateway-bench:{self.key[:12]}:"
        self.started = time.time()

    # ---- set-up -------------------------------------------------------------------------

    def _wants(self, group: str) -> bool:
        return self.only is None or group in self.only

    def _cpus(self, cpus: set[int]) -> set[int] | None:
        return cpus if self.pin else None

    def _taskset(self, cpus: set[int]) -> str | None:
        return ",".join(map(str, sorted(cpus))) if self.pin else None

    def _setup(self, pinning: bool = True) -> str:
        p = self.plan
        where = (
            "server cpu0, clients cpu1" if self.pin and pinning else "unpinned (both cores shared)"
        )
        return f"{p.client_processes} client procs x {p.channels_per_process} channels; {where}"

    def start(self) -> None:
        """The stand-in, the gateway under test and the client processes."""
        self.log(f"scratch: {self.scratch.relative_to(ROOT)}")
        # Client processes first: they spawn while the servers import.
        self.pool = LoadPool(self.plan.client_processes, self._cpus(CLIENT_CPUS))
        self._stack.callback(self.pool.close)
        self.aws = AwsStandIn(self._taskset(CLIENT_CPUS), self.scratch / "aws.log").start()
        self._stack.callback(self.aws.stop)
        self._seed()
        self.gateway = self._start_gateway("gateway", _gateway_config(self.aws.proxy_url, self.key))

    def _start_gateway(
        self,
        name: str,
        config: dict[str, Any],
        *extra: str,
        cpus: set[int] | None = SERVER_CPUS,
        ready_lines: int = 1,
        wait: bool = True,
    ) -> ServerProcess:
        path = self.scratch / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        command = [str(BIN / "registry-gateway"), "serve", "--config", str(path), *extra]
        server = ServerProcess(
            name,
            pinned(command, self._taskset(cpus) if cpus else None),
            self.scratch / f"{name}.log",
            ready_lines=ready_lines,
        )
        self._stack.callback(server.stop)
        if wait:
            server.start()
        return server

    def _seed(self) -> None:
        """A registry policy and a replication configuration in the stand-in."""
        ecr = boto3.client(
            "ecr",
            region_name=REGION,
            endpoint_url=self.aws.moto_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - moto's placeholder
        )
        ecr.put_registry_policy(policyText=POLICY_TEXT)
        ecr.put_replication_configuration(
            replicationConfiguration={
                "rules": [
                    {
                        "destinations": [{"region": REPLICA_REGION, "registryId": ACCOUNT}],
                        "repositoryFilters": [{"filter": "prod", "filterType": "PREFIX_MATCH"}],
                    }
                ]
            }
        )

    def _moto_replication_filter(self) -> str:
        ecr = boto3.client(
            "ecr",
            region_name=REGION,
            endpoint_url=self.aws.moto_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - moto's placeholder
        )
        rules = ecr.describe_registry()["replicationConfiguration"]["rules"]
        return str(rules[0]["repositoryFilters"][0]["filter"])

    def _call(self, address: str, method: str, request: bytes = b"") -> bytes:
        """One call from this process (sync API), for set-up and checks."""
        with grpc.insecure_channel(address) as channel:
            stub: Any = channel.unary_unary(
                method, request_serializer=None, response_deserializer=None
            )
            answer: bytes = stub(request, metadata=self.metadata, timeout=30)
        return answer

    def start_bare(self, layers: str = "") -> ServerProcess:
        """The baseline server (with `layers` of the gateway wrapper's gRPC work, if any),
        answering the responses the gateway gave for the two reads."""
        path = self.scratch / "bare-responses.json"
        if not path.exists():
            responses = {
                "DescribeRegistry": self._call(self.gateway.address, DESCRIBE).hex(),
                "GetRegistryPolicy": self._call(self.gateway.address, POLICY).hex(),
            }
            path.write_text(json.dumps(responses))
            self.response_sizes = {k: len(v) // 2 for k, v in responses.items()}
        name = f"bare-{layers.replace(',', '+')}" if layers else "bare"
        server = ServerProcess(
            name,
            pinned(
                [str(BIN / "python"), "-m", "bench.bare_server", str(path), layers],
                self._taskset(SERVER_CPUS),
            ),
            self.scratch / f"{name}.log",
        )
        self._stack.callback(server.stop)
        return server.start()

    def close(self) -> None:
        """Stop everything started, in reverse order; drop this run's Redis keys."""
        self._stack.close()
        self._clean_redis()

    # ---- one load -----------------------------------------------------------------------

    def load(self, jobs: list[Job], servers: list[int], watch: list[int] | None = None) -> Loaded:
        """Run jobs; the server CPU is that of `servers` (pids) during the timed part only.

        Upstream calls, core usage and the CPU of `watch` (the stand-in, Redis) are read
        at the same two moments.
        """
        pids = [*servers, *(watch or [])]
        before: dict[int, float] = {}
        after: dict[int, float] = {}
        marks: dict[str, Any] = {}

        def ready() -> None:
            marks["upstream"] = self._upstream()
            marks["cores"] = core_times()
            for pid in pids:
                before[pid] = cpu_seconds(pid)

        def done() -> None:
            for pid in pids:
                after[pid] = cpu_seconds(pid)
            marks["cores"] = core_busy(marks["cores"], core_times())
            marks["upstream"] = _delta(self._upstream(), marks["upstream"])

        results: list[JobResult] = self.pool.run(jobs, ready, done)
        server_cpu = sum(after[p] - before[p] for p in servers)
        return Loaded(
            measure(results, server_cpu),
            marks["upstream"],
            {pid: after[pid] - before[pid] for pid in watch or []},
            [round(c, 3) for c in marks["cores"]],
            results,
        )

    def unary_jobs(
        self,
        targets: tuple[str, ...],
        method: str,
        calls: int,
        concurrency: int,
        *,
        processes: int | None = None,
        channels: int | None = None,
        request: bytes = b"",
        metadata: tuple[tuple[str, str], ...] | None = None,
        warmup: int = 0,
        trailers: bool = False,
        burst: bool = False,
    ) -> list[Job]:
        n = processes or self.plan.client_processes
        return [
            UnaryJob(
                targets=targets,
                method=method,
                request=request,
                metadata=metadata or self.metadata,
                calls=c,
                concurrency=max(1, k),
                channels=channels or self.plan.channels_per_process,
                warmup=w,
                trailers=trailers,
                burst=burst,
            )
            for c, k, w in zip(
                split(calls, n), split(concurrency, n), split(warmup, n), strict=True
            )
        ]

    def _upstream(self) -> dict[str, int]:
        return self.aws.control("counts")

    def _add(self, row: Row) -> Row:
        self.rows.append(row)
        m = row.m
        bound = f"  ({row.bound}-bound)" if row.client_bound else ""
        self.log(
            f"  {row.title:<52} {m.calls_per_s:9.0f} calls/s  p50 {m.p50_ms:7.2f}  "
            f"p99 {m.p99_ms:7.2f} ms  cpu {m.server_cpu_per_1k:6.3f} s/1k  "
            f"busy {m.server_busy:4.0%}{bound}"
        )
        return row

    # ---- scenarios ----------------------------------------------------------------------

    def reads(self) -> None:
        """Baseline and cached reads, rounds interleaved; targets checked on the medians."""
        p = self.plan
        self.log(
            f"reads: baseline vs gateway hits, {p.read_concurrency} concurrent, "
            f"{p.read_calls} calls x {p.rounds} rounds"
        )
        self.bare = self.start_bare()
        loads: dict[str, list[Loaded]] = {}
        servers = {"baseline": self.bare, "cached": self.gateway}
        for _ in range(p.rounds):
            for rpc, method in READS.items():
                for kind, server in servers.items():
                    jobs = self.unary_jobs(
                        (server.address,), method, p.read_calls, p.read_concurrency, warmup=p.warmup
                    )
                    loads.setdefault(f"{kind}.{rpc}", []).append(self.load(jobs, [server.pid]))
        titles = {
            "baseline": "baseline: bare grpc.aio, {rpc}",
            "cached": "cached read: gateway hit, {rpc}",
        }
        for rpc in READS:
            for kind in servers:
                key = f"{kind}.{rpc}"
                row = self._row_of(
                    key, kind, titles[kind].format(rpc=NAMES[rpc]), p.read_concurrency, loads[key]
                )
                row.extra["response_bytes"] = self.response_sizes[NAMES[rpc]]
                self._add(row)
            base, cached = self._row(f"baseline.{rpc}"), self._row(f"cached.{rpc}")
            cached.extra.update(
                calls_per_s_vs_baseline=round(cached.m.calls_per_s / base.m.calls_per_s, 3),
                cpu_per_call_vs_baseline=round(
                    cached.m.server_cpu_per_1k / base.m.server_cpu_per_1k, 3
                ),
                p99_vs_baseline=round(cached.m.p99_ms / base.m.p99_ms, 3),
            )
            self._reads_verdicts(NAMES[rpc], base, cached)
        self.bare.stop()

    def _row_of(
        self,
        key: str,
        group: str,
        title: str,
        concurrency: int,
        loads: list[Loaded],
        setup: str | None = None,
    ) -> Row:
        """A row from one or more rounds (medians), upstream calls summed over rounds."""
        upstream: dict[str, int] = {}
        for load in loads:
            for op, n in load.upstream.items():
                upstream[op] = upstream.get(op, 0) + n
        cores = [
            round(statistics.median(load.cores[i] for load in loads), 3)
            for i in range(len(loads[0].cores))
        ]
        return Row(
            key,
            group,
            title,
            concurrency,
            median_of([load.m for load in loads]),
            setup or self._setup(),
            upstream=upstream,
            extra={"core_busy": cores},
        )

    def _reads_verdicts(self, name: str, base: Row, cached: Row) -> None:
        x = cached.extra
        both_client_bound = base.client_bound and cached.client_bound
        self.verdicts += [
            Verdict(
                f"{name} hits: calls/s vs baseline",
                x["calls_per_s_vs_baseline"] >= 0.8,
                f"{x['calls_per_s_vs_baseline']:.2f}x"
                + (" (server not saturated in either)" if both_client_bound else ""),
                ">= 0.80x",
                "target",
            ),
            Verdict(
                f"{name} hits: server CPU per call vs baseline",
                x["cpu_per_call_vs_baseline"] <= 1.25,
                f"{x['cpu_per_call_vs_baseline']:.2f}x ({cached.m.server_cpu_per_1k * 1000:.0f} "
                f"vs {base.m.server_cpu_per_1k * 1000:.0f} us)",
                "<= 1.25x",
                "target",
            ),
            Verdict(
                f"{name} hits: p99 at {self.plan.read_concurrency} concurrent vs baseline",
                x["p99_vs_baseline"] <= 2.0,
                f"{x['p99_vs_baseline']:.2f}x ({cached.m.p99_ms:.2f} vs {base.m.p99_ms:.2f} ms)",
                "<= 2.00x",
                "target",
            ),
            Verdict(
                f"{name} hits: all answered OK, no upstream call",
                set(cached.m.codes) == {"OK"} and not cached.upstream,
                f"codes {cached.m.codes}, upstream {cached.upstream or 0}",
                "all OK, 0 upstream",
                "check",
            ),
        ]

    def _row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)

    def direct_and_cold(self) -> None:
        """aioboto3 straight to the stand-in vs the gateway cold (no-cache) and warm."""
        p = self.plan
        self.log(f"direct AWS vs gateway cold/warm, {p.cold_calls} calls each")
        no_cache = (*self.metadata, ("cache-control", "no-cache"))
        warmup = min(20, p.cold_calls)
        for concurrency in p.cold_concurrency:
            job = AwsJob(
                endpoint_url=self.aws.proxy_url,
                region=REGION,
                operation="describe_registry",
                calls=p.cold_calls,
                concurrency=concurrency,
                warmup=warmup,
            )
            row = self._row_of(
                f"direct.describe.c{concurrency}",
                "direct",
                f"direct AWS: aioboto3 -> stand-in, c={concurrency}",
                concurrency,
                [self.load([job], [self.aws.pid])],
                "1 client proc, one aioboto3 client; client + stand-in "
                + ("cpu1" if self.pin else "unpinned"),
            )
            row.notes.append("server CPU = the AWS stand-in (moto + proxy), not a gateway")
            self._add(row)
            for kind, metadata in (("cold", no_cache), ("warm", self.metadata)):
                jobs = self.unary_jobs(
                    (self.gateway.address,),
                    DESCRIBE,
                    p.cold_calls,
                    concurrency,
                    processes=1,
                    channels=1,
                    metadata=metadata,
                    warmup=warmup,
                )
                load = self.load(jobs, [self.gateway.pid], watch=[self.aws.pid])
                title = "gateway cold: no-cache" if kind == "cold" else "gateway warm: cache hit"
                row = self._row_of(
                    f"{kind}.describe.c{concurrency}",
                    kind,
                    f"{title}, c={concurrency}",
                    concurrency,
                    [load],
                    f"1 client proc x 1 channel; {self._where()}",
                )
                row.extra["stand_in_cpu_s"] = round(load.watched[self.aws.pid], 3)
                if kind == "cold":
                    row.notes.append(
                        "`cache-control: no-cache` on every call; concurrent misses of one key "
                        "share one upstream call (single flight)"
                    )
                self._add(row)

    def _where(self) -> str:
        return "gateway cpu0, client + stand-in cpu1" if self.pin else "unpinned"

    def storm(self) -> None:
        """N concurrent reads of a cold key while the stand-in holds the upstream call."""
        p = self.plan
        self.log(
            f"cold storm: {p.storm_calls} concurrent calls of one cold key x {p.storm_rounds}, "
            f"upstream held {p.storm_hold_ms} ms"
        )
        loads = []
        for region in STORM_REGIONS[: p.storm_rounds]:
            jobs = self.unary_jobs(
                (self.gateway.address,),
                DESCRIBE,
                p.storm_calls,
                p.storm_calls,
                request=pb.DescribeRegistryRequest(region=region).SerializeToString(),
                trailers=True,
                burst=True,
            )
            self.aws.control(f"hold?op=ecr:DescribeRegistry&ms={p.storm_hold_ms}")
            try:
                loads.append(self.load(jobs, [self.gateway.pid]))
            finally:
                self.aws.control("hold?op=ecr:DescribeRegistry&ms=0")
        per_round = [load.upstream.get("ecr:DescribeRegistry", 0) for load in loads]
        row = self._row_of(
            "storm.describe",
            "storm",
            f"cold storm: {p.storm_calls} concurrent, one cold key",
            p.storm_calls,
            loads,
        )
        row.notes += [
            f"the stand-in holds ecr:DescribeRegistry {p.storm_hold_ms} ms, so every call is "
            "in flight before the first answer; latency includes the hold",
            "sts:GetCallerIdentity: the first use of a region verifies the account",
        ]
        row.extra.update(ecr_describe_calls_per_round=per_round, x_cache=row.m.cache)
        self._add(row)
        self.verdicts.append(
            Verdict(
                f"cold storm of {p.storm_calls}: upstream DescribeRegistry calls per round",
                all(n == 1 for n in per_round) and set(row.m.codes) == {"OK"},
                f"{per_round}, codes {row.m.codes}, x-cache {row.m.cache}",
                "exactly 1 each, all OK",
                "target",
            )
        )

    def writes(self) -> None:
        """PutReplicationConfiguration with etag: one writer, then several contending."""
        p = self.plan
        self.log("writes: PutReplicationConfiguration with etag")
        for kind, writers, attempts in (
            ("sequential", 1, p.sequential_writes),
            ("contended", p.writers, p.contended_attempts),
        ):
            first = pb.DescribeRegistryResponse.FromString(
                self._call(self.gateway.address, DESCRIBE)
            ).etag
            processes = 1 if writers == 1 else min(self.plan.client_processes, writers)
            per_proc = split(writers, processes)
            jobs: list[Job] = [
                WriteJob(
                    targets=(self.gateway.address,),
                    metadata=self.metadata,
                    writers=count,
                    attempts=attempts,
                    first_writer=sum(per_proc[:i]),
                    registry_id=ACCOUNT,
                    destination_region=REPLICA_REGION,
                    label=f"{kind[:3]}{self.key[:4]}",
                )
                for i, count in enumerate(per_proc)
            ]
            load = self.load(jobs, [self.gateway.pid])
            successes = [w for r in load.results for w in r.writes]
            ok, detail = self._check_writes(first, successes)
            row = self._row_of(
                f"writes.{kind}",
                "writes",
                f"writes {kind}: {writers} writer{'s' * (writers > 1)} x {attempts}",
                writers,
                [load],
                f"{processes} client proc(s); {self._where()}",
            )
            m = row.m
            row.notes.append(
                "calls/s counts attempts (each after a read of the etag); latency is of the "
                "write call only"
            )
            row.extra.update(
                successful_writes=len(successes),
                aborted=m.codes.get("ABORTED", 0),
                writes_per_s=round(len(successes) / m.seconds, 2),
                final_state=detail,
            )
            self._add(row)
            unexpected = {c: n for c, n in m.codes.items() if c not in ("OK", "ABORTED")}
            self.verdicts.append(
                Verdict(
                    f"writes {kind}: final state and etag chain",
                    ok and not unexpected,
                    f"{len(successes)} ok, {m.codes.get('ABORTED', 0)} ABORTED"
                    + (f", unexpected {unexpected}" if unexpected else "")
                    + f"; {detail}",
                    "one unbroken etag chain; gateway and AWS hold the last write",
                    "check",
                )
            )

    def _check_writes(self, first: str, successes: list[tuple[str, str, str]]) -> tuple[bool, str]:
        """Every success used the etag the previous one answered, and the last one stuck."""
        if not successes:
            return False, "no write succeeded"
        following = {before: (after, label) for before, after, label in successes}
        if len(following) != len(successes):
            return False, "two writes succeeded from the same etag (a lost update)"
        etag, chain = first, 0
        label = ""
        while etag in following:
            etag, label = following[etag]
            chain += 1
        if chain != len(successes):
            return False, f"the etag chain covers {chain} of {len(successes)} writes"
        gateway = pb.DescribeRegistryResponse.FromString(self._call(self.gateway.address, DESCRIBE))
        gw_filter = gateway.replication_configuration.rules[0].repository_filters[0].filter
        aws_filter = self._moto_replication_filter()
        ok = gateway.etag == etag and gw_filter == label and aws_filter == label
        return ok, (
            f"chain of {chain}; last write {label!r}; gateway reads {gw_filter!r}"
            f"{' (etag matches)' if gateway.etag == etag else ' (etag differs)'}; "
            f"AWS holds {aws_filter!r}"
        )

    def scale(self) -> None:
        """--workers 1 vs 2 (unpinned), Redis vs memory, two replicas on Redis."""
        p = self.plan
        redis_ok = self._redis_ready()
        self.log(f"scale-out: {p.scale_calls} DescribeRegistry hits per run")
        port = free_port()
        w2 = self._start_gateway(
            "gateway-workers2",
            {**_gateway_config(self.aws.proxy_url, self.key), "listen": f"127.0.0.1:{port}"},
            "--workers",
            "2",
            cpus=None,
            ready_lines=2,
        )
        replicas: list[ServerProcess] = []
        if redis_ok:
            config = _gateway_config(
                self.aws.proxy_url,
                self.key,
                backend="redis",
                redis_url=self.redis_url,
                prefix=self.redis_prefix,
            )
            replicas = [
                self._start_gateway(f"gateway-redis-{i}", config, cpus=SERVER_CPUS)
                for i in range(2)
            ]
        redis_pid = self._redis_pid() if redis_ok else None
        channels = 4
        setups = [
            ("scale.memory.workers1", "memory, --workers 1", [self.gateway], False),
            ("scale.memory.workers2", "memory, --workers 2", [w2], False),
        ]
        if replicas:
            setups += [
                ("scale.redis.replica1", "Redis, 1 replica", replicas[:1], True),
                ("scale.redis.replicas2", "Redis, 2 replicas", replicas, False),
            ]
        # Every run unpinned but "Redis, 1 replica", which compares with the pinned
        # memory hits of the reads scenario (same pinning, same concurrency).
        for key, title, servers, keep_pinned in setups:
            pin = keep_pinned and self.pin
            for server in servers:
                set_affinity(server.pid, SERVER_CPUS if pin else ALL_CPUS)
            for pid in self.pool.pids:
                set_affinity(pid, CLIENT_CPUS if pin else ALL_CPUS)
            targets = tuple(
                f"127.0.0.1:{port}" if server is w2 else server.address for server in servers
            )
            jobs = self.unary_jobs(
                targets,
                DESCRIBE,
                p.scale_calls,
                p.read_concurrency,
                channels=channels,
                warmup=p.warmup,
            )
            uses_redis = key.startswith("scale.redis")
            watch = [redis_pid] if redis_pid and uses_redis else None
            load = self.load(jobs, [s.pid for s in servers], watch=watch)
            row = self._row_of(
                key,
                "scale",
                f"scale-out: {title}",
                p.read_concurrency,
                [load],
                f"{p.client_processes} client procs x {channels} channels; "
                + ("server cpu0, clients cpu1" if pin else "unpinned"),
            )
            if watch and redis_pid:
                row.extra["redis_cpu_s_per_1k"] = round(
                    load.watched[redis_pid] * 1000 / max(row.m.calls, 1), 4
                )
            self._add(row)
        # Back as they were, for anything that runs after.
        set_affinity(self.gateway.pid, SERVER_CPUS if self.pin else ALL_CPUS)
        for pid in self.pool.pids:
            set_affinity(pid, CLIENT_CPUS if self.pin else ALL_CPUS)
        w2.stop()
        for replica in replicas:
            replica.stop()
        if not replicas:
            self.verdicts.append(
                Verdict(
                    "scale-out on Redis",
                    False,
                    f"skipped: no Redis answers at {self.redis_url} (set {REDIS_URL_ENV})",
                    "measured",
                    "check",
                )
            )

    def ablation(self) -> None:
        """What each piece of the wrapper's gRPC-level work costs, beside the whole gateway.

        Server CPU per call of the bare server with one layer added at a time (see
        bench/bare_server.py), interleaved rounds; both the median and the least-disturbed
        (minimum) round are kept, since other work on the machine only ever adds.
        """
        p = self.plan
        variants = [
            ("", "bare grpc.aio (baseline)"),
            ("wrap", "+ one wrapping interceptor"),
            ("wrap,trailers", "+ interceptor, 2 trailers (uuid4 request id, x-cache)"),
            ("wrap,timeout", "+ interceptor, asyncio.timeout around the handler"),
            ("wrap,context", "+ interceptor, reads metadata, deadline, auth context"),
            ("wrap,trailers,timeout,context", "+ interceptor, all three"),
        ]
        self.log(f"ablation: {len(variants) + 1} servers x {p.rounds + 1} rounds")
        servers = [(layers, title, self.start_bare(layers)) for layers, title in variants]
        servers.append(("gateway", "the gateway (cached hit)", self.gateway))
        loads: dict[str, list[Loaded]] = {}
        for _ in range(p.rounds + 1):
            for layers, _title, server in servers:
                jobs = self.unary_jobs(
                    (server.address,),
                    DESCRIBE,
                    p.read_calls // 2,
                    p.read_concurrency,
                    warmup=p.warmup,
                )
                loads.setdefault(layers, []).append(self.load(jobs, [server.pid]))
        base = min(load.m.server_cpu_per_1k for load in loads[""])
        for layers, title, server in servers:
            row = self._row_of(
                f"ablation.{layers.replace(',', '+') or 'bare'}",
                "ablation",
                f"ablation: {title}",
                p.read_concurrency,
                loads[layers],
            )
            least = min(load.m.server_cpu_per_1k for load in loads[layers])
            row.extra.update(
                server_cpu_per_1k_min=round(least, 4),
                min_vs_bare_min=round(least / base, 3),
                added_us_per_call_min=round((least - base) * 1000, 1),
            )
            self._add(row)
            if server is not self.gateway:
                server.stop()

    def _redis_ready(self) -> bool:
        try:
            client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2)
            client.ping()
            client.close()
        except (redis.RedisError, OSError):
            return False
        return True

    def _redis_pid(self) -> int | None:
        try:
            client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2)
            info = client.info("server")
            client.close()
            pid = int(info.get("process_id", 0))
        except (redis.RedisError, OSError, ValueError):
            return None
        return pid if pid and cpu_seconds(pid) > 0 else None

    def _clean_redis(self) -> None:
        # Only this run's keys: the Redis may be shared (no FLUSHDB).
        with contextlib.suppress(redis.RedisError, OSError):
            client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2)
            keys = list(client.scan_iter(match=f"{self.redis_prefix}*", count=500))
            if keys:
                client.delete(*keys)
            client.close()

    # ---- the whole run ------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        """Every scenario asked for; the results document."""
        self.start()
        steps = [
            ("reads", self.reads),
            ("cold", self.direct_and_cold),
            ("storm", self.storm),
            ("writes", self.writes),
            ("scale", self.scale),
            # Not in a quick run unless asked for by name: it is for explaining, not checking.
            ("ablation", self.ablation),
        ]
        for name, step in steps:
            if name == "ablation" and self.only is None and self.plan.name == "quick":
                continue
            if self._wants(name):
                step()
        return self.document()

    def document(self) -> dict[str, Any]:
        """The results as written to bench/results/*.json."""
        return {
            "schema": 1,
            "mode": self.plan.name,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "duration_s": round(time.time() - self.started, 1),
            "machine": machine.describe(self.redis_url),
            "setup": {
                "pinned": self.pin,
                "server_cpus": sorted(SERVER_CPUS) if self.pin else None,
                "client_cpus": sorted(CLIENT_CPUS) if self.pin else None,
                "client_processes": self.plan.client_processes,
                "channels_per_process": self.plan.channels_per_process,
                "plan": self.plan.__dict__,
                "client_bound_below_busy": SERVER_BOUND_BUSY,
            },
            "rows": [r.to_json() for r in self.rows],
            "verdicts": [v.to_json() for v in self.verdicts],
        }


@contextlib.contextmanager
def running(plan: Plan, **kwargs: Any) -> Iterator[Run]:
    """A Run whose processes are stopped however it ends."""
    run = Run(plan, **kwargs)
    try:
        yield run
    finally:
        run.close()
