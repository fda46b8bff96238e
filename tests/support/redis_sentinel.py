"""A Redis Sentinel set of a test's own: a primary, a replica and three sentinels, each a real
redis-server on a free port (Debian's redis-server runs as a sentinel with `--sentinel`).
The machine's shared Redis is never part of it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

MASTER_NAME = "gateway"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _poll(what: str, check: object, timeout: float = 60.0) -> None:
    """Wait for an external process's state (bounded, generous: a loaded machine is slow)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except (redis.RedisError, OSError):
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class SentinelSet:
    """Primary, replica, three sentinels (quorum 2, down-after-milliseconds 1000)."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self._binary = binary
        self._workdir = workdir
        self.primary_port = _free_port()
        self.replica_port = _free_port()
        self.sentinel_ports = [_free_port() for _ in range(3)]
        self._processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def sentinel_nodes(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.sentinel_ports]

    def _start(self, port: int, *args: str) -> None:
        log = (self._workdir / f"redis-{port}.log").open("ab")
        self._processes[port] = subprocess.Popen(
            [self._binary, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=self._workdir,
        )
        log.close()

    def _server(self, port: int, *extra: str) -> None:
        self._start(
            port,
            *("--bind", "127.0.0.1", "--port", str(port)),
            *("--save", "", "--appendonly", "no", "--dir", str(self._workdir)),
            *extra,
        )

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)

    def start(self) -> None:
        self._server(self.primary_port)
        self._server(self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port))
        for port in self.sentinel_ports:
            conf = self._workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"bind 127.0.0.1\nport {port}\ndir {self._workdir}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self._start(port, str(conf), "--sentinel")

        def replica_in_sync() -> bool:
            info = self.client(self.replica_port).info("replication")
            return bool(info.get("master_link_status") == "up")

        _poll("the replica to sync", replica_in_sync)

        def sentinels_see_everyone() -> bool:
            # Each sentinel knows the replica (from the primary's INFO, every 10 s at first)
            # and the two other sentinels (their hellos): only then can they fail over.
            for port in self.sentinel_ports:
                sentinel = self.client(port)
                replicas: Any = sentinel.sentinel_slaves(MASTER_NAME)
                others: Any = sentinel.sentinel_sentinels(MASTER_NAME)
                if len(replicas) != 1 or len(others) != 2:
                    return False
            return True

        _poll("the sentinels to know the replica and each other", sentinels_see_everyone)

    def primary(self) -> int:
        """The port the sentinels name as the primary now."""
        sentinel = self.client(self.sentinel_ports[0])
        address: Any = sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(address[1])

    def agreed_primary(self, timeout: float = 30.0) -> int:
        """The port every sentinel names as the primary, once they agree. After a failover
        only the leader knows at once; the others learn it from its hellos (every 2 s), so
        one sentinel asked right after the first write to the new primary may still name
        the old one (seen in CI: the write had landed on the promoted replica)."""
        agreed: list[int] = []

        def all_agree() -> bool:
            ports = set()
            for port in self.sentinel_ports:
                address: Any = self.client(port).sentinel_get_master_addr_by_name(MASTER_NAME)
                ports.add(int(address[1]))
            if len(ports) != 1:
                return False
            agreed[:] = list(ports)
            return True

        _poll("the sentinels to agree on the primary", all_agree, timeout)
        return agreed[0]

    def kill_primary(self) -> int:
        """SIGKILL the current primary (no goodbye to anyone); its port."""
        port = self.primary()
        os.kill(self._processes[port].pid, signal.SIGKILL)
        self._processes[port].wait(timeout=10)
        return port

    def stop(self) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self._processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@contextmanager
def sentinel_set(workdir: Path) -> Iterator[SentinelSet]:
    """A started SentinelSet, stopped at the end."""
    binary = shutil.which("redis-server")
    # A failure, not a skip (as tests/support/redis_server.py): a missing Redis must not pass CI.
    assert binary, "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)"
    servers = SentinelSet(binary, workdir)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()
