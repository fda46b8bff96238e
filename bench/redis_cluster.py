"""Cached reads and writes' Redis work on one Redis and on a three-node Redis Cluster, in the
same run (issue 23's figure): `python -m bench.redis_cluster [--seconds S] [--rounds N]`.

What is measured is the gateway's own Redis work, through its own objects and client
(service/state/, `redis_connect.redis_client`), without AWS or gRPC in the way:
- a cached read: `ReadCache.get_or_load` of a fresh entry (the in-process copy, checked by
  one GET of its version), 32 readers over 16 registries;
- a write's Redis part: the registry's lock (SET NX, renewals off the path), the
  write-in-flight marker, the read-back written through (the store script), the history's
  compare-and-append (two scripts), the marker and the lock released; 16 writers, each on a
  registry of its own.

Both servers are started here (redis-server on free ports, no persistence) and stopped at the
end; rounds alternate single and cluster so the machine's state drifts alike for both. On one
machine the three cluster nodes share its cores with the client: the figure is the cost of
cluster mode per operation (redis-py's cluster routing, one slot per registry), not the
scale-out a cluster on several machines gives."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis

from service.config.state import CacheConfig
from service.errors import Unavailable
from service.gen.v1 import registry_pb2 as pb
from service.state.cache import CacheKey, ReadCache, RedisStore
from service.state.history import RedisHistory, Version
from service.state.locks import RedisRegistryLocks
from service.state.redis_connect import redis_client
from service.state.redis_keys import RedisClient
from tests.support.redis_cluster import _free_port, cluster_of_three

REGISTRIES = [f"{n:012d}" for n in range(16)]
READERS = 32


async def _measure(
    seconds: float, workers: int, one: Callable[[int], Awaitable[None]]
) -> dict[str, float]:
    """Calls per second and latency percentiles (ms) of `workers` loops calling `one`."""
    latencies: list[float] = []
    failed = 0
    stop = time.monotonic() + seconds

    async def loop(worker: int) -> None:
        nonlocal failed
        while time.monotonic() < stop:
            began = time.perf_counter()
            try:
                await one(worker)
            except Unavailable:  # Redis slower than its 1 s timeout (a loaded machine)
                failed += 1
                continue
            latencies.append(time.perf_counter() - began)

    began = time.monotonic()
    await asyncio.gather(*(loop(w) for w in range(workers)))
    elapsed = time.monotonic() - began
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

    return {
        "per_s": round(len(latencies) / elapsed),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "failed": failed,
    }


async def _reads(client: RedisClient, prefix: str, seconds: float) -> dict[str, float]:
    cache = ReadCache(CacheConfig(ttl_seconds=3600), RedisStore(client, prefix, 1000))
    keys = [CacheKey(r, "us-east-1", "registry") for r in REGISTRIES]

    async def load() -> pb.DescribeRegistryResponse:
        return pb.DescribeRegistryResponse(registry_id="123456789012", etag="e")

    for key in keys:
        await cache.get_or_load(key, load)  # warm: every read below is a hit

    async def read(worker: int) -> None:
        await cache.get_or_load(keys[worker % len(keys)], load)

    return await _measure(seconds, READERS, read)


async def _writes(client: RedisClient, prefix: str, seconds: float) -> dict[str, float]:
    store = RedisStore(client, prefix, 1000)
    cache = ReadCache(CacheConfig(), store)
    history = RedisHistory(client, prefix, 50, 1 << 20)
    locks = RedisRegistryLocks(client, prefix, 10, lambda: 30.0)
    heads: dict[str, str | None] = dict.fromkeys(REGISTRIES)
    counts = dict.fromkeys(REGISTRIES, 0)

    async def write(worker: int) -> None:
        registry = REGISTRIES[worker]
        key = CacheKey(registry, "us-east-1", "policy")
        counts[registry] += 1
        etag = f"{registry}-{counts[registry]}"
        async with locks.hold(registry, "us-east-1") as held, held.writing("policy"):
            await held.ensure_owned()
            await cache.put(key, pb.GetRegistryPolicyResponse(policy_text="{}", etag=etag))
            document = json.dumps({"Statement": [{"Sid": f"S{counts[registry]}"}]}).encode()
            version = Version(0, time.time(), "gateway", etag, document, tenant="t")
            appended = await history.append(key, version, if_head_etag=heads[registry])
            assert appended is not None, "one writer per registry: the append always holds"
            heads[registry] = etag

    return await _measure(seconds, len(REGISTRIES), write)


async def _round(client: RedisClient, seconds: float) -> dict[str, dict[str, float]]:
    prefix = f"bench-{time.monotonic_ns()}:"
    await client.ping()  # connected (and, on a cluster, mapped) before the clock starts
    return {
        "cached_read": await _reads(client, prefix, seconds),
        "write_redis_part": await _writes(client, prefix, seconds),
    }


def _single_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if redis.Redis(port=port, socket_connect_timeout=1).ping():
                return process, port
        except redis.RedisError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)


async def _run(nodes: list[str], port: int, seconds: float, rounds: int) -> dict[str, Any]:
    configs = {
        "single": CacheConfig(backend="redis", redis_url=f"redis://127.0.0.1:{port}/0"),
        "cluster": CacheConfig(backend="redis", redis_cluster_nodes=tuple(nodes)),
    }
    results: dict[str, list[dict[str, dict[str, float]]]] = {mode: [] for mode in configs}
    for _ in range(rounds):
        for mode, config in configs.items():
            client = redis_client(config, None, {})
            try:
                results[mode].append(await _round(client, seconds))
            finally:
                await client.aclose()
    summary: dict[str, Any] = {}
    for mode, runs in results.items():
        summary[mode] = {
            what: {
                figure: round(statistics.median(run[what][figure] for run in runs), 2)
                for figure in runs[0][what]
            }
            for what in runs[0]
        }
    summary["rounds"] = rounds
    summary["seconds_per_measure"] = seconds
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measure")
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        process, port = _single_redis(workdir)
        try:
            with cluster_of_three(workdir) as cluster:
                summary = asyncio.run(_run(cluster.nodes, port, options.seconds, options.rounds))
        finally:
            process.terminate()
            process.wait(timeout=10)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
