"""Composition: the gateway's object graph built from config, with no I/O.

`compose` wires the parts (upstream, cache, locks, history, drift, pipeline, servicer, the
gRPC and HTTP servers) from the config and from what the lifecycle opened and passes in
(the audit trail's file, the TLS certificates read, the tenancy with its JWKS, tracing's
exporter thread). It binds no port, opens no Redis connection (redis-py connects on the
first command) and opens no file: binding, probing, draining and signals are the
lifecycle's (service/app/server.py), which calls it once.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service.app.drift_check import DriftCheck, OverShareWatch
from service.auth.content import ContentRules
from service.auth.failures import AuthFailures
from service.auth.targets import Target
from service.auth.tenancy import TenancyHolder
from service.aws.upstream import SessionFactory, Upstream
from service.call import time_left
from service.config import ConfigError, GatewayConfig, registry_regions
from service.gen.v1 import registry_pb2 as pb
from service.http.listener import HttpListener
from service.http.transport import ConnectPipeline, ConnectService
from service.observability.audit import AuditLog
from service.observability.metrics import Metrics
from service.observability.tracing import Tracing
from service.pipeline.pipeline import Pipeline
from service.pipeline.slots import CallSlots
from service.registry.rpcs.destination_watch import DestinationWatch
from service.registry.rpcs.validation import RequestValidator
from service.registry.writes.drift import DriftDetector
from service.registry.writes.handoff import RedisHandOff
from service.registry.writes.operations import RegistryOperations
from service.rpc import interceptor, reflection
from service.rpc.messages import TimeToMessage
from service.rpc.request_limits import largest_request_bytes
from service.rpc.servicer import RegistryConfigServicer, add_to_server
from service.state.cache import MemoryStore, ReadCache, RedisStore, Store
from service.state.claims import MemoryClaims, RedisClaims
from service.state.clock import RedisClock
from service.state.history import HistoryStore, MemoryHistory, RedisHistory
from service.state.locks import LockReplication, RedisRegistryLocks, RegistryLocks
from service.state.ratelimit import build_rate_limiter, build_upstream_budget
from service.state.redis_connect import redis_client as build_redis_client
from service.state.redis_keys import RedisClient

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RegistryConfigService"].full_name
# A write lock is renewed for at most the longest deadline plus this: what a write, its
# settlement after its caller left included, may take (service/state/locks.py).
LOCK_HOLD_MARGIN_SECONDS = 5.0


def redis_password(env_name: str | None, environ: Mapping[str, str]) -> str | None:
    """Redis's password from the environment variable `cache.redis_password_env` names."""
    if env_name is None:
        return None
    value = environ.get(env_name)
    if not value:
        raise ConfigError(
            f"config error: cache.redis_password_env: environment variable {env_name} "
            "is not set or empty"
        )
    return value


def channel_options(config: GatewayConfig, reuse_port: bool) -> list[tuple[str, int]]:
    """The API servers' grpc options."""
    s = config.server
    return [
        # grpcio turns SO_REUSEPORT on by default, so a second server on a taken port would
        # bind silently; only `--workers` wants it.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # No legitimate request is larger than the largest RPC's bound under ECR's limits
        # (~340 KB): grpc's core refuses anything larger before a byte of it reaches Python.
        ("grpc.max_receive_message_length", min(s.max_message_bytes, largest_request_bytes())),
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.keepalive_time_ms", int(s.keepalive_time_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_pings_without_data", 0),
        # Rebalances long-lived client connections across replicas.
        ("grpc.max_connection_age_ms", int(s.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(s.grace_seconds * 1000)),
        # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: a client's further streams wait in the
        # client (or are refused), so one connection opens no more calls than this at once.
        ("grpc.max_concurrent_streams", s.max_streams_per_connection),
    ]


def first_targets(config: GatewayConfig) -> list[Target]:
    """One target per configured registry account, in its first region: what the start-up
    probe asks."""
    seen: dict[tuple[str, str], Target] = {}
    for tenant in config.tenants:
        for registry in tenant.registries:
            region = registry_regions(config, registry)[0]
            seen.setdefault((registry.registry_id, region), Target(tenant.name, registry, region))
    return list(seen.values())


