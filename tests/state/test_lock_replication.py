"""A write lock acknowledged by a replica before its writer goes on (issue 23: `WAIT 1`
after SET NX), with a real primary and replica; a replica that does not acknowledge in time
(SIGSTOP) lets the writer go on under the primary's lock alone, said in a warning, and
later acquisitions do not each pay the wait."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.config.state import CacheConfig
from service.state.locks import LockReplication, RedisRegistryLocks
from service.state.redis_connect import redis_client
from tests.e2e.test_redis_down import OwnRedis

PREFIX = "replication-test:"


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[OwnRedis, OwnRedis]]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)"
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    primary, replica = OwnRedis(binary, tmp_path / "p"), OwnRedis(binary, tmp_path / "r")
    primary.start()
    replica.start()
    admin = redis.Redis.from_url(replica.url)
    admin.replicaof("127.0.0.1", primary.port)
    deadline = time.monotonic() + 30  # an external process syncing: bounded poll
    while admin.info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "the replica did not sync"
        time.sleep(0.05)
    admin.close()
    try:
        yield primary, replica
    finally:
        if replica._process is not None:
            os.kill(replica._process.pid, signal.SIGCONT)
        replica.stop()
        primary.stop()


def _wait_calls(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
        return int(stats.get("cmdstat_wait", {}).get("calls", 0))
    finally:
        client.close()


async def test_the_lock_is_on_the_replica_when_its_writer_goes_on(
    primary_and_replica: tuple[OwnRedis, OwnRedis],
) -> None:
    primary, replica = primary_and_replica
    client = redis_client(CacheConfig(backend="redis", redis_url=primary.url), None, {})
    replication = LockReplication(timeout_ms=5000)
    locks = RedisRegistryLocks(client, PREFIX, 10, lambda: 5.0, replication=replication)
    on_replica = redis.Redis.from_url(replica.url)
    try:
        async with locks.hold("123456789012", "us-east-1"):
            # Read at once, no polling: the acquisition waited for the replica's answer.
            assert on_replica.exists(f"{PREFIX}lock:123456789012:us-east-1") == 1
        assert _wait_calls(primary.url) == 1
        assert replication.unreplicated == 0
    finally:
        on_replica.close()
        await client.aclose()


async def test_a_replica_that_does_not_answer_is_waited_for_once_then_said(
    primary_and_replica: tuple[OwnRedis, OwnRedis], caplog: pytest.LogCaptureFixture
) -> None:
    primary, replica = primary_and_replica
    client = redis_client(CacheConfig(backend="redis", redis_url=primary.url), None, {})
    replication = LockReplication(timeout_ms=300, skip_seconds=60)
    locks = RedisRegistryLocks(client, PREFIX, 10, lambda: 5.0, replication=replication)
    assert replica._process is not None
    os.kill(replica._process.pid, signal.SIGSTOP)
    try:
        with caplog.at_level(logging.WARNING, logger="registry_gateway.locks"):
            # The writer goes on (a Sentinel set that lost its replica still takes writes).
            async with locks.hold("123456789012", "us-east-1"):
                pass
            async with locks.hold("123456789012", "us-east-1"):
                pass
        assert replication.unreplicated == 2
        # One WAIT: the second acquisition did not pay the wait again.
        assert _wait_calls(primary.url) == 1
        warnings = [r.getMessage() for r in caplog.records if "no Redis replica" in r.getMessage()]
        assert len(warnings) == 1, warnings
    finally:
        os.kill(replica._process.pid, signal.SIGCONT)
        await client.aclose()
