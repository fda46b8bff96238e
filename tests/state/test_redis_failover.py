"""The gateway's Redis client across a failover (issue 23), with real servers: through
Sentinel it finds the new primary after the old one is SIGKILLed (redis/redis-py#3874: the
asyncio client alone reconnects to the old address), and a primary demoted to a replica
(READONLY) is a Redis away for that command, never an error of the caller's."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio

from service.config.state import CacheConfig
from service.state.redis_connect import redis_client
from tests.conftest import wait_until
from tests.e2e.test_redis_down import OwnRedis
from tests.support.redis_sentinel import MASTER_NAME, sentinel_set


async def test_sentinel_client_finds_the_new_primary_after_a_kill(tmp_path: Path) -> None:
    with sentinel_set(tmp_path) as servers:
        cache = CacheConfig(
            backend="redis",
            redis_sentinel={"master_name": MASTER_NAME, "nodes": servers.sentinel_nodes},
        )
        client = redis_client(cache, None, {})
        try:
            assert await client.set("before", "1")
            killed = servers.kill_primary()
            assert killed == servers.primary_port
            killed_at = time.monotonic()

            async def write_lands() -> bool:
                try:
                    return bool(await client.set("after", "2"))
                except redis.ConnectionError:
                    return False  # Redis away for this command (the old primary is dead)

            await wait_until(write_lands, timeout=60, interval=0.1, what="a write after failover")
            recovered = time.monotonic() - killed_at
            # The write went to the promoted replica, found through the sentinels.
            assert servers.agreed_primary() == servers.replica_port
            assert servers.client(servers.replica_port).get("after") == b"2"
            print(f"sentinel failover: first write {recovered:.1f} s after SIGKILL")
        finally:
            await client.aclose()


async def test_a_connection_kept_across_the_failover_reconnects_to_the_new_primary(
    tmp_path: Path,
) -> None:
    # A client on one connection (what a lock acquisition uses for SET + WAIT) reconnects
    # by sending its next command; redis-py alone reconnects that to the old address
    # (redis/redis-py#3874), here refused for ever.
    with sentinel_set(tmp_path) as servers:
        cache = CacheConfig(
            backend="redis",
            redis_sentinel={"master_name": MASTER_NAME, "nodes": servers.sentinel_nodes},
        )
        client = redis_client(cache, None, {})
        assert isinstance(client, redis.asyncio.Redis)  # one primary, not a cluster
        try:
            async with client.client() as single:
                assert await single.set("before", "1")
                servers.kill_primary()

                async def write_lands() -> bool:
                    try:
                        return bool(await single.set("after", "2"))
                    except redis.ConnectionError:
                        return False

                await wait_until(write_lands, timeout=60, interval=0.1, what="a write")
            assert servers.client(servers.replica_port).get("after") == b"2"
        finally:
            await client.aclose()


@pytest.fixture
def two_redis(tmp_path: Path) -> tuple[OwnRedis, OwnRedis]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return OwnRedis(binary, tmp_path / "a"), OwnRedis(binary, tmp_path / "b")


async def test_a_demoted_primary_is_redis_away_and_the_connection_is_dropped(
    two_redis: tuple[OwnRedis, OwnRedis],
) -> None:
    old, new = two_redis
    old.start()
    new.start()
    try:
        client = redis_client(CacheConfig(backend="redis", redis_url=old.url), None, {})
        assert isinstance(client, redis.asyncio.Redis)
        try:
            assert await client.set("k", "1")
            # What a failover does to the old primary: it becomes a replica of the new one
            # (a managed Redis behind one DNS name, or Sentinel reconfiguring it).
            admin = redis.Redis.from_url(old.url)
            admin.replicaof("127.0.0.1", new.port)
            admin.close()
            # The gateway's users handle ConnectionError as "Redis away" (a ResponseError
            # would be a bug of theirs, answered INTERNAL).
            with pytest.raises(redis.ConnectionError, match="READONLY"):
                await client.set("k", "2")
            pool = client.connection_pool
            # The connection that heard READONLY is closed: none of the pool's is connected.
            assert not any(c.is_connected for c in pool._available_connections)
        finally:
            await client.aclose()
    finally:
        old.stop()
        new.stop()


async def test_the_circuit_still_guards_a_sentinel_primary(tmp_path: Path) -> None:
    # A paused primary (SIGSTOP) costs one timeout, then commands fail fast: the circuit
    # holds for Sentinel connections as for a URL's.
    with sentinel_set(tmp_path) as servers:
        cache = CacheConfig(
            backend="redis",
            redis_sentinel={"master_name": MASTER_NAME, "nodes": servers.sentinel_nodes},
        )
        client = redis_client(cache, None, {})
        pid = servers._processes[servers.primary_port].pid
        try:
            assert await client.set("k", "1")
            os.kill(pid, signal.SIGSTOP)
            with pytest.raises(redis.TimeoutError):
                await client.get("k")
            # Not a second timeout: the circuit's own refusal.
            with pytest.raises(redis.ConnectionError, match="fail fast"):
                await client.get("k")
        finally:
            os.kill(pid, signal.SIGCONT)
            await client.aclose()
