"""A Redis that stopped answering is waited for once, not once per command.

Every user of the gateway's Redis (cache, locks, rate limits, budgets, history, claims) bounds
each command by the client's socket timeout (1 s). A Redis that is paused (SIGSTOP, a long
fork or script, a network partition) still accepts connections, so each command waits out
the whole timeout: a read that asks Redis four times waited 4 s, and every call in flight
did the same. Here the first command that times out opens the circuit: from then on every
command of this client fails at once with ConnectionError (what each user already handles
as "Redis away"), while one probe at a time PINGs Redis on a connection of its own; the
first PONG closes the circuit. A refused connection does not open it: it fails fast anyway.

With Sentinel (`sentinel_client`) each connection asks the sentinels for the primary
whenever it connects, and a primary that was demoted (it answers READONLY) is a Redis away
for that command: the connection drops and the next one asks the sentinels again.

redis-py has no such breaker for a single endpoint (its `multidb` client's breakers choose
between databases), so the check lives in the client's connection class: every command,
pipeline and script of the client goes through `send_packed_command` and `read_response`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

import redis.asyncio as redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("registry_gateway.redis")

# Between two probes that found Redis still away (each is bounded by the socket timeout).
PROBE_INTERVAL_SECONDS = 0.25

# Set in the probe's own task: its commands go through an open circuit.
_probing: contextvars.ContextVar[bool] = contextvars.ContextVar("redis_probing", default=False)


class RedisCircuit:
    """Whether Redis answered in time lately; while it did not, commands fail at once."""

    def __init__(self, probe_interval: float = PROBE_INTERVAL_SECONDS) -> None:
        self._interval = probe_interval
        self._open = False
        self._prober: asyncio.Task[None] | None = None
        self._pool: ConnectionPool | None = None

    def attach(self, pool: ConnectionPool) -> None:
        """The pool whose connections it guards: its probes connect as they do."""
        self._pool = pool

    @property
    def open(self) -> bool:
        """True from a timeout until a probe's PONG."""
        return self._open

    def check(self) -> None:
        """Raise ConnectionError at once while the circuit is open (not for the probe)."""
        if self._open and not _probing.get():
            raise RedisConnectionError(
                "Redis did not answer within its timeout; its commands fail fast until it does"
            )

    def timed_out(self) -> None:
        """A command waited out its timeout: open, and probe until Redis answers."""
        if self._open or _probing.get():
            return
        self._open = True
        log.warning(
            "Redis did not answer within its timeout: its commands fail fast until a probe answers",
            extra={"error_type": "RedisTimeout"},
        )
        if self._pool is not None and (self._prober is None or self._prober.done()):
            # A context of its own: the probe belongs to no call.
            self._prober = asyncio.get_running_loop().create_task(
                self._probe(self._pool), context=contextvars.Context()
            )

    def answered(self) -> None:
        """Redis answered a command: closed."""
        if self._open:
            self._open = False
            log.warning("Redis answers again: its commands are sent again")

    async def stop(self) -> None:
        """Stop probing (the client is closing) and close the circuit."""
        prober, self._prober = self._prober, None
        self._open = False
        if prober is not None:
            prober.cancel()
            await asyncio.wait({prober})  # its CancelledError is its own, not raised here

    async def _probe(self, pool: ConnectionPool) -> None:
        _probing.set(True)  # this task's own context
        while self._open:
            # Not one of the pool's: those are in use, or fail fast while the circuit is open.
            connection = pool.connection_class(**pool.connection_kwargs)
            try:
                await connection.send_command("PING")  # connects (and authenticates) first
                await connection.read_response()
            except (redis.RedisError, OSError):
                await asyncio.sleep(self._interval)
            else:
                self.answered()
            finally:
                await connection.disconnect()


