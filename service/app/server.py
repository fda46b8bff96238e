"""The gateway's lifecycle: it opens the sinks, has its parts built (service/app/compose.py),
binds the listeners, probes AWS, drains, shuts down in order and answers signals."""

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
from grpc_health.v1 import health_pb2
from opentelemetry.sdk.trace.export import SpanExporter

from service.app.compose import (
    LOCK_HOLD_MARGIN_SECONDS,
    SERVICE_NAME,
    compose,
    first_targets,
    redis_password,
)
from service.app.event_loop import name as loop_name
from service.app.gc_pause import gc_paused
from service.app.reload import Reloader
from service.auth.targets import Target
from service.auth.tenancy import TenancyHolder, build_tenancy
from service.aws.diagnosis import diagnose
from service.aws.upstream import Reachability, SessionFactory
from service.bounded_gather import gather_bounded
from service.config import GatewayConfig, ListenerConfig, parse_listen
from service.observability.audit import AuditLog
from service.observability.metrics import Metrics
from service.observability.tracing import Tracing
from service.rpc.tls import TlsCredentials

log = logging.getLogger("registry_gateway.server")

# Names tests and tools import from here (built in service/app/compose.py and
# service/aws/diagnosis.py).
__all__ = [
    "LOCK_HOLD_MARGIN_SECONDS",
    "REDIS_HEALTH",
    "SERVICE_NAME",
    "BindError",
    "Gateway",
    "diagnose",
    "redis_password",
]

# Health entry that tells whether the shared Redis cache is reachable.
REDIS_HEALTH = "registry-gateway.redis"
# How often Redis is pinged besides the cache's own calls, so that redis_up and its health
# entry stay true on a replica no call reaches (an idle one would otherwise keep its last word).
REDIS_PROBE_SECONDS = 15.0
# At shutdown, how long calls the server cut still get to unwind and be reported (their
# audit lines) before the audit trail closes, past settle_seconds if need be.
REPORT_SECONDS = 1.0


class BindError(Exception):
    """The listen address cannot be bound (taken, or not an address of this host)."""


class Gateway:
    """One gateway server: its gRPC server, health service and upstream, built from config.

    Constructing it opens the sinks (the audit trail's file, tracing's exporter, the TLS
    certificates and JWKS files read) and builds the parts without I/O (`compose`); no
    port is bound and no Redis connection opened before `start`."""

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
        # Read before anything is opened: a missing one stops the start here.
        password = (
            redis_password(config.cache.redis_password_env, self._environ)
            if config.cache.backend == "redis"
            else None
        )
        # Written by a thread of its own; lines it loses are counted (audit.py).
        self.audit = AuditLog(config.audit, lost=self.metrics.audit_lost)
        self.tls = [TlsCredentials(lst.tls) for lst in config.effective_listeners() if lst.tls]
        self._background: set[asyncio.Task[None]] = set()
        parts = compose(
            config,
            metrics=self.metrics,
            tracing=self.tracing,
            tenancy=self.tenancy,
            audit=self.audit,
            environ=self._environ,
            redis_secret=password,
            session_factory=session_factory,
            reuse_port=reuse_port,
            spawn=self._spawn,
            on_redis_availability=self._redis_health,
        )
        self.upstream = parts.upstream
        self.redis = parts.redis
        self.health = parts.health
        self.history = parts.history
        self.locks = parts.locks
        self.drift = parts.drift
        self.pipeline = parts.pipeline
        self.call_slots = parts.call_slots
        self.server = parts.server
        self.operations = parts.operations
        self.drift_check = parts.drift_check
        self.http = parts.http
        self.http_port = 0
        self.reloader = (
            Reloader(config_path, self.tenancy, self.tls, self._environ, metrics=self.metrics)
            if config_path
            else None
        )
        self.ports: list[int] = []
        self.metrics_port = 0
        self.health_server = parts.health_server
        self.health_port = 0
        self._redis_answers: bool | None = None
        # (account, region) -> (reason, why) of each account that did not answer as it
        # should at its last probe: what the start-up diagnosis last said of it.
        self._account_problems: dict[tuple[str, str], tuple[str, str]] = {}
        # Registries whose account did not answer at the last probe (not merely refused).
        self._unanswered: set[str] = set()

    def _targets(self) -> list[Target]:
        return first_targets(self.config)

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
        if self.health_server is not None:
            # The probes' port first, as when it was bound at construction: a taken one
            # stops the start-up before any other listener is bound.
            self.health_port = self._bind_health(self.health_server)
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
        # Which loop calls run on (`server.event_loop`: uvloop when it is installed).
        log.info("event loop: %s", loop_name(asyncio.get_running_loop()))
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

    def _bind_health(self, server: grpc.aio.Server) -> int:
        address = self.config.server.health_listen
        assert address is not None
        host, port = parse_listen(address)
        try:
            bound = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise BindError(f"cannot listen on {address} (health)")
        return bound

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
        # Writes handed to another replica and taken there: their answers would come from
        # Redis, which closes next; their callers hear WRITE_OUTCOME_UNKNOWN now.
        await self.operations.stop_handing()
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
        await self.operations.stop_handing()
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
