"""Many accounts (issue 27): memory and time to SERVING against the number of
(account, region) clients one gateway process holds.

For each size of SIZES (accounts x regions), a gateway of its own is started as a real
`registry-gateway serve` process (pinned to the server's core like the others): one tenant,
one registry per account, each reached through its role (`role_arn`, which moto's STS
assumes into that account), in `regions` regions each. Measured per size:

- **SERVING after**: from the process's start (interpreter, imports, binding, the start-up
  probes and ECR's REGISTRY_POLICY_SCOPE of every (account, region)) until the health
  service answers SERVING for the gateway's service;
- **RSS at SERVING** and **RSS after one call each**: the gateway's resident set size
  (psutil) once SERVING, and after one DescribeRegistry per (account, region) — a cache miss
  each, so an AWS call on every client — every one of which must be answered OK;
- the AWS calls the start-up made, by operation (the stand-in's counting proxy).

From the sizes, the growth per added (account, region) is fitted (least squares) for RSS
after the calls and for the time to SERVING. The goal (issue 27): 150 accounts x 2 regions
SERVING within SERVING_GOAL_SECONDS and at most RSS_GOAL_MB after one call each.
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import Row, Verdict, _delta, _hash_key
from bench.loadgen import SERVICE
from bench.processes import cpu_seconds
from bench.stats import Measurement, measured
from service.gen.v1 import registry_pb2 as pb

if TYPE_CHECKING:
    from bench.harness import Run

SCENARIO = "accounts"
# (accounts, regions) per plan, smallest first: 1 to 300 (account, region) clients.
SIZES = {
    "quick": ((1, 1), (1, 2), (20, 2), (60, 2)),
    "full": ((1, 1), (1, 2), (20, 2), (60, 2), (150, 2)),
}
REGIONS = ("us-east-1", "eu-west-1", "us-west-2", "ap-southeast-2")
# Accounts 210000000000, 210000000001, ...: never moto's default account of the other rows.
FIRST_ACCOUNT = 210_000_000_000
ROLE = "arn:aws:iam::{account}:role/registry-gateway"
SERVING_GOAL_SECONDS = 8.0
RSS_GOAL_MB = 450.0
GOAL_SIZE = (150, 2)
# The calls after SERVING: this many in flight at once (well under the tenant's share of the
# gateway's calls in flight, so none is refused for that).
CALL_CONCURRENCY = 16
SERVING_TIMEOUT_SECONDS = 120.0
MB = 1024 * 1024


@dataclass(frozen=True)
class SizeResult:
    """What one size measured."""

    accounts: int
    regions: int
    serving_s: float
    rss_serving_mb: float
    rss_after_mb: float
    start_cpu_s: float  # the gateway's CPU seconds from its start to SERVING
    stand_in_cpu_s: float  # the AWS stand-in's (moto and its proxy) in the same time
    cpu_wait_s: float  # the gateway's threads' time runnable but waiting for a CPU, to SERVING
    upstream_start: dict[str, int]  # AWS calls made before SERVING, by operation
    latencies: list[float]  # seconds, one per call
    codes: dict[str, int]
    details: dict[str, str]
    calls_seconds: float
    calls_cpu_s: float
    upstream_calls: dict[str, int]  # AWS calls made by the calls after SERVING

    @property
    def clients(self) -> int:
        """(account, region) clients."""
        return self.accounts * self.regions


def accounts_config(proxy_url: str, key_hash: str, accounts: int, regions: int) -> dict[str, Any]:
    """A gateway config: one tenant, `accounts` registries each reached through its role, in
    `regions` regions each; AWS at the stand-in's proxy; no drift check, a memory cache."""
    names = list(REGIONS[:regions])
    return {
        "listen": "127.0.0.1:0",
        "server": {"drain_seconds": 0, "grace_seconds": 2},
        # Off: the background check would read every (registry, region) on its own.
        "drift": {"check_seconds": 0},
        "aws": {
            "region": names[0],
            "endpoint_url": proxy_url,
            "max_attempts": 2,
            "tenant_upstream_per_second": 1_000_000,
            "tenant_upstream_burst": 1_000_000,
        },
        "cache": {"backend": "memory", "ttl_seconds": 3600, "max_stale_seconds": 300},
        "tenants": [
            {
                "name": "bench",
                "api_keys": [key_hash],
                "registries": [
                    {
                        "registry_id": str(FIRST_ACCOUNT + i),
                        "role_arn": ROLE.format(account=FIRST_ACCOUNT + i),
                        "regions": names,
                        "operations": ["DescribeRegistry"],
                    }
                    for i in range(accounts)
                ],
            }
        ],
    }


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line through the points: (slope, intercept)."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return float("nan"), float("nan")
    slope, intercept = statistics.linear_regression(xs, ys)
    return slope, intercept


