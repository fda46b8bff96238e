"""Prometheus metrics, with the names operators know from go-grpc-middleware.

One registry per Gateway (so two servers can live in one process), served as Prometheus
text at `metrics.listen`. py-grpc-prometheus is sync-only; these are the few lines of its aio
equivalent.

The per-call series (grpc_server_started_total, grpc_server_handled_total,
grpc_server_handling_seconds) are plain numbers the event loop adds to, turned into samples
only when scraped (`_MethodCollector`, prometheus_client's documented way to export values
kept elsewhere): its own Counter and Histogram take a lock on every increment and walk a
histogram's buckets in Python, ~3 us of a cached read's ~17 us of gateway Python
(bench/hotpath.py). The exposition is the same, `_created` samples included.
"""

from __future__ import annotations

import contextlib
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any, Protocol

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
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
        # grpc_server_started / handled / handling_seconds, per method (`for_method`).
        self._methods: dict[str, MethodMetrics] = {}
        r.register(_MethodCollector(self._methods))
        # Every read counts here (a hit too): a plain count per result, like the methods'.
        self._cache_counts: dict[str, list[float]] = {}  # result -> [count, created]
        r.register(
            _PlainCounter(
                "registry_gateway_cache_requests",
                "Reads by how the cache served them.",
                "result",
                self._cache_counts,
            )
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
        # Slice writes handed between replicas (service/registry/writes/handoff.py).
        self.handed_writes = Counter(
            "registry_gateway_handed_writes",
            "Slice writes handed to another replica holding the registry's write lock, by how "
            "each ended on the replica that handed it: answered (applied or refused by the "
            "replica that took it), returned (nobody took it: applied here), lock_busy (its "
            "wait for the lock ran out, nothing written), unknown (taken and never answered: "
            "WRITE_OUTCOME_UNKNOWN); and `taken` on the replica that took another's.",
            ["outcome"],
            registry=r,
        )
        # A reporter that raised (the call's answer stands: service/pipeline/pipeline.py), and
        # audit lines that never reached the audit sink (service/observability/audit.py).
        self.reporter_failures = Counter(
            "registry_gateway_reporter_failures",
            "Reporters (metrics, tracing, access_log, audit) that raised on a call's outcome; "
            "the call's answer is unaffected.",
            ["reporter"],
            registry=r,
        )
        self.audit_lines_lost = Counter(
            "registry_gateway_audit_lines_lost",
            "Audit lines that did not reach the audit sink, by why: queue_full (the sink took "
            "nothing for 10,000 lines), write_failed, not_written (still queued when the "
            "shutdown closed the trail), closed (after it).",
            ["why"],
            registry=r,
        )
        self.destination_accepting = Gauge(
            "registry_gateway_replication_destination_accepting",
            "Per configured replication rule's cross-account destination (`account/region`) "
            "of a registry the gateway also holds: 1 while its registry policy lets the source "
            "replicate, 0 while it does not (absent when it cannot be verified). Set by the "
            "drift check.",
            ["registry_id", "region", "destination"],
            registry=r,
        )
        self.slice_over_share = Gauge(
            "registry_gateway_slice_over_share",
            "Per replication slice (tenant) of a registry and region: 1 while what it holds "
            "in AWS passes its share of the current config (a reload shrank it, or a full "
            "write filled its prefixes), 0 while within. Other tenants' slice writes may then "
            "be refused (SLICES_OVER_SHARE). Set by the drift check.",
            ["registry_id", "region", "tenant"],
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

    def count_cache(self, result: str) -> None:
        """Count one read by how the cache served it."""
        try:
            self._cache_counts[result][0] += 1
        except KeyError:  # the result's first read
            self._cache_counts[result] = [1, time.time()]

    def for_method(self, full_method: str) -> MethodMetrics:
        """The metrics of one unary method (`/package.Service/Method`), made on first use."""
        measured = self._methods.get(full_method)
        if measured is None:
            service, name = full_method.lstrip("/").rsplit("/", 1)
            measured = self._methods[full_method] = MethodMetrics(service, name, self.denied)
        return measured

    def count_change(self, event: str, registry_id: str, region: str, resource: str) -> None:
        """Count a drift (`out_of_band_change`) or an overwritten write (`overwritten`)."""
        counter = self.drift if event == "out_of_band_change" else self.overwritten_writes
        counter.labels(registry_id, region, resource).inc()

    def count_handed(self, outcome: str) -> None:
        """Count a slice write handed over (or taken from another replica) by outcome."""
        self.handed_writes.labels(outcome).inc()

    def audit_lost(self, why: str, lines: int) -> None:
        """Count audit lines lost (AuditLog's `lost`; called from its writer thread too)."""
        self.audit_lines_lost.labels(why).inc(lines)

    def destination_judged(
        self, registry_id: str, region: str, destination: str, accepting: bool | None
    ) -> None:
        """Record whether a destination accepts replication (None: not verified, unset)."""
        if accepting is None:
            # Never set: nothing to remove.
            with contextlib.suppress(KeyError):
                self.destination_accepting.remove(registry_id, region, destination)
            return
        self.destination_accepting.labels(registry_id, region, destination).set(
            1 if accepting else 0
        )

    def slice_judged(self, registry_id: str, region: str, tenant: str, over: bool | None) -> None:
        """Record whether a tenant's slice passes its share (None: no slice any more)."""
        if over is None:
            with contextlib.suppress(KeyError):
                self.slice_over_share.remove(registry_id, region, tenant)
            return
        self.slice_over_share.labels(registry_id, region, tenant).set(1 if over else 0)

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


class Ended(Protocol):
    """What `MethodMetrics.post_call` reads of a call's outcome (the pipeline's Outcome)."""

    code: grpc.StatusCode
    reason: str | None
    seconds: float


class MethodMetrics:
    """grpc_server_started / handled / handling_seconds of one method: plain numbers.

    Only the event loop's thread adds to them; a scrape (the metrics server's thread) reads
    them under the GIL, at worst one call behind in one of the figures, never torn.

    Also the method's metrics reporter (`post_call`, named "metrics"): the pipeline's plan
    of the method holds it directly, one call per call rather than a reporter's and this
    one's (service/pipeline/reporters.py)."""

    name = "metrics"

    __slots__ = (
        "_buckets",
        "_codes",
        "_denied",
        "_handled",
        "_ok",
        "created",
        "handled_created",
        "labels",
        "started",
        "sum",
    )

    def __init__(self, service: str, method: str, denied: Counter | None = None) -> None:
        self.labels = ("unary", service, method)
        # registry_gateway_authz_denied (by reason), counted with the call's code.
        self._denied = denied
        self.started = 0
        # OK counted apart, found by identity: hashing a StatusCode runs enum's __hash__ in
        # Python (~0.3 us a lookup), and nearly every call is OK.
        self._ok = 0
        self._handled: dict[grpc.StatusCode, int] = {}  # every other code
        self._codes: list[grpc.StatusCode] = []  # in the order first seen (the exposition's)
        self.handled_created: dict[grpc.StatusCode, float] = {}
        # Calls per latency bucket (not cumulative), the last one +Inf.
        self._buckets = [0] * (len(_BUCKETS) + 1)
        self.sum = 0.0
        self.created = time.time()

    def start(self) -> None:
        """Count a call started (the pipeline adds to `started` itself, on the hot path)."""
        self.started += 1

    def post_call(self, outcome: Ended) -> None:
        """Count a completed call by its code, with its latency, and a denial by reason
        (`handled`, written out: this runs on every call)."""
        code = outcome.code
        seconds = outcome.seconds
        if code is _OK and self._ok:
            self._ok += 1
        else:
            self._count(code)
        self._buckets[bisect_left(_BUCKETS, seconds)] += 1
        self.sum += seconds
        if (code is _UNAUTHENTICATED or code is _PERMISSION_DENIED) and self._denied is not None:
            self._denied.labels(outcome.reason or code.name).inc()

    def handled(self, code: grpc.StatusCode, seconds: float) -> None:
        """Count a completed call with its code and latency."""
        if code is _OK and self._ok:
            self._ok += 1
        else:
            self._count(code)
        # A bucket's bound is inclusive (le): the first bound >= seconds.
        self._buckets[bisect_left(_BUCKETS, seconds)] += 1
        self.sum += seconds

    def _count(self, code: grpc.StatusCode) -> None:
        """Count a call of `code`: any code but OK, or the first OK."""
        if code not in self.handled_created:
            self.handled_created[code] = time.time()
            self._codes.append(code)
        if code is _OK:
            self._ok += 1
        else:
            self._handled[code] = self._handled.get(code, 0) + 1

    def handled_counts(self) -> list[tuple[grpc.StatusCode, int]]:
        """Calls completed, by code, in the order each code was first seen (a copy)."""
        ok, handled = self._ok, self._handled
        # `get`: a scrape may come between a new code's listing and its first count.
        return [(code, ok if code is _OK else handled.get(code, 0)) for code in list(self._codes)]

    def cumulative_buckets(self) -> list[tuple[str, float]]:
        """The histogram's buckets as exposed: `le` labels and cumulative counts."""
        total = 0.0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*_BOUNDS, "+Inf"), list(self._buckets), strict=True):
            total += count
            out.append((bound, total))
        return out