def every_target(config: GatewayConfig) -> list[Target]:
    """One target per configured (registry, region): what the drift check reads."""
    seen: dict[tuple[str, str], Target] = {}
    for tenant in config.tenants:
        for registry in tenant.registries:
            for region in registry_regions(config, registry):
                seen.setdefault(
                    (registry.registry_id, region), Target(tenant.name, registry, region)
                )
    return list(seen.values())


@dataclass(frozen=True, slots=True)
class Parts:
    """The gateway's object graph, built by `compose`; nothing in it is started."""

    redis: RedisClient | None
    health: health.aio.HealthServicer
    upstream: Upstream
    history: HistoryStore
    locks: RegistryLocks | RedisRegistryLocks
    drift: DriftDetector
    pipeline: Pipeline
    call_slots: CallSlots
    server: grpc.aio.Server
    operations: RegistryOperations
    drift_check: DriftCheck
    servicer: RegistryConfigServicer
    http: HttpListener | None
    # The probes' own server (`server.health_listen`), its port not bound yet.
    health_server: grpc.aio.Server | None


def compose(
    config: GatewayConfig,
    *,
    metrics: Metrics,
    tracing: Tracing,
    tenancy: TenancyHolder,
    audit: AuditLog,
    environ: Mapping[str, str],
    redis_secret: str | None,
    session_factory: SessionFactory,
    reuse_port: bool,
    spawn: Callable[[Coroutine[Any, Any, None]], None],
    on_redis_availability: Callable[[bool], None],
) -> Parts:
    """Build the gateway's parts from config and the sinks passed in; no I/O.

    `redis_secret` is `redis_password(config.cache.redis_password_env, environ)`, read by
    the lifecycle first (a missing one stops the start before any file is opened).

    `spawn` runs a background task the lifecycle cancels at shutdown (a lock release Redis
    did not answer); `on_redis_availability` hears the cache's word on Redis."""
    upstream = Upstream(
        config.aws,
        session_factory=session_factory,
        environ=environ,
        time_left=time_left,
        metrics=metrics,
        tracing=tracing,
    )
    # One URL or the primary found through Sentinel, behind a circuit: a Redis that stops
    # answering is waited for once (1 s), then every command fails fast until a probe
    # answers (service/state/redis_connect.py, service/state/redis_circuit.py). Or a Redis
    # Cluster, whose keys are hash-tagged per registry and region, per tenant
    # (service/state/redis_keys.py).
    redis_client = (
        build_redis_client(config.cache, redis_secret, environ)
        if config.cache.backend == "redis"
        else None
    )
    health_servicer = health.aio.HealthServicer()
    # The recent versions of each registry's configuration and policy, in the cache's
    # store, and the drift detector observing every read from AWS against them.
    history = _history(config, redis_client)
    # The write locks, which the drift detector asks too: a read racing a write that is
    # not recorded yet is not drift (service/registry/writes/drift.py).
    locks = _locks(config, redis_client, spawn)
    # Times replicas compare are on Redis's clock, whatever their own clocks say.
    shared_clock = (
        RedisClock(redis_client, key_prefix=config.cache.key_prefix)
        if redis_client is not None
        else None
    )
    drift = DriftDetector(
        history,
        audit,
        metrics.count_change,
        config=lambda: tenancy.current.config,
        skew_seconds=config.drift.clock_skew_seconds,
        locks=locks,
        shared_clock=shared_clock,
    )
    # One pipeline (gates, reporters), built once and run by the gRPC and the HTTP
    # transport alike: a tenant's rate and upstream budget, an address's failed
    # authentications, the metrics and the audit are the same over either.
    pipeline = Pipeline(
        config.server,
        tenancy,
        rate_limiter=build_rate_limiter(config.rate_limit, redis_client, config.cache.key_prefix),
        upstream_budget=build_upstream_budget(
            config.aws.tenant_upstream_per_second,
            config.aws.tenant_upstream_burst,
            redis_client,
            config.cache.key_prefix,
        ),
        auth_failures=AuthFailures(config.auth.failures_per_second, config.auth.failures_burst),
        audit=audit,
        metrics=metrics,
        tracing=tracing,
        hit_log_sample_rate=config.logs.hit_sample_rate,
    )
    # No `maximum_concurrent_rpcs`: grpc.aio counts a call from its headers, before anyone
    # is known, so strangers' streams that never send a message would hold every slot.
    # The interceptor counts instead, from the headers too but per tenant once it knows
    # who calls, and per address for health and reflection (service/pipeline/slots.py).
    call_slots = CallSlots(
        config.server.max_concurrent_rpcs,
        config.server.max_calls_in_flight_per_tenant,
        config.server.max_unauthenticated_calls_per_address,
    )
    server = grpc.aio.server(
        interceptors=[
            interceptor.GatewayInterceptor(
                pipeline,
                call_slots,
                TimeToMessage(config.server.message_timeout_seconds),
                # No TLS listener, no client certificate: auth_context() is not read.
                tls=any(lst.tls for lst in config.effective_listeners()),
            )
        ],
        options=channel_options(config, reuse_port),
    )
    operations = RegistryOperations(
        upstream,
        locks,
        _cache(config, redis_client, metrics, on_redis_availability),
        max_writes_per_tenant=config.server.max_writes_in_flight_per_tenant,
        max_writes_per_batch=config.cache.max_writes_per_batch,
        drift=drift,
        # Slice writes handed to the replica holding a registry's lock, so that replicas'
        # batches go together rather than in turns (service/registry/writes/handoff.py).
        handoff=RedisHandOff(redis_client, config.cache.key_prefix)
        if redis_client is not None and config.cache.hand_over_writes
        else None,
        count_handed=metrics.count_handed,
        # Which of a tenant's writes came later, across replicas: on Redis's clock.
        shared_now=_shared_now(shared_clock) if shared_clock is not None else None,
    )
    # Reads every configured (registry, region) once a period, so drift is seen when
    # nobody calls (service/app/drift_check.py); started with the server. From the current
    # config: a reload adds or drops registries for the next drift check.
    drift_check = DriftCheck(
        operations,
        lambda: every_target(tenancy.current.config),
        RedisClaims(redis_client, config.cache.key_prefix)
        if redis_client is not None
        else MemoryClaims(),
        config.drift.check_seconds,
        # ... and judges its rules' cross-account destinations again.
        destinations=DestinationWatch(
            operations, lambda: tenancy.current.config, audit, metrics.destination_judged
        ).rejudge,
        # ... and counts it against the current config's shares (slices a reload left over
        # their shares: gauge, audit event).
        over_share=OverShareWatch(
            lambda: tenancy.current.config, audit, metrics.slice_judged
        ).judge,
    )
    servicer = RegistryConfigServicer(
        ContentRules(),
        operations,
        RequestValidator(
            allow_unknown_regions=config.aws.allow_unknown_regions,
            policy_scopes=upstream.policy_scopes,
        ),
        history=history,
        tenancy=lambda: tenancy.current,
    )
    add_to_server(servicer, server)
    # --- HTTP/JSON (Connect) listener, service/http/: the same gates' state, reporters'
    # sinks and servicer as the gRPC server above; off without `http.listen`.
    http: HttpListener | None = None
    if config.http.listen is not None:
        http = HttpListener(
            config.http,
            config.server,
            ConnectPipeline(pipeline, call_slots),
            ConnectService(servicer),
            reuse_port=reuse_port,
        )
    # --- end of the HTTP listener
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.server.reflection:
        reflection.enable(
            server,
            [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name],
        )
    return Parts(
        redis=redis_client,
        health=health_servicer,
        upstream=upstream,
        history=history,
        locks=locks,
        drift=drift,
        pipeline=pipeline,
        call_slots=call_slots,
        server=server,
        operations=operations,
        drift_check=drift_check,
        servicer=servicer,
        http=http,
        health_server=_health_server(config, pipeline, health_servicer, reuse_port),
    )