def run_queue_seconds(pid: int) -> float:
    """How long the process's live threads were runnable but waited for a CPU (the kernel's
    schedstat run delay): what other work on this shared machine added to the wall time."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def _wait_serving(address: str, deadline: float) -> bool:
    """Poll the health service until the gateway's service answers SERVING."""
    service = SERVICE.strip("/")
    with grpc.insecure_channel(address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.02)
    return False


def _one_call_each(
    address: str, metadata: tuple[tuple[str, str], ...], accounts: int, regions: int
) -> tuple[list[float], dict[str, int], dict[str, str], float]:
    """One DescribeRegistry per (account, region), CALL_CONCURRENCY at a time: latencies,
    codes, the first message of each failed code, and the wall time of them all."""
    requests = [
        pb.DescribeRegistryRequest(registry_id=str(FIRST_ACCOUNT + i), region=region)
        for i in range(accounts)
        for region in REGIONS[:regions]
    ]
    latencies: list[float] = []
    codes: dict[str, int] = {}
    details: dict[str, str] = {}
    lock = threading.Lock()
    with grpc.insecure_channel(address) as channel:
        call: Any = channel.unary_unary(
            SERVICE + "DescribeRegistry",
            request_serializer=pb.DescribeRegistryRequest.SerializeToString,
            response_deserializer=pb.DescribeRegistryResponse.FromString,
        )

        def one(request: pb.DescribeRegistryRequest) -> None:
            started = time.perf_counter()
            code, text = "OK", ""
            try:
                answer = call(request, metadata=metadata, timeout=60)
                if answer.registry_id != request.registry_id:
                    code, text = "WRONG_REGISTRY", f"{answer.registry_id} for {request.registry_id}"
            except grpc.RpcError as exc:
                code, text = exc.code().name, str(exc.details())[:300]
            took = time.perf_counter() - started
            with lock:
                latencies.append(took)
                codes[code] = codes.get(code, 0) + 1
                if text:
                    details.setdefault(code, text)

        started = time.perf_counter()
        with ThreadPoolExecutor(CALL_CONCURRENCY) as pool:
            list(pool.map(one, requests))
        seconds = time.perf_counter() - started
    return sorted(latencies), codes, details, seconds


def measure_size(run: Run, accounts: int, regions: int) -> SizeResult:
    """One gateway of `accounts` x `regions` clients: started, timed to SERVING, called."""

    name = f"gateway-accounts-{accounts}x{regions}"
    config = accounts_config(run.aws.proxy_url, _hash_key(run.key), accounts, regions)
    before = run.aws.control("counts")
    stand_in_before = cpu_seconds(run.aws.pid)
    gateway = run._start_gateway(name, config, wait=False)
    started = time.monotonic()
    gateway.start()  # returns at the "serving" log line, right after SERVING is set
    if not _wait_serving(gateway.address, started + SERVING_TIMEOUT_SECONDS):
        gateway.stop()
        raise RuntimeError(f"{name} never answered SERVING: see {gateway.log_path}")
    serving_s = time.monotonic() - started
    process = psutil.Process(gateway.pid)
    rss_serving = process.memory_info().rss / MB
    start_cpu = gateway.cpu_seconds()
    cpu_wait = run_queue_seconds(gateway.pid)
    stand_in_cpu = cpu_seconds(run.aws.pid) - stand_in_before
    at_serving = run.aws.control("counts")
    latencies, codes, details, seconds = _one_call_each(
        gateway.address, run.metadata, accounts, regions
    )
    rss_after = process.memory_info().rss / MB
    calls_cpu = gateway.cpu_seconds() - start_cpu
    after = run.aws.control("counts")
    gateway.stop()
    return SizeResult(
        accounts=accounts,
        regions=regions,
        serving_s=serving_s,
        rss_serving_mb=rss_serving,
        rss_after_mb=rss_after,
        start_cpu_s=start_cpu,
        stand_in_cpu_s=stand_in_cpu,
        cpu_wait_s=cpu_wait,
        upstream_start=_delta(at_serving, before),
        latencies=latencies,
        codes=codes,
        details=details,
        calls_seconds=seconds,
        calls_cpu_s=calls_cpu,
        upstream_calls=_delta(after, at_serving),
    )


def _measurement(result: SizeResult) -> Measurement:
    return measured(
        result.latencies, result.calls_seconds, result.calls_cpu_s, result.codes, result.details
    )


