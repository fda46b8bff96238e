"""What the benchmark's scenarios share: the machine's layout, the plans, the rows and
verdicts they report, the gateway's configs, small helpers.

bench/harness.py (the run: its processes and scenarios) and the scenarios of their own
modules (bench/paired.py, bench/edge_attacks.py, bench/many_accounts.py) import these from
here, so none of them imports another at run time (the harness imports each scenario module
when it runs it; a scenario names the harness's `Run` only for its type).
"""

from __future__ import annotations

import array
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import SERVICE, JobResult
from bench.processes import BIN
from bench.stats import SERVER_BOUND_BUSY, Measurement, percentile

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
# Scenarios whose figures compare only with each other (own gateway, own baseline): a run of
# just these can be merged into a full run's results (`python -m bench --only attack --merge`).
# Bystander under edge attacks (bench/edge_attacks.py), one scenario per attack.
EDGE_SCENARIOS = ("edge-body", "edge-json", "edge-idle", "edge-streams")
# Many accounts (bench/many_accounts.py): a gateway of its own per size.
MANY_ACCOUNTS = "accounts"
# Many teams on one registry (bench/many_teams.py): two gateways of its own per size.
MANY_TEAMS = "teams"
SELF_CONTAINED = frozenset({"attack", *EDGE_SCENARIOS, MANY_ACCOUNTS, MANY_TEAMS})
REDIS_URL_ENV = "REGISTRY_GATEWAY_BENCH_REDIS_URL"
# Set by scripts/with_redis.sh (what `make bench` runs under), after finding or starting one.
TEST_REDIS_URL_ENV = "REGISTRY_GATEWAY_TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DESCRIBE = SERVICE + "DescribeRegistry"
POLICY = SERVICE + "GetRegistryPolicy"
PUT_REPLICATION = SERVICE + "PutReplicationConfiguration"
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
    # Bystander under attack: rounds of (no attack, attack), interleaved; each phase is the
    # bystander's open-loop reads at attack_rate/s for attack_seconds (the attacker's loops
    # stop starting calls after the same time), medians of the rounds reported.
    attack_rounds: int = 1
    attack_seconds: float = 2.5
    attack_rate: float = 250.0
    attack_max_calls: int = 20000  # per attacker loop and phase: a bound, not a goal


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
    attack_rounds=3,
    attack_seconds=6.0,
)
# The bystander's p99 under attack against its p99 alone.
ATTACK_P99_GOAL = 2.0
# The attacker's process runs at the lowest priority on the load generator's core, so the
# bystander's client is not slowed by it: what the figure shows is the gateway's doing.
ATTACKER_NICE = 19


@dataclass
class Loaded:
    """What one timed load measured."""

    m: Measurement
    upstream: dict[str, int]  # upstream calls made during the timed part, by operation
    watched: dict[int, float]  # CPU seconds of other watched processes
    cores: list[float]  # each core's busy share (by anyone) during the timed part
    results: list[JobResult]
    beside: list[JobResult] = field(default_factory=list)  # jobs run alongside, not measured


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
    scenario: str = ""  # the step of the run that measured it (`--only` names)

    @property
    def client_bound(self) -> bool:
        """The server was not kept busy: calls/s is not the server's limit."""
        return self.m.server_busy < SERVER_BOUND_BUSY

    @property
    def bound(self) -> str:
        """What limited calls/s: `server`, `client` (the load generator's core was full),
        `other work` (the server's core was full, but not with the server), or `latency`
        (nothing was full: the calls waited, e.g. on AWS), or `rate` (an open loop's calls/s
        is its own choice)."""
        if "rate_per_s" in self.extra:
            return "rate"
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
            "scenario": self.scenario,
        }


@dataclass
class Verdict:
    """A target (performance) or a check (correctness), met or not."""

    name: str
    ok: bool
    value: str
    goal: str
    kind: str  # target | check
    scenario: str = ""

    def to_json(self) -> dict[str, Any]:
        """A plain dict for results JSON."""
        return {
            "name": self.name,
            "ok": self.ok,
            "value": self.value,
            "goal": self.goal,
            "kind": self.kind,
            "scenario": self.scenario,
        }


