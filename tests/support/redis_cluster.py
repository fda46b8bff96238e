"""A Redis Cluster of a test module's own: three primaries (no replicas), each a real
redis-server on a free port in a temporary directory, joined by `redis-cli --cluster create`.
The machine's shared Redis is never part of it, and every process is ended at the end.

Use the module-scoped fixture `redis_cluster` (import it into the test module), or
`cluster_of_three(workdir)` where a test needs a cluster of its own."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.redis_sentinel import _poll

# A node also listens on its port + 10000 (the cluster bus), so its port is at most this.
_BUS_OFFSET = 10000
_HIGHEST_PORT = 65535 - _BUS_OFFSET


def _free_port() -> int:
    """A port free now whose bus port (+10000) is free too (the OS's ephemeral ports are
    often above 55535, which redis-server refuses in cluster mode)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port > _HIGHEST_PORT:
            port = random.randint(20000, _HIGHEST_PORT)
        try:
            with socket.socket() as one, socket.socket() as bus:
                one.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + _BUS_OFFSET))
        except OSError:
            continue
        return port
    raise AssertionError("no free port pair for a cluster node")


class RedisClusterSet:
    """Three cluster-enabled redis-servers covering the 16384 slots between them."""

    def __init__(self, server: str, cli: str, workdir: Path, size: int = 3) -> None:
        self._server = server
        self._cli = cli
        self._workdir = workdir
        self.ports = [_free_port() for _ in range(size)]
        self._processes: list[subprocess.Popen[bytes]] = []
        self._by_port: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def nodes(self) -> list[str]:
        """`cache.redis_cluster_nodes`: every node's "host:port"."""
        return [f"127.0.0.1:{port}" for port in self.ports]

    def client(self, port: int) -> redis.Redis:
        """A plain client on one node (not cluster-aware): for assertions on that node."""
        return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)

    def _node(self, port: int) -> None:
        log = (self._workdir / f"redis-{port}.log").open("ab")
        self._by_port[port] = subprocess.Popen(
            [
                self._server,
                *("--bind", "127.0.0.1", "--port", str(port)),
                *("--cluster-enabled", "yes"),
                *("--cluster-config-file", f"nodes-{port}.conf"),
                *("--appendonly", "no", "--save", ""),
                *("--dir", str(self._workdir)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=self._workdir,
        )
        self._processes.append(self._by_port[port])
        log.close()
        _poll(f"redis-server on {port}", lambda: self.client(port).ping())

    def _cli_run(self, *args: str) -> None:
        subprocess.run(
            [self._cli, "--cluster", *args],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )

    def start(self) -> None:
        for port in self.ports:
            self._node(port)
        self._cli_run("create", *self.nodes, "--cluster-replicas", "0", "--cluster-yes")
        self._wait_ok(self.ports)

    def add_replica(self, primary: int) -> int:
        """Start a node replicating the primary on port `primary` (its shard then has a
        replica to acknowledge writes: WAIT); its port once it is in sync."""
        port = _free_port()
        self._node(port)
        self._cli_run("add-node", f"127.0.0.1:{port}", f"127.0.0.1:{primary}", "--cluster-slave")

        def in_sync() -> bool:
            info = self.client(port).info("replication")
            return bool(info.get("master_link_status") == "up")

        _poll("the cluster replica to sync", in_sync)
        self._wait_ok([*self.ports, port])
        return port

    def _wait_ok(self, ports: list[int]) -> None:
        def every_node_ok() -> bool:
            for port in ports:
                info: Any = self.client(port).cluster("INFO")  # parsed: a dict
                if info.get("cluster_state") != "ok":
                    return False
            return True

        _poll("cluster_state:ok on every node", every_node_ok)

    def port_of_key(self, key: str) -> int:
        """The port of the node that owns `key`'s slot."""
        node = self.client(self.ports[0])
        slot = int(node.cluster("KEYSLOT", key))
        slots: Any = node.cluster("SLOTS")
        for start, end, primary, *_ in slots:
            if int(start) <= slot <= int(end):
                return int(primary[1])
        raise AssertionError(f"slot {slot} is not covered")

    def kill(self, port: int) -> None:
        """SIGKILL the node on `port` (no goodbye to the others)."""
        process = self._by_port[port]
        process.kill()
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 10
        for process in self._processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@contextmanager
def cluster_of_three(workdir: Path) -> Iterator[RedisClusterSet]:
    """A started three-node cluster, stopped (every process ended) at the end."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    # A failure, not a skip (as tests/support/redis_server.py): a missing Redis must not pass CI.
    assert server and cli, "redis-server/redis-cli missing (Debian/Ubuntu: apt-get install redis)"
    cluster = RedisClusterSet(server, cli, workdir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    """A three-node Redis Cluster shared by one test module (tests use their own prefixes)."""
    with cluster_of_three(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster
