"""Composition without I/O (service/app/compose.py): building the gateway binds no port,
connects to no Redis and opens no file; binding is the lifecycle's `start`."""

from __future__ import annotations

import socket
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.app.compose import compose
from service.app.embedded import session_factory
from service.app.server import BindError, Gateway
from service.auth.tenancy import TenancyHolder, build_tenancy
from service.config import from_mapping
from service.observability.audit import AuditLog
from service.observability.metrics import Metrics
from service.observability.tracing import Tracing
from tests.support.helpers import config_dict


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port held by a listening socket that never accepts: taken for anyone else, and
    any connection to it shows up in its backlog."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def connections_made(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


async def test_a_gateway_binds_no_port_before_start(listener: socket.socket, aws: str) -> None:
    """The probes' port (server.health_listen) was bound while the gateway was built; now it
    is bound by `start`, first, so a taken one still stops the start before anything answers."""
    port = listener.getsockname()[1]
    raw = config_dict(aws, health_listen=f"127.0.0.1:{port}")
    gateway = Gateway(from_mapping(raw, environ={}), session_factory=session_factory, environ={})
    try:
        assert gateway.health_port == 0 and gateway.ports == []
        with pytest.raises(BindError, match=r"\(health\)"):
            await gateway.start("127.0.0.1:0")
        assert gateway.ports == []  # no API listener bound either
    finally:
        await gateway.stop_now()


async def test_composing_connects_to_no_redis_and_opens_no_file(
    listener: socket.socket, tmp_path: Path, aws: str
) -> None:
    port = listener.getsockname()[1]
    raw = config_dict(aws)
    raw["cache"] = {"backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0"}
    raw["audit"] = {"path": str(tmp_path / "audit.log")}
    raw["server"] = {**raw.get("server", {}), "health_listen": "127.0.0.1:0"}
    raw["http"] = {"listen": "127.0.0.1:0"}
    config = from_mapping(raw, environ={})
    metrics = Metrics(redis=True)
    tracing = Tracing(config.tracing, None, environ={})
    audit = AuditLog(config.audit, lost=metrics.audit_lost)
    spawned: list[Coroutine[Any, Any, None]] = []
    heard: list[bool] = []
    try:
        parts = compose(
            config,
            metrics=metrics,
            tracing=tracing,
            tenancy=TenancyHolder(build_tenancy(config, {})),
            audit=audit,
            environ={},
            redis_secret=None,
            session_factory=session_factory,
            reuse_port=False,
            spawn=spawned.append,
            on_redis_availability=heard.append,
        )
        assert parts.redis is not None and parts.http is not None
        assert parts.health_server is not None
        assert connections_made(listener) == 0  # no Redis connection opened
        assert spawned == [] and heard == []  # nothing started, nothing heard
        # No file but the audit trail the lifecycle opened and passed in.
        assert [p.name for p in tmp_path.iterdir()] == ["audit.log"]
        await parts.redis.aclose()
    finally:
        audit.close()
        tracing.shutdown()
        metrics.close()
