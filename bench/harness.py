"""The benchmark run: starts the servers, drives every scenario, checks targets and invariants.

Scenarios (one run, so the ratios compare like with like on this shared, noisy machine):

1. baseline: a bare grpc.aio server answering same-sized responses from memory;
2. cached read: DescribeRegistry / GetRegistryPolicy hits through the full gateway
   (rounds interleaved with the baseline's, medians reported); and DescribeRegistry hits
   of the same gateway over HTTP/1.1 + JSON (Connect), in the same rounds: a figure beside
   the gRPC one, not a target;
3. direct AWS (aioboto3, one long-lived client, to the stand-in) beside the gateway on a
   cold cache (`cache-control: no-cache`) and on a warm one, at the same concurrency;
4. cold storm: N concurrent reads of one never-read key while the stand-in holds the
   upstream call; the upstream calls made must be exactly 1;
5. writes: PutReplicationConfiguration with etag, one writer and several contending;
   ABORTED counted, the final state and the chain of etags checked;
6. scale-out: --workers 1 vs 2, one and two replicas on Redis, Redis vs memory per call;
7. ablation: the bare server plus one piece of the wrapper's gRPC-level work at a time;
8. bystander under attack: one tenant's cached reads at a steady rate, alone and while one
   connection sends max-size messages the gateway must refuse (undecodable bytes without
   credentials, unknown-field floods with another tenant's); the ratio of their p99s;
9. bystander under edge attacks (bench/edge_attacks.py): the same reads over gRPC and HTTP
   while the listeners themselves are attacked: endless bodies, a JSON body of many empty
   elements, idle and slowloris connections, gRPC streams that never send their message.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import statistics
import subprocess
import tarfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3  # type: ignore[import-untyped]  # no stubs; aioboto3's botocore pin
import grpc
import redis
import yaml

from bench import machine
from bench.common import (
    ACCOUNT,
    ALL_CPUS,
    ATTACK_P99_GOAL,
    ATTACKER_NICE,
    CLIENT_CPUS,
    DEFAULT_REDIS_URL,
    DESCRIBE,
    EDGE_SCENARIOS,
    MANY_ACCOUNTS,
    MANY_TEAMS,
    NAMES,
    POLICY,
    POLICY_TEXT,
    PUT_REPLICATION,
    READS,
    REDIS_URL_ENV,
    REGION,
    REPLICA_REGION,
    ROOT,
    SCRATCH,
    SELF_CONTAINED,
    SERVER_CPUS,
    STORM_REGIONS,
    TEST_REDIS_URL_ENV,
    Loaded,
    Plan,
    Row,
    Verdict,
    _all_hits,
    _attack_config,
    _codes_and_cache,
    _delta,
    _gateway_config,
    attacker_summary,
    max_message_bytes,
    serves_http,
)
from bench.loadgen import (
    SERVICE,
    AttackJob,
    AwsJob,
    HttpJob,
    Job,
    LoadPool,
    UnaryJob,
    WriteJob,
    run_together,
    split,
)
from bench.processes import (
    BIN,
    AwsStandIn,
    ServerProcess,
    clean_env,
    core_busy,
    core_times,
    cpu_seconds,
    free_port,
    pinned,
    set_affinity,
)
from bench.stats import SERVER_BOUND_BUSY, measure, median_of
from service.gen.v1 import registry_pb2 as pb


class Run:
    """One benchmark run: its processes, its rows, its verdicts."""

    def __init__(
        self,
        plan: Plan,
        *,
        pin: bool = True,
        only: set[str] | None = None,
        gateway_rev: str | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.plan = plan
        self.pin = pin
        self.only = only
        self.gateway_rev = gateway_rev
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
        # Whether the shared gateway serves HTTP (Connect) too: for the reads scenario's
        # row over it, when the gateway's code has the listener.
        self.http = False
        self.pool: LoadPool
        self.redis_url = (
            os.environ.get(REDIS_URL_ENV) or os.environ.get(TEST_REDIS_URL_ENV) or DEFAULT_REDIS_URL
        )
        self.redis_prefix = f"registry-gateway-bench:{self.key[:12]}:"
        self.started = time.time()
        self.scenarios: list[str] = []  # the steps run, in order
        # Where the gateway processes' `service` package comes from: this tree, or an
        # export of another commit's service/ (--gateway-rev), first on their PYTHONPATH.
        self.gateway_source: dict[str, str] | None = None
        self._gateway_env = clean_env()

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
        if self.gateway_rev:
            self._export_gateway(self.gateway_rev)
        # Client processes first: they spawn while the servers import.
        self.pool = LoadPool(self.plan.client_processes, self._cpus(CLIENT_CPUS))
        self._stack.callback(self.pool.close)
        self.aws = AwsStandIn(self._taskset(CLIENT_CPUS), self.scratch / "aws.log").start()
        self._stack.callback(self.aws.stop)
        self._seed()
        # The attack scenario starts a gateway of its own: alone, it needs no shared one.
        if self.only is None or not self.only or self.only - SELF_CONTAINED:
            self.http = self._wants("reads") and (
                self.gateway_rev is None or serves_http(self._gateway_env)
            )
            if self._wants("reads") and not self.http:
                self.log("the gateway has no HTTP listener: no Connect+JSON row")
            self.gateway = self._start_gateway(
                "gateway", _gateway_config(self.aws.proxy_url, self.key, http=self.http)
            )

    def _export_gateway(self, rev: str) -> None:
        """`git archive REV service` (read-only: no ref, index or work tree changes) into
        the scratch directory, for the gateway processes to import instead of this tree's.
        The generated client package (`ecr`) still comes from this tree."""
        commit = subprocess.run(
            ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit, "service"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        target = self.scratch / "gateway-src"
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
        self.gateway_source = {"rev": rev, "commit": commit[:12], "path": str(target)}
        self._gateway_env = clean_env({"PYTHONPATH": str(target)})
        self.log(f"gateway processes run service/ of {rev} ({commit[:12]}), not this tree's")

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
            env=dict(self._gateway_env),
            http="http" in config,
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

    def _http_call(self, address: str, rpc: str, body: bytes = b"{}") -> bytes:
        """One Connect call from this process (urllib), for set-up: the answer's body."""
        request = urllib.request.Request(
            f"http://{address}{SERVICE}{rpc}",
            data=body,
            headers={"content-type": "application/json", **dict(self.metadata)},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - loopback
            data: bytes = answer.read()
        return data

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

    def load(
        self,
        jobs: list[Job],
        servers: list[int],
        watch: list[int] | None = None,
        beside: tuple[LoadPool, list[Job]] | None = None,
    ) -> Loaded:
        """Run jobs; the server CPU is that of `servers` (pids) during the timed part only.

        Upstream calls, core usage and the CPU of `watch` (the stand-in, Redis) are read
        at the same two moments. `beside`: jobs in another pool, started with these and
        waited for, whose results are kept apart (Loaded.beside), not measured.
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

        groups: list[tuple[LoadPool, list[Job]]] = [(self.pool, jobs)]
        if beside is not None:
            groups.append(beside)
        results, *others = run_together(groups, ready, done)
        server_cpu = sum(after[p] - before[p] for p in servers)
        return Loaded(
            measure(results, server_cpu),
            marks["upstream"],
            {pid: after[pid] - before[pid] for pid in watch or []},
            [round(c, 3) for c in marks["cores"]],
            results,
            [r for group in others for r in group],
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

    def http_jobs(
        self, address: str, rpc: str, calls: int, concurrency: int, *, warmup: int = 0
    ) -> list[Job]:
        """Connect+JSON calls of `rpc` (an empty request, `{}`) spread over the client
        processes as `unary_jobs` spreads gRPC calls: one connection per call in flight."""
        n = self.plan.client_processes
        return [
            HttpJob(
                url=f"http://{address}{SERVICE}{rpc}",
                body=b"{}",
                headers=self.metadata,
                calls=c,
                concurrency=max(1, k),
                warmup=w,
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
        """Baseline and cached reads, rounds interleaved; targets checked on the medians.

        With them, in the same rounds, DescribeRegistry hits of the same gateway process over
        HTTP/1.1 + JSON (Connect): the same calls, concurrency and client processes, one
        keep-alive connection per call in flight; reported beside the gRPC hits, no target.
        """
        p = self.plan
        self.log(
            f"reads: baseline vs gateway hits{' (gRPC and Connect+JSON)' * self.http}, "
            f"{p.read_concurrency} concurrent, {p.read_calls} calls x {p.rounds} rounds"
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
                if rpc == "describe" and self.http:
                    jobs = self.http_jobs(
                        self.gateway.http_address,
                        NAMES[rpc],
                        p.read_calls,
                        p.read_concurrency,
                        warmup=p.warmup,
                    )
                    loads.setdefault(f"http.{rpc}", []).append(self.load(jobs, [self.gateway.pid]))
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
            if f"http.{rpc}" in loads:
                self._http_row(rpc, loads[f"http.{rpc}"], cached)
        self.bare.stop()

    def _http_row(self, rpc: str, loads: list[Loaded], grpc_row: Row) -> None:
        """The Connect+JSON hits' row, its ratios to the gRPC hits' and its check."""
        p = self.plan
        body = self._http_call(self.gateway.http_address, NAMES[rpc])
        per_process = split(p.read_concurrency, p.client_processes)
        where = "server cpu0, clients cpu1" if self.pin else "unpinned (both cores shared)"
        row = self._row_of(
            f"http.{rpc}",
            "http",
            f"cached read, Connect+JSON: gateway hit, {NAMES[rpc]}",
            p.read_concurrency,
            loads,
            f"{p.client_processes} client procs x {max(per_process)} keep-alive HTTP/1.1 "
            f"connections (httpcore, one call at a time each); {where}",
        )
        g = grpc_row.m
        row.extra.update(
            response_bytes=len(body),
            grpc_row=grpc_row.key,
            calls_per_s_vs_grpc=round(row.m.calls_per_s / g.calls_per_s, 3),
            cpu_per_call_vs_grpc=round(row.m.server_cpu_per_1k / g.server_cpu_per_1k, 3),
            p50_vs_grpc=round(row.m.p50_ms / g.p50_ms, 3),
            p99_vs_grpc=round(row.m.p99_ms / g.p99_ms, 3),
        )
        row.notes.append(
            "POST application/json, body {}; the gateway process of the gRPC hits, its HTTP "
            "listener; every answer 200 with x-cache: hit (checked)"
        )
        self._add(row)
        all_hits = _all_hits(row.m) and sum(row.m.cache.values()) == row.m.calls
        self.verdicts.append(
            Verdict(
                f"{NAMES[rpc]} hits over Connect+JSON: all 200 with x-cache hit, no upstream call",
                all_hits and not row.upstream,
                f"{_codes_and_cache(row.m)}, upstream {row.upstream or 0}",
                "all 200, all hits, 0 upstream",
                "check",
            )
        )

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

    def attack(self) -> None:
        """A bystander tenant's cached reads, alone and while one connection attacks.

        The bystander (the run's pool, one channel) reads DescribeRegistry, warmed so every
        call is a cache hit, open loop at `attack_rate`/s for `attack_seconds`: call i
        starts at i/rate and its latency counts from then, so a stalled gateway shows in
        every call it held up (a closed loop would make a handful of slow calls). The
        attacker (a process of its own, lowest priority, one channel) sends, for the same
        time, max-size undecodable bytes without credentials and, as another tenant,
        unknown-field floods of a validate_only write; its calls fail and are counted,
        nothing else. A gateway of its own (two tenants), stopped at the end.
        """
        p = self.plan
        limit = max_message_bytes(self._gateway_env)
        calls = max(1, round(p.attack_rate * p.attack_seconds))
        self.log(
            f"bystander under attack: {calls} cached reads at {p.attack_rate:g}/s alone and "
            f"under attack ({limit} B messages) x {p.attack_rounds} rounds"
        )
        attacker_key = uuid.uuid4().hex
        with contextlib.ExitStack() as stack:
            # Spawned first: the process imports while the gateway starts.
            attackers = LoadPool(1, self._cpus(CLIENT_CPUS), nice=ATTACKER_NICE)
            stack.callback(attackers.close)
            gateway = self._start_gateway(
                "gateway-attack", _attack_config(self.aws.proxy_url, self.key, attacker_key)
            )
            stack.callback(gateway.stop)
            bystander = UnaryJob(
                targets=(gateway.address,),
                method=DESCRIBE,
                request=b"",
                metadata=self.metadata,
                calls=calls,
                concurrency=8,
                channels=1,
                warmup=min(200, calls),
                trailers=True,
                rate=p.attack_rate,
            )
            attacker = AttackJob(
                target=gateway.address,
                undecodable_method=DESCRIBE,
                flood_method=PUT_REPLICATION,
                flood_metadata=(("authorization", f"Bearer {attacker_key}"),),
                message_bytes=limit,
                seconds=p.attack_seconds,
                max_calls=p.attack_max_calls,
            )
            loads: dict[str, list[Loaded]] = {"quiet": [], "attacked": []}
            for _ in range(p.attack_rounds):
                loads["quiet"].append(self.load([bystander], [gateway.pid]))
                loads["attacked"].append(
                    self.load([bystander], [gateway.pid], beside=(attackers, [attacker]))
                )
        self._attack_rows(loads, limit)

    def _attack_rows(self, loads: dict[str, list[Loaded]], limit: int) -> None:
        p = self.plan
        setup = (
            f"bystander: 1 client proc x 1 channel, open loop {p.attack_rate:g}/s; attacker: "
            f"1 proc (nice {ATTACKER_NICE}) x 1 channel; "
            + ("server cpu0, clients cpu1" if self.pin else "unpinned")
        )
        quiet = self._row_of(
            "attack.quiet",
            "attack",
            "bystander: cached DescribeRegistry, no attack",
            1,
            loads["quiet"],
            setup,
        )
        attacked = self._row_of(
            "attack.attacked",
            "attack",
            "bystander: cached DescribeRegistry, under attack",
            1,
            loads["attacked"],
            setup,
        )
        ratio = attacked.m.p99_ms / quiet.m.p99_ms if quiet.m.p99_ms > 0 else float("inf")
        attacker = attacker_summary(
            [r for load in loads["attacked"] for r in load.beside],
            p.attack_seconds * len(loads["attacked"]),
        )
        for row, kind in ((quiet, "quiet"), (attacked, "attacked")):
            row.extra.update(
                rate_per_s=p.attack_rate,
                p99_ms_per_round=[round(load.m.p99_ms, 3) for load in loads[kind]],
            )
            row.notes.append(
                "open loop: latency counts from each call's planned start; srv CPU includes "
                "whatever the gateway spent on the attacker in the same time"
            )
        attacked.extra.update(
            p99_vs_no_attack=round(ratio, 3),
            p99_goal=ATTACK_P99_GOAL,
            attacker=attacker,
            message_bytes=limit,
        )
        self._add(quiet)
        self._add(attacked)
        for kind, entry in attacker.items():
            self.log(
                f"    attacker {kind}: {entry['calls']} calls, {entry['codes']}, "
                f"refused in p50 {entry['p50_ms']} ms, max {entry['max_ms']} ms"
            )
        refused = all(entry["codes"].get("OK", 0) == 0 for entry in attacker.values())
        self.verdicts += [
            Verdict(
                "bystander under attack: cached-read p99 vs no attack",
                ratio <= ATTACK_P99_GOAL,
                f"{ratio:.2f}x ({attacked.m.p99_ms:.2f} vs {quiet.m.p99_ms:.2f} ms)",
                f"<= {ATTACK_P99_GOAL:.2f}x",
                "target",
            ),
            # Under attack a failed read is the attack's doing (a stalled event loop makes
            # grpc shed calls): reported like the p99, not a failure of the run.
            Verdict(
                "bystander under attack: every read answered OK from the cache",
                _all_hits(attacked.m),
                _codes_and_cache(attacked.m),
                "all OK, all hits",
                "target",
            ),
            Verdict(
                "bystander, no attack: every read answered OK from the cache",
                _all_hits(quiet.m),
                _codes_and_cache(quiet.m),
                "all OK, all hits",
                "check",
            ),
            Verdict(
                "bystander under attack: every attacker call refused, none reached AWS",
                refused and bool(attacker) and not attacked.upstream,
                "; ".join(f"{kind} {entry['codes']}" for kind, entry in attacker.items())
                + f"; upstream {attacked.upstream or 0}",
                "no OK, 0 upstream",
                "check",
            ),
        ]

    def paired(self) -> None:
        """Cached reads against the bare server, paired round by round (bench/paired.py)."""
        from bench.paired import run_scenario  # it imports this module

        run_scenario(self)

    def accounts(self) -> None:
        """Memory and time to SERVING against (account, region) clients (bench/many_accounts.py)."""
        from bench.many_accounts import run_scenario  # it imports this module

        run_scenario(self)

    def teams(self) -> None:
        """Many teams' slice writes at once through two replicas (bench/many_teams.py)."""
        from bench.many_teams import run_scenario  # it imports this module

        run_scenario(self)

    def edge(self, name: str) -> None:
        """Bystander under edge attack `name` (bench/edge_attacks.py)."""
        from bench.edge_attacks import run_scenario  # it imports this module

        run_scenario(self, name)

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
        steps: list[tuple[str, Callable[[], None]]] = [
            ("reads", self.reads),
            ("paired", self.paired),
            ("cold", self.direct_and_cold),
            ("storm", self.storm),
            ("writes", self.writes),
            ("scale", self.scale),
            # Not in a quick run unless asked for by name: it is for explaining, not checking.
            ("ablation", self.ablation),
            ("attack", self.attack),
            *((name, functools.partial(self.edge, name)) for name in EDGE_SCENARIOS),
            (MANY_ACCOUNTS, self.accounts),
            (MANY_TEAMS, self.teams),
        ]
        for name, step in steps:
            # Not in a quick run unless asked for by name: the ablation explains, and the edge
            # attacks and the many accounts' gateways would take a quick run past its minute.
            skipped = (
                name in ("ablation", "paired", MANY_ACCOUNTS, MANY_TEAMS) or name in EDGE_SCENARIOS
            )
            if skipped and self.only is None and self.plan.name == "quick":
                continue
            if self._wants(name):
                rows, verdicts = len(self.rows), len(self.verdicts)
                step()
                for row in self.rows[rows:]:
                    row.scenario = name
                for verdict in self.verdicts[verdicts:]:
                    verdict.scenario = name
                self.scenarios.append(name)
        return self.document()

    def document(self) -> dict[str, Any]:
        """The results as written to bench/results/*.json."""
        return {
            "schema": 1,
            "mode": self.plan.name,
            "scenarios": self.scenarios,
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
                "gateway_source": self.gateway_source,
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
