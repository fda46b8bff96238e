"""`cache.redis_tls` and `cache.redis_username_env` against a real redis-server speaking only
TLS and requiring client certificates (issue 23): the gateway's client gets in with its
certificate and ACL user; a stranger without a certificate does not, and the gateway does
not talk to a server its CA did not sign."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from service.config.state import CacheConfig
from service.state.redis_connect import redis_client
from tests.support.certs import Pki, client_cert, make_pki

PASSWORD = "acl-password-Tq81"


@dataclass
class TlsRedis:
    port: int
    pki: Pki
    cert: Path
    key: Path
    foreign_cert: Path
    foreign_key: Path


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)"
    pki = make_pki(tmp_path / "pki")
    cert, key = client_cert(pki, "gateway", None)
    foreign_cert, foreign_key = client_cert(pki, "stranger", None, foreign=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # An ACL user of the gateway's own; the default user is off.
    conf = tmp_path / "redis.conf"
    conf.write_text(f"user gateway on >{PASSWORD} ~* &* +@all\nuser default off\n")
    log = (tmp_path / "redis.log").open("ab")
    process = subprocess.Popen(
        [
            binary,
            str(conf),
            *("--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port)),
            *("--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key)),
            *("--tls-ca-cert-file", str(pki.ca_cert), "--tls-auth-clients", "yes"),
            *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
        ],
        stdout=log,
        stderr=log,
    )
    log.close()
    admin = redis.Redis(
        port=port,
        username="gateway",
        password=PASSWORD,
        ssl=True,
        ssl_ca_certs=str(pki.ca_cert),
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        socket_timeout=1,
    )
    deadline = time.monotonic() + 30  # an external process coming up: bounded poll
    while True:
        assert process.poll() is None, (tmp_path / "redis.log").read_text()
        try:
            if admin.ping():
                break
        except (redis.RedisError, OSError):
            assert time.monotonic() < deadline, (tmp_path / "redis.log").read_text()
            time.sleep(0.05)
    admin.close()
    try:
        yield TlsRedis(port, pki, cert, key, foreign_cert, foreign_key)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _cache(server: TlsRedis, ca: Path, cert: Path | None, key: Path | None) -> CacheConfig:
    tls: dict[str, str] = {"ca_file": str(ca)}
    if cert is not None and key is not None:
        tls |= {"cert_file": str(cert), "key_file": str(key)}
    return CacheConfig(
        backend="redis",
        redis_url=f"rediss://127.0.0.1:{server.port}/0",
        redis_tls=tls,
        redis_username_env="REDIS_USER",
        redis_password_env="REDIS_PASSWORD",
    )


ENV = {"REDIS_USER": "gateway"}


async def test_the_gateway_gets_in_with_its_certificate_and_acl_user(tls_redis: TlsRedis) -> None:
    cache = _cache(tls_redis, tls_redis.pki.ca_cert, tls_redis.cert, tls_redis.key)
    client = redis_client(cache, PASSWORD, ENV)
    try:
        assert await client.set("k", "v")
        assert await client.acl_whoami() == "gateway"
    finally:
        await client.aclose()


async def test_without_a_client_certificate_nothing_gets_in(tls_redis: TlsRedis) -> None:
    client = redis_client(_cache(tls_redis, tls_redis.pki.ca_cert, None, None), PASSWORD, ENV)
    try:
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            await client.set("k", "v")
    finally:
        await client.aclose()


async def test_a_server_its_ca_did_not_sign_is_refused(tls_redis: TlsRedis) -> None:
    # The gateway trusts only the foreign CA: the real server's certificate is not one of its.
    cache = _cache(
        tls_redis, tls_redis.pki.foreign_ca_cert, tls_redis.foreign_cert, tls_redis.foreign_key
    )
    client = redis_client(cache, PASSWORD, ENV)
    try:
        with pytest.raises(redis.ConnectionError, match=r"(?i)certificate"):
            await client.set("k", "v")
    finally:
        await client.aclose()


async def test_a_wrong_acl_password_is_refused(tls_redis: TlsRedis) -> None:
    cache = _cache(tls_redis, tls_redis.pki.ca_cert, tls_redis.cert, tls_redis.key)
    client = redis_client(cache, "not-the-password", ENV)
    try:
        with pytest.raises(redis.AuthenticationError):
            await client.set("k", "v")
    finally:
        await client.aclose()
