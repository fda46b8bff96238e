"""Builds the gRPC server from config and runs it: reflection, health, limits, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping

import aioboto3
import grpc
from ecr.registry.v1 import registry_pb2 as pb
from ecr.registry.v1 import registry_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service import middleware, reflection
from service.api import RegistryConfigServicer
from service.auth import ApiKeyAuthenticator, TargetAuthorizer
from service.config import GatewayConfig, parse_listen
from service.locks import RegistryLocks
from service.operations import RegistryOperations
from service.upstream import SessionFactory, Upstream

log = logging.getLogger("registry_gateway.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RegistryConfigService"].full_name


class BindError(Exception):
    """The listen address cannot be bound (taken, or not an address of this host)."""


def _channel_options(config: GatewayConfig, reuse_port: bool) -> list[tuple[str, int]]:
    s = config.server
    return [
        # grpcio turns SO_REUSEPORT on by default, so a second server on a taken port would
        # bind silently; only `--workers` wants it.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.keepalive_time_ms", int(s.keepalive_time_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_pings_without_data", 0),
        # Rebalances long-lived client connections across replicas.
        ("grpc.max_connection_age_ms", int(s.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(s.grace_seconds * 1000)),
    ]


class Gateway:
    """One gateway server: its gRPC server, health service and upstream, built from config."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        session_factory: SessionFactory = aioboto3.Session,
        environ: Mapping[str, str] | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.config = config
        self.upstream = Upstream(
            config.aws,
            session_factory=session_factory,
            environ=environ,
            time_left=middleware.time_left,
        )
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(
            interceptors=[
                middleware.GatewayInterceptor(config.server, ApiKeyAuthenticator(config.tenants))
            ],
            options=_channel_options(config, reuse_port),
            maximum_concurrent_rpcs=config.server.max_concurrent_rpcs,
        )
        servicer = RegistryConfigServicer(
            TargetAuthorizer(config), RegistryOperations(self.upstream, RegistryLocks())
        )
        pb_grpc.add_RegistryConfigServiceServicer_to_server(servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if config.server.reflection:
            reflection.enable(
                self.server,
                [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name],
            )
        self.port = 0
        self._stopped = asyncio.Event()

    async def start(self, listen: str | None = None) -> int:
        """Bind and start serving; returns the bound port (useful with port 0)."""
        address = listen or self.config.listen
        host, port = parse_listen(address)
        try:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise BindError(f"cannot listen on {address}: address in use or not available")
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"listen": f"{host}:{self.port}"})
        return self.port

    async def shutdown(self) -> None:
        """NOT_SERVING at once, keep serving for drain_seconds, then stop with grace."""
        s = self.config.server
        await self.health.enter_graceful_shutdown()
        log.info("draining: health is NOT_SERVING, still serving calls")
        # grpc.aio refuses even health checks once stop() begins, so load balancers would
        # never see NOT_SERVING without this window.
        await asyncio.sleep(s.drain_seconds)
        log.info("stopping: calls in flight get up to grace_seconds")
        await self.server.stop(s.grace_seconds)
        await self.upstream.close()
        self._stopped.set()

    async def stop_now(self) -> None:
        """Stop without draining (tests, second signal)."""
        await self.server.stop(0)
        await self.upstream.close()
        self._stopped.set()

    async def run_until_signal(self) -> None:
        """Serve until SIGTERM/SIGINT, then shut down gracefully; a second signal stops at once."""
        loop = asyncio.get_running_loop()
        first = asyncio.Event()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, first.set)
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
            for sig in signals:
                loop.remove_signal_handler(sig)