def _ecr(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return _ecr({k: after.get(k, 0) - before.get(k, 0) for k in after})


def _gateway_config(
    proxy_url: str,
    key: str,
    *,
    backend: str = "memory",
    redis_url: str = "",
    prefix: str = "",
    http: bool = False,
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
        # The same service over HTTP/1.1 + JSON (Connect), on a port of its own choosing.
        **({"http": {"listen": "127.0.0.1:0"}} if http else {}),
        # A storm of 1,000 concurrent calls must not meet the default limit of 1,000.
        # Concurrent writes of the one tenant queue for the registry's lock by design here.
        "server": {
            "max_concurrent_rpcs": 4096,
            "max_writes_in_flight_per_tenant": 4096,
            "drain_seconds": 0,
            "grace_seconds": 2,
        },
        # The background drift check reads every configured (registry, region) once a period
        # (a cache load): it would warm the storm's never-read keys before their round, and
        # add AWS calls the upstream counts do not expect. Off: the scenarios measure calls.
        "drift": {"check_seconds": 0},
        # One tenant: its share of the AWS call slots is all of them. The cold rows and the
        # writes measure the path past the cache itself, not the per-tenant budget that
        # protects AWS from it (on by default): a budget no run can spend.
        "aws": {
            "region": REGION,
            "endpoint_url": proxy_url,
            "max_attempts": 2,
            "max_tenant_share": 1.0,
            "tenant_upstream_per_second": 1_000_000,
            "tenant_upstream_burst": 1_000_000,
        },
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


def _attack_config(proxy_url: str, key: str, attacker_key: str) -> dict[str, Any]:
    """The bench gateway's config with a second tenant, the attacker, on the same registry:
    allowed the writes its floods are (validate_only), with a key of its own."""
    config = _gateway_config(proxy_url, key)
    config["tenants"].append(
        {
            "name": "attacker",
            "api_keys": [_hash_key(attacker_key)],
            "registries": [
                {
                    "registry_id": ACCOUNT,
                    "regions": [REGION, REPLICA_REGION],
                    "operations": [
                        "DescribeRegistry",
                        "PutRegistryPolicy",
                        "PutReplicationConfiguration",
                    ],
                    "replication_destinations": [
                        {"registry_id": ACCOUNT, "regions": [REPLICA_REGION]}
                    ],
                }
            ],
        }
    )
    return config


def _all_hits(m: Measurement) -> bool:
    return set(m.codes) == {"OK"} and set(m.cache) == {"hit"}


def _codes_and_cache(m: Measurement) -> str:
    """Codes and x-cache counts, and the first message of each failed code."""
    failures = "".join(f"; {code}: {text!r}" for code, text in sorted(m.details.items()))
    return f"codes {m.codes}, x-cache {m.cache}{failures}"


def max_message_bytes(env: dict[str, str]) -> int:
    """The largest message the gateway that `env` runs accepts: the default
    `server.max_message_bytes` (the bench configs keep it), or less where the gateway's
    transport takes only as much as its largest valid request (service/rpc/request_limits.py).
    Asked of its own code, which may be another commit's: the strongest attack on each."""
    code = (
        "from service.config import ServerConfig\n"
        "limit = ServerConfig.model_fields['max_message_bytes'].default\n"
        "try:\n"
        "    from service.rpc.request_limits import largest_request_bytes\n"
        "    limit = min(limit, largest_request_bytes())\n"
        "except ImportError:\n"
        "    pass\n"
        "print(limit)"
    )
    out = subprocess.run(
        [str(BIN / "python"), "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return int(out.strip())


def serves_http(env: dict[str, str]) -> bool:
    """Whether the gateway that `env` runs has an HTTP (Connect) listener to configure:
    asked of its own code, which may be a commit's from before it had one."""
    code = "from service.config import GatewayConfig\nprint('http' in GatewayConfig.model_fields)"
    out = subprocess.run(
        [str(BIN / "python"), "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return out.strip() == "True"


def attacker_summary(results: list[JobResult], seconds: float) -> dict[str, Any]:
    """Per attacker loop, over every attack phase: calls, codes, how long a refusal took.

    `seconds` is the attack's total planned time (calls/s are over it)."""
    summary: dict[str, Any] = {}
    for result in results:
        for kind, raw in result.kind_latencies.items():
            values = array.array("d")
            values.frombytes(raw)
            entry = summary.setdefault(kind, {"latencies": [], "codes": {}})
            entry["latencies"].extend(values)
        for label, n in result.codes.items():
            kind, _, code = label.partition(" ")
            entry = summary.setdefault(kind, {"latencies": [], "codes": {}})
            entry["codes"][code] = entry["codes"].get(code, 0) + n
        for label, text in result.details.items():
            kind, _, code = label.partition(" ")
            summary.setdefault(kind, {"latencies": [], "codes": {}})
            summary[kind].setdefault("details", {}).setdefault(code, text)
    for entry in summary.values():
        latencies = sorted(entry.pop("latencies"))
        entry["calls"] = len(latencies)
        entry["calls_per_s"] = round(len(latencies) / seconds, 1) if seconds > 0 else None
        for name, q in (("p50_ms", 50), ("p99_ms", 99)):
            entry[name] = round(percentile(latencies, q) * 1000, 2) if latencies else None
        entry["max_ms"] = round(latencies[-1] * 1000, 2) if latencies else None
    return summary
