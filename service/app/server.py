"""Builds the gRPC server from config and runs it: listeners, reflection, health, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

import aioboto3
import grpc
import redis.asyncio as redis
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ProxyConnectionError,
    ReadTimeoutError,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export import SpanExporter
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.app.drift_check import DriftCheck
from service.app.gc_pause import gc_paused
from service.app.reload import Reloader
from service.auth.content import ContentRules
from service.auth.failures import AuthFailures
from service.auth.targets import Target
from service.auth.tenancy import TenancyHolder, build_tenancy
from service.aws.upstream import Reachability, SessionFactory, Upstream
from service.bounded_gather import gather_bounded
from service.call import time_left
from service.config import (
    ConfigError,
    GatewayConfig,
    ListenerConfig,
    parse_listen,
    registry_regions,
)
from service.echo import echo
from service.errors import GatewayError
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.http.listener import HttpListener
from service.http.transport import ConnectPipeline, ConnectService
from service.observability.audit import AuditLog
from service.observability.metrics import Metrics
from service.observability.tracing import Tracing
from service.pipeline.pipeline import Pipeline
from service.pipeline.slots import CallSlots
from service.registry.rpcs.validation import RequestValidator
from service.registry.writes.drift import DriftDetector
from service.registry.writes.operations import RegistryOperations
from service.rpc import interceptor, reflection
from service.rpc.messages import TimeToMessage
from service.rpc.request_limits import largest_request_bytes
from service.rpc.servicer import RegistryConfigServicer
from service.rpc.tls import TlsCredentials
from service.state.cache import MemoryStore, ReadCache, RedisStore, Store
from service.state.claims import MemoryClaims, RedisClaims
from service.state.clock import RedisClock
from service.state.history import HistoryStore, MemoryHistory, RedisHistory
from service.state.locks import RedisRegistryLocks, RegistryLocks
from service.state.ratelimit import build_rate_limiter, build_upstream_budget
from service.state.redis_circuit import circuit_client

log = logging.getLogger("registry_gateway.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RegistryConfigService"].full_name


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


# Health entry that tells whether the shared Redis cache is reachable.
REDIS_HEALTH = "registry-gateway.redis"
# A write lock is renewed for at most the longest deadline plus this: what a write, its
# settlement after its caller left included, may take (service/state/locks.py).
LOCK_HOLD_MARGIN_SECONDS = 5.0
# How often Redis is pinged besides the cache's own calls, so that redis_up and its health
# entry stay true on a replica no call reaches (an idle one would otherwise keep its last word).
REDIS_PROBE_SECONDS = 15.0
# At shutdown, how long calls the server cut still get to unwind and be reported (their
# audit lines) before the audit trail closes, past settle_seconds if need be.
REPORT_SECONDS = 1.0


class BindError(Exception):
    """The listen address cannot be bound (taken, or not an address of this host)."""


# AWS error codes saying the gateway's own credentials are refused (STS, or the role's).
_ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidAccessKeyId",
    }
)
# What the gateway's own refusals (service/aws/upstream.py) mean for the diagnosis.
_GATEWAY_REASONS = {"NO_AWS_CREDENTIALS": "NO_CREDENTIALS"}


def diagnose(result: Reachability, timeout_seconds: float) -> tuple[str, str] | None:
    """Why an account did not answer as it should, as (REASON, a sentence for operators);
    None when it did. Never a credential: botocore and AWS name none in these errors."""
    exc = result.error
    if exc is None:
        return None
    if isinstance(exc, TimeoutError | ConnectTimeoutError | ReadTimeoutError):
        where = getattr(exc, "kwargs", {}).get("endpoint_url")
        at = f" at {where}" if where else ""
        return (
            "TIMEOUT",
            f"STS GetCallerIdentity{at} did not answer within {timeout_seconds:g} s "
            "(network path, proxy or VPC endpoint?)",
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return (
            "NO_CREDENTIALS",
            f"no usable AWS credentials ({type(exc).__name__}): none found in the "
            "environment, profile, web identity (IRSA) or instance/pod role",
        )
    if isinstance(exc, EndpointConnectionError | ProxyConnectionError):
        where = exc.kwargs.get("endpoint_url") or exc.kwargs.get("proxy_url") or "AWS"
        return "ENDPOINT_REFUSED", f"cannot connect to {echo(where)}: refused or unreachable"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        said = echo(str(error.get("Message", "")), 300)
        operation = exc.operation_name
        if code in _ACCESS_DENIED_CODES:
            return (
                "ACCESS_DENIED",
                f"AWS refused the gateway's credentials on {operation}: {code}: {said}",
            )
        return "AWS_ERROR", f"AWS answered {operation} with {code}: {said}"
    if isinstance(exc, GatewayError):
        reason = exc.reason or "REFUSED"
        return _GATEWAY_REASONS.get(reason, reason), exc.message
    return "AWS_CLIENT_ERROR", f"{type(exc).__name__}: {echo(str(exc), 300)}"


def _channel_options(config: GatewayConfig, reuse_port: bool) -> list[tuple[str, int]]:
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


class Gateway:
    """One gateway server: its gRPC server, health service and upstream, built from config."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        session_factory: SessionFactory = aioboto3.Session,
        environ: Mapping[str, str] | None = None,
        config_path: str | Path | None = None,
        reuse_port: bool = False,
        span_exporter: SpanExporter | None = None,
    ) -> None:
        self.config = config
        # No redis_up series at all without Redis: a 0 would page for a Redis nobody runs.
        self.metrics = Metrics(redis=config.cache.backend == "redis")
        self._environ = os.environ if environ is None else environ
        # OTEL_* variables of this environment count too (service/observability/tracing.py).
        self.tracing = Tracing(config.tracing, span_exporter, environ=self._environ)
        self.tenancy = TenancyHolder(build_tenancy(config, self._environ))
        self.upstream = Upstream(
            config.aws,
            session_factory=session_factory,
            environ=self._environ,
            time_left=time_left,
            metrics=self.metrics,
            tracing=self.tracing,
        )
        # No client-side retries: the rate limiter fails open at once when Redis is away
        # (redis-py would otherwise retry a refused connection with backoff on every call).
        # Behind a circuit: a Redis that stops answering is waited for once (1 s), then every
        # command fails fast until a probe answers (service/state/redis_circuit.py).
        self.redis = (
            circuit_client(
                config.cache.redis_url,
                password=redis_password(config.cache.redis_password_env, self._environ),
                socket_timeout=1.0,
                socket_connect_timeout=1.0,
                retry=Retry(NoBackoff(), 0),
            )
            if config.cache.backend == "redis"
            else None
        )
        # Written by a thread of its own; lines it loses are counted (audit.py).
        self.audit = AuditLog(config.audit, lost=self.metrics.audit_lost)
        self.health = health.aio.HealthServicer()
        # The recent versions of each registry's configuration and policy, in the cache's
        # store, and the drift detector observing every read from AWS against them.
        self.history = self._history()
        # The write locks, which the drift detector asks too: a read racing a write that is
        # not recorded yet is not drift (service/registry/writes/drift.py).
        self.locks = self._locks()
        self.drift = DriftDetector(
            self.history,
            self.audit,
            self.metrics.count_change,
            config=lambda: self.tenancy.current.config,
            skew_seconds=config.drift.clock_skew_seconds,
            locks=self.locks,
            # Times replicas compare are on Redis's clock, whatever their own clocks say.
            shared_clock=RedisClock(self.redis) if self.redis is not None else None,
        )
        # One pipeline (gates, reporters), built once and run by the gRPC and the HTTP
        # transport alike: a tenant's rate and upstream budget, an address's failed
        # authentications, the metrics and the audit are the same over either.
        self.pipeline = Pipeline(
            config.server,
            self.tenancy,
            rate_limiter=build_rate_limiter(config.rate_limit, self.redis, config.cache.key_prefix),
            upstream_budget=build_upstream_budget(
                config.aws.tenant_upstream_per_second,
                config.aws.tenant_upstream_burst,
                self.redis,
                config.cache.key_prefix,
            ),
            auth_failures=AuthFailures(config.auth.failures_per_second, config.auth.failures_burst),
            audit=self.audit,
            metrics=self.metrics,
            tracing=self.tracing,
            hit_log_sample_rate=config.logs.hit_sample_rate,
        )
        # No `maximum_concurrent_rpcs`: grpc.aio counts a call from its headers, before anyone
        # is known, so strangers' streams that never send a message would hold every slot.
        # The interceptor counts instead, from the headers too but per tenant once it knows
        # who calls, and per address for health and reflection (service/pipeline/slots.py).
        self.call_slots = CallSlots(
            config.server.max_concurrent_rpcs,
            config.server.max_calls_in_flight_per_tenant,
            config.server.max_unauthenticated_calls_per_address,
        )
        self.server = grpc.aio.server(
            interceptors=[
                interceptor.GatewayInterceptor(
                    self.pipeline,
                    self.call_slots,
                    TimeToMessage(config.server.message_timeout_seconds),
                    # No TLS listener, no client certificate: auth_context() is not read.
                    tls=any(lst.tls for lst in config.effective_listeners()),
                )
            ],
            options=_channel_options(config, reuse_port),
        )
        self.operations = RegistryOperations(
            self.upstream,
            self.locks,
            self._cache(),
            max_writes_per_tenant=config.server.max_writes_in_flight_per_tenant,
            drift=self.drift,
        )
        # Reads every configured (registry, region) once a period, so drift is seen when
        # nobody calls (service/app/drift_check.py); started with the server.
        self.drift_check = DriftCheck(
            self.operations,
            self._every_target,
            RedisClaims(self.redis, config.cache.key_prefix)
            if self.redis is not None
            else MemoryClaims(),
            config.drift.check_seconds,
        )
        servicer = RegistryConfigServicer(
            ContentRules(),
            self.operations,
            RequestValidator(
                allow_unknown_regions=config.aws.allow_unknown_regions,
                policy_scopes=self.upstream.policy_scopes,
            ),
            history=self.history,
        )
        pb_grpc.add_RegistryConfigServiceServicer_to_server(servicer, self.server)
        # --- HTTP/JSON (Connect) listener, service/http/: the same gates' state, reporters'
        # sinks and servicer as the gRPC server above; off without `http.listen`.
        self.http: HttpListener | None = None
        self.http_port = 0
        if config.http.listen is not None:
            self.http = HttpListener(
                config.http,
                config.server,
                ConnectPipeline(self.pipeline, self.call_slots),
                ConnectService(servicer),
                reuse_port=reuse_port,
            )
        # --- end of the HTTP listener
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if config.server.reflection:
            reflection.enable(
                self.server,
                [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name],
            )
        self.tls = [TlsCredentials(lst.tls) for lst in config.effective_listeners() if lst.tls]
        self.reloader = (
            Reloader(config_path, self.tenancy, self.tls, self._environ, metrics=self.metrics)
            if config_path
            else None
        )
        self.ports: list[int] = []
        self.metrics_port = 0
        self.health_server: grpc.aio.Server | None = None
        self.health_port = 0
        if config.server.health_listen is not None:
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
            self.health_server = grpc.aio.server(
                interceptors=[
                    interceptor.GatewayInterceptor(
                        self.pipeline,
                        probe_slots,
                        TimeToMessage(config.server.message_timeout_seconds),
                    )
                ],
                options=[
                    ("grpc.so_reuseport", int(reuse_port)),
                    ("grpc.max_concurrent_streams", config.server.max_streams_per_connection),
                ],
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            host, port = parse_listen(config.server.health_listen)
            try:
                self.health_port = self.health_server.add_insecure_port(f"{host}:{port}")
            except RuntimeError:
                self.health_port = 0
            if self.health_port == 0:
                raise BindError(f"cannot listen on {config.server.health_listen} (health)")
        self._background: set[asyncio.Task[None]] = set()
        self._redis_answers: bool | None = None
        # (account, region) -> (reason, why) of each account that did not answer as it
        # should at its last probe: what the start-up diagnosis last said of it.
        self._account_problems: dict[tuple[str, str], tuple[str, str]] = {}
        # Registries whose account did not answer at the last probe (not merely refused).
        self._unanswered: set[str] = set()

    def _cache(self) -> ReadCache:
        cache = self.config.cache
        store: Store
        if self.redis is not None:
            store = RedisStore(
                self.redis,
                cache.key_prefix,
                cache.max_entries,
                on_availability=self._redis_health,
            )
        else:
            store = MemoryStore(cache.max_entries)
        return ReadCache(cache, store, count=self.metrics.count_cache)

    def _history(self) -> HistoryStore:
        history = self.config.history
        if self.redis is not None:
            return RedisHistory(
                self.redis, self.config.cache.key_prefix, history.max_versions, history.max_bytes
            )
        return MemoryHistory(history.max_versions, history.max_bytes)

    def _locks(self) -> RegistryLocks | RedisRegistryLocks:
        if self.redis is None:
            return RegistryLocks(
                time_left, max_wait_seconds=self.config.server.max_deadline_seconds
            )
        # A short expiry renewed while held (up to the longest a write may take): a live
        # writer keeps its lock, a dead replica's frees within the TTL. A writer waits for the
        # lock no longer than its deadline allows (WRITE_LOCK_BUSY), and a release Redis does
        # not answer is retried in the background (`_spawn`: cancelled at shutdown).
        longest = self.config.server.max_deadline_seconds
        return RedisRegistryLocks(
            self.redis,
            self.config.cache.key_prefix,
            self.config.cache.lock_ttl_seconds,
            time_left,
            max_wait_seconds=longest,
            max_hold_seconds=longest + LOCK_HOLD_MARGIN_SECONDS,
            spawn=self._spawn,
        )

    def _targets(self) -> list[Target]:
        seen: dict[tuple[str, str], Target] = {}
        for tenant in self.config.tenants:
            for registry in tenant.registries:
                region = registry_regions(self.config, registry)[0]
                seen.setdefault(
                    (registry.registry_id, region), Target(tenant.name, registry, region)
                )
        return list(seen.values())

    def _every_target(self) -> list[Target]:
        """One target per configured (registry, region), from the current config (a reload
        adds or drops registries for the next drift check)."""
        config = self.tenancy.current.config
        seen: dict[tuple[str, str], Target] = {}
        for tenant in config.tenants:
            for registry in tenant.registries:
                for region in registry_regions(config, registry):
                    seen.setdefault(
                        (registry.registry_id, region), Target(tenant.name, registry, region)
                    )
        return list(seen.values())

    async def _any_upstream_reachable(self) -> bool:
        """Probe every (account, region) once, say what changed for each, and answer
        whether any AWS account answered. `aws.probe_concurrency` probes at a time, each
        within its own timeout; one still waiting past `aws.connect_timeout_seconds` gives
        its place to the next (service/bounded_gather.py), so readiness grows with the
        probes' work, and an account that does not answer holds no other back."""
        targets = self._targets()
        if not targets:
            return True
        aws = self.config.aws
        results = await gather_bounded(
            [functools.partial(self.upstream.reachable, t) for t in targets],
            limit=aws.probe_concurrency,
            patience=aws.connect_timeout_seconds,
        )
        for target, result in zip(targets, results, strict=True):
            self._report_account(target, result)
        self._unanswered = {
            t.registry.registry_id for t, r in zip(targets, results, strict=True) if not r.answered
        }
        return any(result.answered for result in results)

    def _report_account(self, target: Target, result: Reachability) -> None:
        """One line per account whose state changed: why it does not answer (or cannot be
        used), once, again only when the reason changes, and when it answers again."""
        key = (target.registry.registry_id, target.region)
        found = diagnose(result, self.upstream.probe_timeout_seconds)
        before = self._account_problems.get(key)
        if found == before:
            return
        fields = {"registry_id": key[0], "region": key[1]}
        if found is None:
            del self._account_problems[key]
            log.info("AWS account %s in %s answers now", *key, extra=fields)
            return
        self._account_problems[key] = found
        reason, why = found
        if result.answered:
            log.error(
                "AWS account %s in %s answers but cannot be used: %s",
                *key,
                why,
                extra={**fields, "reason": reason},
            )
        else:
            log.error(
                "AWS account %s in %s does not answer: %s",
                *key,
                why,
                extra={**fields, "reason": reason},
            )

    async def _watch_config(self, every: float) -> None:
        """Reload whenever the config file's identity or content stamp changes."""
        assert self.reloader is not None
        seen = self.reloader.stamp()
        while True:
            await asyncio.sleep(every)
            stamp = self.reloader.stamp()
            if stamp != seen:
                seen = stamp
                self.reload()

    async def _until_reachable(self, serving: bool) -> None:
        """Probe again, backing off, until every account answers as it should: SERVING as
        soon as one answers; each account's line said again only when it changes."""
        delay = 1.0
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            answered = await self._any_upstream_reachable()
            if answered and not serving:
                serving = True
                await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
                log.info("an AWS account answers: SERVING")
            if serving and not self._account_problems:
                return

    def reload(self) -> bool:
        """Reload the config file; when taken, read ECR's REGISTRY_POLICY_SCOPE again for
        every account and region with a client (service/aws/account_settings.py)."""
        assert self.reloader is not None
        reloaded = self.reloader.reload()
        if reloaded:
            self._spawn(self.upstream.refresh_policy_scopes(self.tenancy.current.config))
        return reloaded

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _ping_redis(self) -> bool:
        assert self.redis is not None
        try:
            await self.redis.ping()  # bounded by the client's 1 s socket timeouts
        except (redis.RedisError, OSError):
            return False
        return True

    async def _probe_redis(self) -> None:
        """Ping Redis at start-up, so that redis_up and its health entry are true from the
        first scrape rather than unknown (or 0) until the first cache operation."""
        answers = await self._ping_redis()
        if not answers:
            log.warning(
                "Redis does not answer at start-up: reads go to AWS, writes are refused "
                "until it does",
                extra={"error_type": "RedisUnavailable"},
            )
        self._redis_health(answers)

    async def _watch_redis(self, every: float) -> None:
        """Ping Redis now and then; report only a change (the cache reports its own)."""
        while True:
            await asyncio.sleep(every)
            answers = await self._ping_redis()
            if answers != self._redis_answers:
                self._redis_health(answers)

    def _redis_health(self, available: bool) -> None:
        self._redis_answers = available
        self.metrics.redis_available(available)
        # Reported as its own health entry: the gateway keeps serving without Redis, so
        # the overall status stays SERVING while operators can still see the cache is away.
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if available
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self._spawn(self.health.set(REDIS_HEALTH, status))

    @property
    def port(self) -> int:
        """The first bound port (useful with port 0)."""
        return self.ports[0]

    async def start(self, listen: str | None = None, http_listen: str | None = None) -> int:
        """Bind every listener and start serving; `listen` replaces the first one's address,
        `http_listen` the HTTP listener's."""
        listeners = list(self.config.effective_listeners())
        if listen:
            listeners[0] = ListenerConfig(listen=listen, tls=listeners[0].tls)
        tls = iter(self.tls)
        for listener in listeners:
            credentials = next(tls).server_credentials() if listener.tls else None
            self.ports.append(self._bind(listener.listen, credentials))
        if self.http is not None:
            # --- HTTP listener: bound before the gRPC server serves, so a taken port stops
            # the start-up before anything answers.
            try:
                self.http_port = await self.http.start(http_listen)
            except OSError:
                where = http_listen or self.config.http.listen
                raise BindError(
                    f"cannot listen on {where} (http): address in use or not available"
                ) from None
        await self.server.start()
        if self.reloader is not None and self.config.server.watch_config_seconds > 0:
            self._spawn(self._watch_config(self.config.server.watch_config_seconds))
        if self.redis is not None:
            # Before /metrics answers: its first scrape already says whether Redis does.
            await self._probe_redis()
            self._spawn(self._watch_redis(REDIS_PROBE_SECONDS))
        if self.config.metrics is not None:
            self.metrics_port = self.metrics.serve(self.config.metrics.listen)
        if self.health_server is not None:
            await self.health_server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        # Ready only once some AWS account answers: a gateway that can reach none cannot
        # serve at all. A later outage does not flip it (stale reads ride that out).
        # The probes make a client per (account, region): no full garbage collection of the
        # whole process meanwhile (service/app/gc_pause.py).
        with gc_paused():
            serving = await self._any_upstream_reachable()
            if serving:
                # ECR's REGISTRY_POLICY_SCOPE of the regions the probe made no client for,
                # so no first policy write finds it unread (service/aws/account_settings.py);
                # not of accounts that did not answer (each read would wait out its
                # timeout: read when a policy write asks).
                await self.upstream.refresh_policy_scopes(
                    self.config, missing=True, skip=self._unanswered
                )
        if serving:
            await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        else:
            await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
            log.error(
                "no AWS account reachable yet; NOT_SERVING until one answers "
                "(why: the line of each account above)"
            )
        if not serving or self._account_problems:
            self._spawn(self._until_reachable(serving))
        if self.config.drift.check_seconds > 0:
            self._spawn(self.drift_check.run())
        for listener, port in zip(listeners, self.ports, strict=True):
            host = parse_listen(listener.listen)[0]
            kind = (
                "plaintext"
                if listener.tls is None
                else f"tls client_auth={listener.tls.client_auth}"
            )
            log.info("serving %s", kind, extra={"listen": f"{host}:{port}"})
        if self.http is not None:
            host = parse_listen(http_listen or self.config.http.listen or "")[0]
            kind = "plaintext" if self.config.http.tls is None else "tls"
            # Not "serving ...": tools count those lines, one per worker, as its readiness.
            log.info(
                "listening for HTTP/JSON (Connect), %s",
                kind,
                extra={"listen": f"{host}:{self.http_port}"},
            )
        return self.port

    def _bind(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        host, port = parse_listen(address)
        try:
            if credentials is None:
                bound = self.server.add_insecure_port(f"{host}:{port}")
            else:
                bound = self.server.add_secure_port(f"{host}:{port}", credentials)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise BindError(f"cannot listen on {address}: address in use or not available")
        return bound

    async def shutdown(self) -> None:
        """NOT_SERVING at once, keep serving for drain_seconds, then stop with grace.

        When the grace period is over, no write is sent to AWS any more (one that gets that
        far answers SHUTTING_DOWN, nothing written); writes already sent get up to
        settle_seconds more to settle (read back, recorded) so that their callers hear the
        outcome rather than grpc's bare UNAVAILABLE; then what is left is cut. The AWS
        clients, Redis and the audit trail close only once the settlements have ended and
        every call has been reported (`_wind_down`), so no write is left unrecorded or
        without its audit line."""
        s = self.config.server
        await self.health.enter_graceful_shutdown()
        log.info("draining: health is NOT_SERVING, still serving calls")
        # grpc.aio refuses even health checks once stop() begins, so load balancers would
        # never see NOT_SERVING without this window.
        await asyncio.sleep(s.drain_seconds)
        log.info("stopping: calls in flight get up to grace_seconds")
        settlement = self.operations.settlement
        loop = asyncio.get_running_loop()
        # Both listeners at once. grpc's own cut at the end of its grace (cancel_all_calls:
        # a bare UNAVAILABLE) is only a backstop here; the gateway cuts below.
        stopping = asyncio.ensure_future(
            asyncio.gather(
                self.server.stop(s.grace_seconds + s.settle_seconds),
                self._stop_http(grace=True),
            )
        )
        done, _ = await asyncio.wait({stopping}, timeout=s.grace_seconds)
        settle_by = loop.time() + s.settle_seconds
        settlement.stop_writes()
        if not done:
            if settlement.in_flight:
                log.warning(
                    "grace period over: %d writes sent to AWS get up to settle_seconds to "
                    "settle; no new write is sent",
                    settlement.in_flight,
                )
                # They answer once settled; writes queued behind their locks are refused.
                await asyncio.wait({stopping}, timeout=max(0.0, settle_by - loop.time()))
            if not stopping.done():
                log.warning("cutting %d calls still in flight", self.pipeline.open_calls)
                await self.server.stop(0)
            await stopping
        if self.health_server is not None:
            await self.health_server.stop(0)
        await self._wind_down(settle_by)
        await self._close()

    async def _wind_down(self, settle_by: float) -> None:
        """Before the sinks close: writes still settling (their callers cut or gone) end,
        up to `settle_by` (loop time), and every call is reported (its audit line), up to
        then and at least REPORT_SECONDS (a cut call unwinds through a few Redis calls)."""
        loop = asyncio.get_running_loop()
        settlement = self.operations.settlement
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(settle_by):
                await settlement.settled()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(max(settle_by, loop.time() + REPORT_SECONDS)):
                await self.pipeline.idle()
        if settlement.in_flight or self.pipeline.open_calls:
            log.error(
                "closing with %d writes to AWS still settling and %d calls not reported: "
                "those writes are not recorded (a later read reports them as drift) and "
                "those calls have no audit line",
                settlement.in_flight,
                self.pipeline.open_calls,
            )

    async def _stop_http(self, grace: bool) -> None:
        if self.http is not None:
            await self.http.stop(grace=grace)

    async def stop_now(self) -> None:
        """Stop without draining (tests, second signal)."""
        self.operations.settlement.stop_writes()
        await self.server.stop(0)
        await self._stop_http(grace=False)
        if self.health_server is not None:
            await self.health_server.stop(0)
        await self._close()

    async def _close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self.upstream.close()
        self.metrics.close()
        self.tracing.shutdown()
        if self.redis is not None:
            await self.redis.aclose()
        self.audit.close()

    async def run_until_signal(self) -> None:
        """Serve until SIGTERM/SIGINT, then shut down gracefully; a second signal stops at once.

        SIGHUP reloads the config file (tenants, keys, JWKS, TLS certificates).
        """
        loop = asyncio.get_running_loop()
        first = asyncio.Event()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, first.set)
        if self.reloader is not None:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await first.wait()
            shutdown = asyncio.ensure_future(self.shutdown())
            second = asyncio.Event()
            for sig in signals:
                loop.add_signal_handler(sig, second.set)
            waiter = asyncio.ensure_future(second.wait())
            done, _ = await asyncio.wait({shutdown, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if shutdown not in done:
                log.warning("second signal: stopping without waiting for calls in flight")
                shutdown.cancel()
                await self.stop_now()
            waiter.cancel()
        finally:
            for sig in (*signals, signal.SIGHUP):
                loop.remove_signal_handler(sig)
