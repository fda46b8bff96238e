"""Prometheus metrics, with the names operators know from go-grpc-middleware.

One registry per Gateway (so two servers can live in one process), served as Prometheus
text at `metrics.listen`. The hot path binds label children once per method and code, so a
call costs two dict lookups and three increments, not a label resolution each time.
py-grpc-prometheus is sync-only; these are the few lines of its aio equivalent.
"""

from __future__ import annotations

import threading
from typing import Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from service.config import parse_listen
from service.observability import build

# Latency buckets for a service whose cached answers take ~0.3 ms and AWS calls ~50-500 ms.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BREAKER_STATES = {"closed": 0, "half-opened": 1, "opened": 2}
# grpc_code values as go-grpc-middleware writes them (Go's codes.Code.String()), so that
# existing dashboards and alerts work unchanged.
GO_CODE_NAMES = {
    code: "".join(part.capitalize() for part in code.name.split("_")) for code in grpc.StatusCode
} | {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}


class Metrics:
    """Every metric the gateway exports.

    `redis`: whether the gateway has a Redis (`cache.backend: redis`). Without one there is
    no `registry_gateway_redis_up` series at all: a 0 would say "Redis is down" of a
    deployment that has none, and page for it (RegistryGatewayRedisDown).
    """

    def __init__(self, *, redis: bool = False) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # What prometheus_client's default registry would have: process_* (CPU, memory,
        # open fds, start time), python_info and python_gc_*; this registry is our own.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build = Info(
            "registry_gateway_build",
            "The running build: the package version and the git commit it was built from.",
            registry=r,
        )
        self.build.info({"version": build.version(), "commit": build.commit()})
        method = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(
            "grpc_server_started", "RPCs started on the server.", method, registry=r
        )
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, regardless of success or failure.",
            [*method, "grpc_code"],
            registry=r,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Response latency of RPCs handled by the server.",
            method,
            buckets=_BUCKETS,
            registry=r,
        )
        self.cache = Counter(
            "registry_gateway_cache_requests",
            "Reads by how the cache served them.",
            ["result"],
            registry=r,
        )
        self.upstream = Counter(
            "registry_gateway_upstream_requests",
            "Calls to AWS, by operation and AWS error code (empty on success).",
            ["operation", "aws_error_code"],
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "registry_gateway_upstream_seconds",
            "Latency of calls to AWS.",
            ["operation"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.denied = Counter(
            "registry_gateway_authz_denied",
            "Calls refused for their credentials or permissions, by reason.",
            ["reason"],
            registry=r,
        )
        self.auth_failures = Counter(
            "registry_gateway_auth_failures",
            "Failed authentications, by reason (every one counted; log lines are sampled "
            "past a peer's budget).",
            ["reason"],
            registry=r,
        )
        self.unowned_slices = Counter(
            "registry_gateway_unowned_slices",
            "Slice prefixes (kind: repository or statement_sid) a reload left without an "
            "owner on a registry; what they held is kept, changed only by full writes.",
            ["registry_id", "kind"],
            registry=r,
        )
        self.policy_scope_mismatch = Counter(
            "registry_gateway_policy_scope_mismatch",
            "Reads of ECR's REGISTRY_POLICY_SCOPE that disagreed with the scope the config "
            "pins for the registry (policy_scope V1 or V2), per (account, region).",
            ["registry_id", "region"],
            registry=r,
        )
        # Changes made around the gateway (service/registry/writes/drift.py); series appear with
        # the first event of a (registry, region, resource): nothing else is known of them.
        resource = ["registry_id", "region", "resource"]
        self.drift = Counter(
            "registry_gateway_drift",
            "Changes of a registry's replication configuration or policy that no write "
            "through the gateway explains (console, Terraform, scripts), each counted once "
            "across replicas sharing Redis.",
            resource,
            registry=r,
        )
        self.overwritten_writes = Counter(
            "registry_gateway_overwritten_writes",
            "Writes that reached AWS but whose read-back held another writer's state "
            "(answered ABORTED WRITE_OVERWRITTEN).",
            resource,
            registry=r,
        )
        self.breaker = Gauge(
            "registry_gateway_breaker_state",
            "Circuit breaker per (account, region): 0 closed, 1 half-open, 2 open.",
            ["circuit"],
            registry=r,
        )
        # Registered on the first answer (or silence) of Redis, not before: until then
        # nobody knows, and an unlabelled gauge would read 0.
        self.redis_up: Gauge | None = None
        if redis:
            self.redis_up = Gauge(
                "registry_gateway_redis_up",
                "1 while the shared Redis answers, 0 while it does not (absent without Redis).",
                registry=None,
            )
        self._redis_up_registered = False
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._cache_children: dict[str, Any] = {}

    def count_cache(self, result: str) -> None:
        """Count one read by how the cache served it (label child bound once per result)."""
        child = self._cache_children.get(result)
        if child is None:
            child = self._cache_children[result] = self.cache.labels(result)
        child.inc()

    def for_method(self, full_method: str) -> MethodMetrics:
        """The pre-bound metrics of one unary method (`/package.Service/Method`)."""
        service, name = full_method.lstrip("/").rsplit("/", 1)
        return MethodMetrics(self, service, name)

    def count_change(self, event: str, registry_id: str, region: str, resource: str) -> None:
        """Count a drift (`out_of_band_change`) or an overwritten write (`overwritten`)."""
        counter = self.drift if event == "out_of_band_change" else self.overwritten_writes
        counter.labels(registry_id, region, resource).inc()

    def breaker_changed(self, circuit: str, state: str) -> None:
        """Record a breaker's new state."""
        self.breaker.labels(circuit).set(BREAKER_STATES.get(state, 2))

    def redis_available(self, available: bool) -> None:
        """Record whether Redis answers (nothing, when the gateway has no Redis)."""
        if self.redis_up is None:
            return
        self.redis_up.set(1 if available else 0)
        if not self._redis_up_registered:
            self._redis_up_registered = True
            self.registry.register(self.redis_up)

    def serve(self, listen: str) -> int:
        """Serve /metrics on `listen` (HOST:PORT) from a thread; returns the bound port."""
        host, port = parse_listen(listen)
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        bound: int = self._server.server_address[1]
        return bound

    def close(self) -> None:
        """Stop serving /metrics."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class MethodMetrics:
    """Counters and histogram of one method with its labels bound."""

    def __init__(self, metrics: Metrics, service: str, method: str) -> None:
        labels = ("unary", service, method)
        self._handled_by_code: dict[grpc.StatusCode, Any] = {}
        self._handled = metrics.handled
        self._labels = labels
        self.started = metrics.started.labels(*labels)
        self.handling = metrics.handling.labels(*labels)

    def handled(self, code: grpc.StatusCode, seconds: float) -> None:
        """Count a completed call with its code and latency."""
        child = self._handled_by_code.get(code)
        if child is None:
            child = self._handled_by_code[code] = self._handled.labels(
                *self._labels, GO_CODE_NAMES[code]
            )
        child.inc()
        self.handling.observe(seconds)