def _row(run: Run, result: SizeResult) -> Row:

    a, r = result.accounts, result.regions
    row = Row(
        f"accounts.{a}x{r}",
        SCENARIO,
        f"many accounts: {a} x {r} = {result.clients} clients, 1 DescribeRegistry each",
        CALL_CONCURRENCY,
        _measurement(result),
        f"gateway {'cpu0' if run.pin else 'unpinned'}; 1 bench thread pool x "
        f"{CALL_CONCURRENCY}, 1 channel",
        upstream=result.upstream_calls,
    )
    row.extra.update(
        accounts=a,
        regions=r,
        clients=result.clients,
        serving_s=round(result.serving_s, 3),
        rss_serving_mb=round(result.rss_serving_mb, 1),
        rss_after_mb=round(result.rss_after_mb, 1),
        start_cpu_s=round(result.start_cpu_s, 3),
        stand_in_cpu_s=round(result.stand_in_cpu_s, 3),
        cpu_wait_s=round(result.cpu_wait_s, 3),
        upstream_start=result.upstream_start,
    )
    row.notes.append(
        "every call a cache miss (the first read of its (account, region)): one AWS call each; "
        "SERVING after = from the process's start"
    )
    return row


def run_scenario(run: Run) -> None:
    """Every size of the plan: rows, the fitted growth, the goal's verdicts."""

    sizes = SIZES.get(run.plan.name, SIZES["quick"])
    run.log(
        "many accounts: RSS and time to SERVING against (account, region) clients: "
        + ", ".join(f"{a}x{r}" for a, r in sizes)
    )
    results: list[SizeResult] = []
    for accounts, regions in sizes:
        result = measure_size(run, accounts, regions)
        results.append(result)
        run.log(
            f"  {accounts:>3} x {regions} = {result.clients:>3} clients: SERVING after "
            f"{result.serving_s:5.2f} s (cpu {result.start_cpu_s:5.2f} s, waited for a cpu "
            f"{result.cpu_wait_s:5.2f} s, stand-in {result.stand_in_cpu_s:5.2f} s), RSS "
            f"{result.rss_serving_mb:6.1f} MB at SERVING, {result.rss_after_mb:6.1f} MB after "
            f"one call each; codes {result.codes}"
        )
        run._add(_row(run, result))
    clients = [float(r.clients) for r in results]
    rss_slope, rss_base = fit(clients, [r.rss_after_mb for r in results])
    time_slope, time_base = fit(clients, [r.serving_s for r in results])
    cpu_slope, _ = fit(clients, [r.start_cpu_s for r in results])
    growth = {
        "rss_mb_per_client": round(rss_slope, 3),
        "rss_mb_intercept": round(rss_base, 1),
        "serving_ms_per_client": round(time_slope * 1000, 2),
        "serving_s_intercept": round(time_base, 2),
        "start_cpu_ms_per_client": round(cpu_slope * 1000, 2),
    }
    for row in run.rows:
        if row.group == SCENARIO:
            row.extra["growth"] = growth
    run.log(
        f"  growth per added (account, region): {growth['rss_mb_per_client']:.2f} MB RSS, "
        f"{growth['serving_ms_per_client']:.1f} ms to SERVING "
        f"({growth['start_cpu_ms_per_client']:.1f} ms CPU)"
    )
    answered = all(set(r.codes) == {"OK"} and len(r.latencies) == r.clients for r in results)
    run.verdicts.append(
        Verdict(
            "many accounts: every DescribeRegistry answered OK, one per (account, region)",
            answered,
            "; ".join(f"{r.accounts}x{r.regions}: {r.codes}" for r in results)
            + "".join(f"; {code}: {text!r}" for r in results for code, text in r.details.items()),
            "all OK",
            "check",
        )
    )
    goal = next((r for r in results if (r.accounts, r.regions) == GOAL_SIZE), None)
    if goal is not None:
        run.verdicts += [
            Verdict(
                f"many accounts: {goal.accounts} x {goal.regions} ({goal.clients} clients) "
                "SERVING after",
                goal.serving_s <= SERVING_GOAL_SECONDS,
                f"{goal.serving_s:.2f} s (gateway CPU {goal.start_cpu_s:.2f} s; its threads "
                f"waited {goal.cpu_wait_s:.2f} s for a CPU held by other work)",
                f"<= {SERVING_GOAL_SECONDS:g} s",
                "target",
            ),
            Verdict(
                f"many accounts: {goal.accounts} x {goal.regions} ({goal.clients} clients) "
                "RSS after one call each",
                goal.rss_after_mb <= RSS_GOAL_MB,
                f"{goal.rss_after_mb:.0f} MB",
                f"<= {RSS_GOAL_MB:g} MB",
                "target",
            ),
        ]