_OK = grpc.StatusCode.OK
# Compared by identity: a set lookup hashes the StatusCode with enum's __hash__, in Python.
_UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
_PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
# The `le` labels prometheus_client writes for _BUCKETS (Go's float formatting: "1.0").
_BOUNDS = tuple(repr(float(bound)) for bound in _BUCKETS)
_METHOD_LABELS = ("grpc_type", "grpc_service", "grpc_method")


class _PlainCounter:
    """A counter of one label whose values are plain numbers (`counts`: label value ->
    [count, created]), turned into samples when scraped."""

    def __init__(self, name: str, documentation: str, label: str, counts: dict[str, Any]) -> None:
        self._name, self._documentation, self._label = name, documentation, label
        self._counts = counts

    def describe(self) -> list[Metric]:
        """The family's name, without samples."""
        return [CounterMetricFamily(self._name, self._documentation, labels=(self._label,))]

    def collect(self) -> Iterator[Metric]:
        """The family with every value's sample."""
        family = CounterMetricFamily(self._name, self._documentation, labels=(self._label,))
        for value, (count, created) in list(self._counts.items()):
            family.add_metric((value,), count, created=created)
        yield family


class _MethodCollector:
    """Turns every method's numbers into the three families, when scraped."""

    def __init__(self, methods: dict[str, MethodMetrics]) -> None:
        self._methods = methods

    def describe(self) -> list[Metric]:
        """The families' names (for the registry's duplicate check), without samples."""
        return self._families([])

    def collect(self) -> Iterator[Metric]:
        """The families with every method's samples."""
        return iter(self._families(list(self._methods.values())))

    @staticmethod
    def _families(methods: list[MethodMetrics]) -> list[Metric]:
        started = CounterMetricFamily(
            "grpc_server_started", "RPCs started on the server.", labels=_METHOD_LABELS
        )
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "RPCs completed on the server, regardless of success or failure.",
            labels=(*_METHOD_LABELS, "grpc_code"),
        )
        handling = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Response latency of RPCs handled by the server.",
            labels=_METHOD_LABELS,
        )
        created: list[Any] = []
        for m in methods:
            started.add_metric(m.labels, m.started, created=m.created)
            for code, count in m.handled_counts():
                handled.add_metric(
                    (*m.labels, GO_CODE_NAMES[code]), count, created=m.handled_created[code]
                )
            handling.add_metric(m.labels, m.cumulative_buckets(), m.sum)
            created.append(m)
        # HistogramMetricFamily takes no `created`: the samples prometheus_client's own
        # Histogram writes, appended as it writes them (after every method's others).
        for m in created:
            handling.add_sample(
                "grpc_server_handling_seconds_created",
                dict(zip(_METHOD_LABELS, m.labels, strict=True)),
                m.created,
            )
        return [started, handled, handling]