def _shared_now(clock: RedisClock) -> Callable[[], Awaitable[float]]:
    """Redis's clock as read here: this clock plus the last offset measured, refreshed in
    the background (one reading at a time) once it is a second old. No slice write waits
    for a TIME: a paused or slow Redis would add its bound to each (the offset moves with
    clock drift, microseconds a second)."""
    measured = [-math.inf, 0.0]  # when (monotonic), the offset
    reading: list[asyncio.Task[None]] = []

    async def refresh() -> None:
        try:
            measured[1] = await clock.offset(time.time)
        finally:
            measured[0] = time.monotonic()
            reading.clear()

    async def now() -> float:
        if not reading and time.monotonic() - measured[0] >= 1.0:
            # Its own context: the reading belongs to no caller.
            reading.append(
                asyncio.get_running_loop().create_task(refresh(), context=contextvars.Context())
            )
        return time.time() + measured[1]

    return now


def _health_server(
    config: GatewayConfig,
    pipeline: Pipeline,
    health_servicer: health.aio.HealthServicer,
    reuse_port: bool,
) -> grpc.aio.Server | None:
    """The probes' server on `server.health_listen`, if any (bound by the lifecycle)."""
    if config.server.health_listen is None:
        return None
    # Same HealthServicer: the probe port sees exactly what the API ports report.
    # Its own slots per address (a stranger on the API port cannot fill the probes'),
    # the same time-to-message limit and streams per connection; no tenant calls
    # here (only health is served), hence a tenant cap of 1; the server's cap bounds
    # the probes' unauthenticated calls in all.
    probe_slots = CallSlots(
        config.server.max_concurrent_rpcs,
        1,
        config.server.max_unauthenticated_calls_per_address,
    )
    server = grpc.aio.server(
        interceptors=[
            interceptor.GatewayInterceptor(
                pipeline,
                probe_slots,
                TimeToMessage(config.server.message_timeout_seconds),
            )
        ],
        options=[
            ("grpc.so_reuseport", int(reuse_port)),
            ("grpc.max_concurrent_streams", config.server.max_streams_per_connection),
        ],
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server


def _cache(
    config: GatewayConfig,
    redis_client: RedisClient | None,
    metrics: Metrics,
    on_redis_availability: Callable[[bool], None],
) -> ReadCache:
    cache = config.cache
    store: Store
    if redis_client is not None:
        store = RedisStore(
            redis_client,
            cache.key_prefix,
            cache.max_entries,
            on_availability=on_redis_availability,
        )
    else:
        store = MemoryStore(cache.max_entries)
    return ReadCache(cache, store, count=metrics.count_cache)


def _history(config: GatewayConfig, redis_client: RedisClient | None) -> HistoryStore:
    history = config.history
    if redis_client is not None:
        return RedisHistory(
            redis_client, config.cache.key_prefix, history.max_versions, history.max_bytes
        )
    return MemoryHistory(history.max_versions, history.max_bytes)


def _locks(
    config: GatewayConfig,
    redis_client: RedisClient | None,
    spawn: Callable[[Coroutine[Any, Any, None]], None],
) -> RegistryLocks | RedisRegistryLocks:
    if redis_client is None:
        return RegistryLocks(time_left, max_wait_seconds=config.server.max_deadline_seconds)
    # A short expiry renewed while held (up to the longest a write may take): a live
    # writer keeps its lock, a dead replica's frees within the TTL. A writer waits for the
    # lock no longer than its deadline allows (WRITE_LOCK_BUSY), and a release Redis does
    # not answer is retried in the background (`spawn`: cancelled at shutdown).
    longest = config.server.max_deadline_seconds
    return RedisRegistryLocks(
        redis_client,
        config.cache.key_prefix,
        config.cache.lock_ttl_seconds,
        time_left,
        max_wait_seconds=longest,
        max_hold_seconds=longest + LOCK_HOLD_MARGIN_SECONDS,
        spawn=spawn,
        # With Sentinel a replica exists to be promoted: an acquisition waits for its
        # acknowledgement (service/state/locks.py, LockReplication). On a cluster, the
        # replica of the lock's shard, where it has one.
        replication=LockReplication()
        if config.cache.redis_mode() in ("sentinel", "cluster")
        else None,
    )
