"""The gateway's Redis client, from `cache:`: one URL or the primary found through Sentinel,
with an ACL user and TLS when configured; always behind a circuit (redis_circuit.py)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.config import ConfigError
from service.config.base import parse_listen
from service.config.state import CacheConfig, RedisTlsConfig
from service.state.redis_circuit import circuit_client, sentinel_client

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
) -> redis.Redis:
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