class _CircuitConnection(AbstractConnection):
    """A connection that asks its pool's circuit before each command and tells it the
    outcome of each read (mixed into each of redis-py's connection classes below)."""

    def __init__(self, *, circuit: RedisCircuit, **kwargs: Any) -> None:
        self._circuit = circuit
        super().__init__(**kwargs)

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self.is_connected:
            return
        self._circuit.check()
        try:
            await super().connect_check_health(check_health, retry_socket_connect)
        except (RedisTimeoutError, TimeoutError):
            self._circuit.timed_out()
            raise

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._circuit.check()
        await super().send_packed_command(command, check_health)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            response = await super().read_response(*args, **kwargs)
        except (RedisTimeoutError, TimeoutError):
            self._circuit.timed_out()
            raise
        except ReadOnlyError as exc:
            # A primary demoted by a failover (Sentinel, a managed Redis behind one name)
            # answers writes with READONLY: this Redis is not the primary any more. Dropped,
            # so the next connection finds the new one; for this command, Redis is away.
            await self.disconnect()
            raise RedisConnectionError("Redis is a replica now (READONLY); reconnecting") from exc
        self._circuit.answered()
        return response


class _Tcp(_CircuitConnection, Connection):
    pass


class _Tls(_CircuitConnection, SSLConnection):
    pass


class _Unix(_CircuitConnection, UnixDomainSocketConnection):
    pass


class _SentinelTcp(_CircuitConnection, SentinelManagedConnection):
    """A connection to the primary the sentinels name, asked at every connect.

    redis-py asks the sentinels only in `connect()`; a connection that dropped and is
    reconnected by its next command (`send_packed_command` calls `connect_check_health`)
    goes back to the old address: redis/redis-py#3874. Here every connect asks them."""

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self.is_connected:
            return
        self._circuit.check()
        self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health, retry_socket_connect)

    async def _connect_retry(self) -> None:
        # The primary only (no replica pools here), asked once, in connect_check_health.
        await self.connect_check_health(
            check_health=self.connection_pool.check_connection, retry_socket_connect=False
        )


class _SentinelTls(_SentinelTcp, SSLConnection):
    pass


_WITH_CIRCUIT: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _Tcp,
    SSLConnection: _Tls,
    UnixDomainSocketConnection: _Unix,
}


class CircuitPool(ConnectionPool):
    """redis-py's pool (the connection class its URL asks for), each connection behind one
    circuit; closing the pool stops its probe."""

    def __init__(self, connection_class: type[AbstractConnection] = Connection, **kwargs: Any):
        self.circuit = RedisCircuit()
        super().__init__(
            connection_class=_WITH_CIRCUIT[connection_class], circuit=self.circuit, **kwargs
        )
        self.circuit.attach(self)

    async def aclose(self) -> None:
        await self.circuit.stop()
        await super().aclose()


class CircuitSentinelPool(SentinelConnectionPool):
    """redis-py's Sentinel pool for the primary, each connection behind one circuit."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        self.circuit = RedisCircuit()
        tls = kwargs.pop("ssl", False)
        super().__init__(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            service_name,
            sentinel_manager,
            connection_class=_SentinelTls if tls else _SentinelTcp,
            circuit=self.circuit,
            is_master=True,
            **({"ssl": True} if tls else {}),
            **kwargs,
        )
        self.circuit.attach(self)

    async def aclose(self) -> None:
        await self.circuit.stop()
        await super().aclose()


def circuit_client(url: str, **kwargs: Any) -> redis.Redis:
    """`redis.Redis.from_url(url, **kwargs)` behind a circuit (`CircuitPool`)."""
    return redis.Redis.from_pool(CircuitPool.from_url(url, **kwargs))


def sentinel_client(
    master_name: str,
    sentinels: list[tuple[str, int]],
    *,
    sentinel_kwargs: dict[str, Any],
    **kwargs: Any,
) -> redis.Redis:
    """The primary named `master_name`, found through `sentinels` (and found again after a
    failover), behind a circuit. `kwargs` are the primary's connection's, `sentinel_kwargs`
    the sentinels' (their timeouts, password, TLS)."""
    manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    pool = CircuitSentinelPool(master_name, manager, **kwargs)
    return redis.Redis.from_pool(pool)
