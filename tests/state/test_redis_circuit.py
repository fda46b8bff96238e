"""A Redis that stops answering is waited for once, then fails fast until it answers again
(service/state/redis_circuit.py), on a real redis-server paused with SIGSTOP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.state.redis_circuit import CircuitPool, circuit_client
from tests.conftest import wait_until
from tests.support.pausable_redis import PausableRedis, pausable_redis


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PausableRedis]:
    with pausable_redis(tmp_path) as started:
        yield started


@pytest.fixture
async def client(server: PausableRedis) -> AsyncIterator[redis.Redis]:
    # As the server builds it (service/app/server.py): 1 s timeouts, no retries.
    built = circuit_client(
        server.url, socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0)
    )
    try:
        yield built
    finally:
        await built.aclose()


def circuit_open(client: redis.Redis) -> bool:
    pool = client.connection_pool
    assert isinstance(pool, CircuitPool)
    return pool.circuit.open


async def answers(client: redis.Redis) -> bool:
    try:
        return bool(await client.ping())
    except RedisConnectionError:
        return False


async def test_a_paused_redis_is_waited_for_once_then_fails_fast(
    client: redis.Redis, server: PausableRedis
) -> None:
    script = client.register_script("return redis.call('get', KEYS[1])")
    await client.set("k", "v")
    server.pause()
    try:
        with pytest.raises(RedisTimeoutError):
            await client.get("k")  # the one command that waits out its timeout
        assert circuit_open(client)
        # Every later command fails at once, whatever its kind, with the error every user
        # of Redis already takes for "Redis away" (not another timeout).
        with pytest.raises(RedisConnectionError, match="fail fast"):
            await client.get("k")
        with pytest.raises(RedisConnectionError, match="fail fast"):
            await script(keys=["k"])
        with pytest.raises(RedisConnectionError, match="fail fast"):
            async with client.pipeline(transaction=True) as pipe:
                pipe.incr("n")
                pipe.get("k")
                await pipe.execute()
        # Many callers at once: none waits (each would have waited 1 s).
        outcomes = await asyncio.gather(
            *(client.get("k") for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(o, RedisConnectionError) for o in outcomes), outcomes
    finally:
        server.resume()
    # A probe closes the circuit once Redis answers; commands work again by themselves.
    await wait_until(lambda: answers(client), what="Redis to answer through the circuit")
    assert not circuit_open(client)
    assert await client.get("k") == b"v"


async def test_a_refused_connection_does_not_open_the_circuit(
    client: redis.Redis, server: PausableRedis
) -> None:
    await client.set("k", "v")
    server.stop()
    with pytest.raises(RedisConnectionError):
        await client.get("k")
    assert not circuit_open(client)  # refused at once: nothing to wait for
    server.start()
    assert await client.ping()  # answered the moment Redis is back, no probe awaited


async def test_closing_the_client_stops_its_probe(server: PausableRedis) -> None:
    client = circuit_client(server.url, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
    await client.ping()
    server.pause()
    try:
        with pytest.raises(RedisTimeoutError):
            await client.ping()
        probes = [t for t in asyncio.all_tasks() if "RedisCircuit._probe" in repr(t.get_coro())]
        assert len(probes) == 1
        await client.aclose()
        assert probes[0].done()
    finally:
        server.resume()
