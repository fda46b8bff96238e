"""The gateway's Redis client, from `cache:`: one URL, the primary found through Sentinel, or
a Redis Cluster, with an ACL user and TLS when configured. One Redis is behind a circuit
(redis_circuit.py); a cluster is not (see `cluster_client`)."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Mapping
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.lock import Lock
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, SlotNotCoveredError

from service.config import ConfigError
from service.config.base import parse_listen
from service.config.state import CacheConfig, RedisTlsConfig
from service.state.redis_circuit import circuit_client, sentinel_client
from service.state.redis_keys import RedisClient

# Every command waits this long at most (then the circuit opens: one wait per outage).
REDIS_TIMEOUT_SECONDS = 1.0


def env_secret(key: str, env_name: str | None, environ: Mapping[str, str]) -> str | None:
    """The value of the environment variable the config key `key` names (None: not named)."""
    if env_name is None:
        return None
    value = environ.get(env_name)
    if not value:
        raise ConfigError(
            f"config error: {key}: environment variable {env_name} is not set or empty"
        )
    return value


def _tls_kwargs(tls: RedisTlsConfig | None) -> dict[str, Any]:
    if tls is None:
        return {}
    return {
        "ssl": True,
        "ssl_ca_certs": tls.ca_file,
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "ssl_cert_reqs": ssl.CERT_REQUIRED,  # the server's certificate is always checked
    }


def redis_client(
    cache: CacheConfig, password: str | None, environ: Mapping[str, str]
) -> RedisClient:
    """The client every user of Redis shares (cache, locks, limits, history, claims).

    No client-side retries: the rate limiter fails open at once when Redis is away (redis-py
    would otherwise retry a refused connection with backoff on every call)."""
    common: dict[str, Any] = {
        "username": env_secret("cache.redis_username_env", cache.redis_username_env, environ),
        "password": password,
        "socket_timeout": REDIS_TIMEOUT_SECONDS,
        "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
        "retry": Retry(NoBackoff(), 0),
    }
    if cache.redis_cluster_nodes is not None:
        return cluster_client(cache.redis_cluster_nodes, cache.redis_tls, common)
    sentinel = cache.redis_sentinel
    if sentinel is None:
        tls = _tls_kwargs(cache.redis_tls)
        tls.pop("ssl", None)  # the URL's scheme says it (rediss://, required with redis_tls)
        return circuit_client(cache.redis_url, **common, **tls)
    sentinel_password = env_secret(
        "cache.redis_sentinel.password_env", sentinel.password_env, environ
    )
    return sentinel_client(
        sentinel.master_name,
        [parse_listen(node) for node in sentinel.nodes],
        # The sentinels are asked at every connect: bounded like Redis, no retries.
        sentinel_kwargs={
            "password": sentinel_password,
            "socket_timeout": REDIS_TIMEOUT_SECONDS,
            "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
            "retry": Retry(NoBackoff(), 0),
            **_tls_kwargs(cache.redis_tls),
        },
        **common,
        **_tls_kwargs(cache.redis_tls),
    )


def _sha(script: str | bytes) -> str:
    # SHA-1 because Redis names scripts by it (EVALSHA), not as a safeguard.
    data = script.encode() if isinstance(script, str) else script
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


# redis-py's Lock registers its scripts once per class, with whichever client made the first
# lock: known here by digest, whatever client that was.
_LOCK_SCRIPTS: dict[str, str | bytes] = {
    _sha(body): body
    for body in (Lock.LUA_RELEASE_SCRIPT, Lock.LUA_EXTEND_SCRIPT, Lock.LUA_REACQUIRE_SCRIPT)
}


class GatewayCluster(RedisCluster):
    """redis-py's asyncio RedisCluster, made to fail as one Redis does.

    - "No node answers": redis-py raises `RedisClusterException`, which is not a
      `RedisError`, when no startup node answers or the slots are not all covered (its
      `initialize`), and `SlotNotCoveredError` when a slot has no node; every user of Redis
      handles a Redis away as `RedisError`/`OSError` (a read goes to AWS, a write answers
      UNAVAILABLE), so both are raised as ConnectionError here. Its other
      `RedisClusterException`s (keys of several slots in one command) are the gateway's own
      mistakes and stay as they are.
    - A script a node does not know (NOSCRIPT: a new node, a restart, a failover) is loaded
      on the node owning its first key, then run again. redis-py loads it on every primary
      instead (SCRIPT LOAD goes to all of them), so one node down would stop every script
      on every other node until it is back."""

    def register_script(self, script: str | bytes) -> AsyncScript:  # type: ignore[override]
        registered = super().register_script(script)
        self._script_bodies()[registered.sha] = script
        return registered

    def _script_bodies(self) -> dict[str, str | bytes]:
        # Not in __init__: RedisCluster's keyword arguments are many and change by version.
        bodies: dict[str, str | bytes] | None = getattr(self, "_gateway_scripts", None)
        if bodies is None:
            bodies = dict(_LOCK_SCRIPTS)
            self._gateway_scripts = bodies
        return bodies

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        # Passed through as given: its parameters differ between redis-py's versions.
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise RedisConnectionError(f"Redis Cluster unavailable: {exc}") from exc

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        # Mapped first: redis-py (8.1) chooses how to route a command before it maps the
        # cluster, and with no node known yet it routes a keyed command (GET, EVALSHA) as
        # a keyless one, to any node: a storm of first commands (or the first after a
        # failover) is answered MOVED, and every fifth MOVED closes every connection,
        # failing the commands on them (seen here: 50 GETs at once on a new client).
        if self._initialize:
            await self.initialize()
        try:
            try:
                return await super().execute_command(*args, **kwargs)
            except NoScriptError:
                body = self._script_bodies().get(str(args[1])) if args[0] == "EVALSHA" else None
                if body is None or int(args[2]) < 1:
                    raise  # redis-py's own fallback: SCRIPT LOAD on every primary
                node = self.get_node_from_key(args[3])
                await super().execute_command("SCRIPT LOAD", body, target_nodes=node)
                return await super().execute_command(*args, **kwargs)
        except SlotNotCoveredError as exc:
            raise RedisConnectionError(f"Redis Cluster unavailable: {exc}") from exc


def cluster_client(
    nodes: tuple[str, ...], tls: RedisTlsConfig | None, common: dict[str, Any]
) -> RedisCluster:
    """redis-py's asyncio RedisCluster, discovering the cluster from any of `nodes`.

    No retries (`common`'s): a command a node fails (a refused or dropped connection, a
    timeout, CLUSTERDOWN during a failover) fails at once as "Redis away", as with one
    Redis, and the client maps the cluster again on its next command (redis-py marks it for
    re-initialization), so a promoted replica is found without a restart. MOVED and ASK
    are followed as ever. No circuit (redis_circuit.py): redis-py's cluster builds its
    nodes' connections itself, so a node that hangs costs each command sent to it its 1 s
    timeout (docs/operations.md)."""
    return GatewayCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in map(parse_listen, nodes)],
        **common,
        **_tls_kwargs(tls),
    )
