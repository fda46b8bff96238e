"""`cache:`'s Redis modes (issue 23): one URL, Sentinel, TLS and ACL users; `check-config`
refuses two modes at once, and a secret named by the config is never printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.config import ConfigError
from service.config.loading import from_mapping
from service.state.redis_connect import redis_client
from tests.e2e.test_cli import env
from tests.e2e.test_operator_cli import run, write
from tests.support.helpers import config_dict

SENTINEL = {"master_name": "gateway", "nodes": ["127.0.0.1:26379", "[::1]:26380"]}


def _with_cache(cache: dict[str, Any]) -> dict[str, Any]:
    raw = config_dict("http://127.0.0.1:9")
    raw["cache"] = {"backend": "redis", **cache}
    return raw


@pytest.mark.parametrize(
    ("cache", "key", "words"),
    [
        (
            {"redis_url": "redis://127.0.0.1:9/0", "redis_sentinel": SENTINEL},
            "cache",
            "conflicting Redis modes: redis_url and redis_sentinel",
        ),
        (
            {"redis_sentinel": SENTINEL, "redis_cluster_nodes": ["127.0.0.1:7000"]},
            "cache",
            "conflicting Redis modes: redis_sentinel and redis_cluster_nodes",
        ),
        (
            {"redis_url": "redis://127.0.0.1:9/0", "redis_cluster_nodes": ["127.0.0.1:7000"]},
            "cache",
            "conflicting Redis modes: redis_url and redis_cluster_nodes",
        ),
        (
            {"redis_cluster_nodes": ["127.0.0.1:7000"], "key_prefix": "gw{a}:"},
            "cache",
            "key_prefix: no { or } with redis_cluster_nodes",
        ),
        (
            {"redis_cluster_nodes": ["127.0.0.1:7000", "127.0.0.1:7000"]},
            "cache.redis_cluster_nodes",
            "listed twice",
        ),
        (
            {"redis_cluster_nodes": []},
            "cache.redis_cluster_nodes",
            "",
        ),
        (
            {"redis_sentinel": {"master_name": "m", "nodes": ["sentinel-without-port"]}},
            "cache.redis_sentinel.nodes",
            "expected HOST:PORT",
        ),
        (
            {"redis_sentinel": {"master_name": "m", "nodes": ["a:1", "a:1"]}},
            "cache.redis_sentinel.nodes",
            "listed twice",
        ),
        (
            {"redis_sentinel": {"master_name": "", "nodes": ["a:1"]}},
            "cache.redis_sentinel.master_name",
            "",
        ),
        (
            {"redis_tls": {"ca_file": "/ca.pem"}},
            "cache",
            "redis_tls needs a rediss:// redis_url",
        ),
        (
            {"redis_url": "rediss://r:6380/0", "redis_tls": {"cert_file": "/c.pem"}},
            "cache.redis_tls",
            "cert_file and key_file go together",
        ),
        ({"redis_url": "http://127.0.0.1:6379"}, "cache.redis_url", "rediss://"),
    ],
    ids=[
        "url-and-sentinel",
        "sentinel-and-cluster",
        "url-and-cluster",
        "cluster-prefix-with-a-brace",
        "cluster-node-twice",
        "cluster-without-nodes",
        "node-without-port",
        "node-twice",
        "empty-master-name",
        "tls-on-plain-url",
        "cert-without-key",
        "not-a-redis-url",
    ],
)
async def test_check_config_refuses_conflicting_or_broken_modes(
    tmp_path: Path, cache: dict[str, Any], key: str, words: str
) -> None:
    path = write(tmp_path, _with_cache(cache))
    code, out, err = await run("check-config", "--json", path)
    assert code == 1, out + err
    problems = json.loads(out)["problems"]
    assert [p["key"] for p in problems] == [key], problems
    assert words in problems[0]["message"]
    assert "Traceback" not in out + err


async def test_check_config_accepts_each_mode_alone(tmp_path: Path) -> None:
    for cache in (
        {"redis_url": "rediss://redis.example:6380/0", "redis_tls": {"ca_file": "/ca.pem"}},
        {
            "redis_sentinel": {**SENTINEL, "password_env": "SENTINEL_PASSWORD"},
            "redis_username_env": "REDIS_USER",
            "redis_tls": {"ca_file": "/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem"},
        },
        {
            "redis_cluster_nodes": ["10.0.0.1:6379", "[::1]:7001", "redis-2.internal:6379"],
            "redis_password_env": "REDIS_PASSWORD",
            "redis_tls": {"ca_file": "/ca.pem"},
        },
    ):
        path = write(tmp_path, _with_cache(cache))
        # Offline: no sentinel, file or environment variable named is consulted.
        code, _, err = await run("check-config", path, environ=env())
        assert code == 0, err


def test_a_missing_secret_variable_names_the_key_not_a_value() -> None:
    config = from_mapping(
        _with_cache(
            {
                "redis_sentinel": {**SENTINEL, "password_env": "SENTINEL_PASSWORD"},
                "redis_username_env": "REDIS_USER",
            }
        )
    )
    with pytest.raises(ConfigError, match=r"cache\.redis_username_env: environment variable"):
        redis_client(config.cache, None, {})
    with pytest.raises(ConfigError, match=r"cache\.redis_sentinel\.password_env: environment"):
        redis_client(config.cache, None, {"REDIS_USER": "gateway"})
