"""Secrets never leak: sentinel credentials, every error path, and a grep of all that is said.

Logs are captured as production emits them: the gateway's own loggers at DEBUG and every
other logger (botocore, grpc, asyncio) at INFO. botocore's DEBUG output prints request
headers, AWS session token included, which is why the gateway never enables it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import aioboto3
import grpc
import jwt
import pytest

from service import config as config_mod
from service.app.server import Gateway
from service.auth.api_keys import hash_key
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.support.helpers import config_dict

SENTINEL_KEY = "sentinel-api-key-7f3a9c"
SENTINEL_JWT_SECRET = "sentinel-jwt-secret-5b1e8d2c4a6f90d7e3b2a1c4d5e6f708"
SENTINEL_AWS_SECRET = "sentinelAwsSecretKey0123456789abcdefSENT"
SENTINEL_SESSION_TOKEN = "sentinelSessionToken-9d8c7b6a5f4e3d2c1b0a"
ISSUER, AUDIENCE = "https://issuer.example", "registry-gateway"


def sentinel_jwt(**overrides: Any) -> str:
    now = int(time.time())
    # Minted when the module is imported (collection), used minutes later in a long run:
    # an hour, not five minutes, or the suite's length decides the test.
    claims = {"iss": ISSUER, "aud": AUDIENCE, "tenant": "payments", "exp": now + 3600}
    return jwt.encode({**claims, **overrides}, SENTINEL_JWT_SECRET, algorithm="HS256")


SENTINEL_JWT = sentinel_jwt(sub="sentinel-subject-claim")
EXPIRED_JWT = sentinel_jwt(exp=int(time.time()) - 3600)


def sentinel_session() -> aioboto3.Session:
    return aioboto3.Session(
        aws_access_key_id="ASIASENTINELACCESSKEY",
        aws_secret_access_key=SENTINEL_AWS_SECRET,
        aws_session_token=SENTINEL_SESSION_TOKEN,
    )


async def start(raw: dict[str, Any], tmp_path: Path) -> Gateway:
    environ = {"GATEWAY_JWT_SECRET": SENTINEL_JWT_SECRET}
    raw["auth"] = {
        "jwt": {"issuer": ISSUER, "audience": AUDIENCE, "hs256_secret_env": "GATEWAY_JWT_SECRET"}
    }
    raw["audit"] = {"path": str(tmp_path / "audit.jsonl")}
    raw["tenants"][0]["api_keys"].append(hash_key(SENTINEL_KEY))
    gateway = Gateway(
        config_mod.from_mapping(raw, environ=environ),
        session_factory=sentinel_session,
        environ=environ,
    )
    await gateway.start()
    return gateway


async def drive(gateway: Gateway, said: list[str]) -> list[grpc.StatusCode]:
    """Every error path reachable by a caller; everything the caller is told goes in `said`."""
    bad_policy = pb.PutRegistryPolicyRequest(policy_text='{"Version": "2012-10-17"}')
    calls: list[tuple[str, Any, str]] = [
        ("DescribeRegistry", pb.DescribeRegistryRequest(), SENTINEL_KEY),
        ("DescribeRegistry", pb.DescribeRegistryRequest(), SENTINEL_JWT),
        ("DescribeRegistry", pb.DescribeRegistryRequest(), SENTINEL_KEY + "x"),
        ("DescribeRegistry", pb.DescribeRegistryRequest(), EXPIRED_JWT),
        ("DescribeRegistry", pb.DescribeRegistryRequest(), SENTINEL_JWT[:-4] + "AAAA"),
        ("GetRegistryPolicy", pb.GetRegistryPolicyRequest(), SENTINEL_KEY),
        ("PutRegistryPolicy", bad_policy, SENTINEL_JWT),
        ("PutRegistryPolicy", pb.PutRegistryPolicyRequest(policy_text="not json"), SENTINEL_KEY),
        ("DeleteRegistryPolicy", pb.DeleteRegistryPolicyRequest(etag="x"), SENTINEL_KEY),
        ("DescribeRegistry", pb.DescribeRegistryRequest(registry_id="999999999999"), SENTINEL_KEY),
        ("DescribeRegistry", pb.DescribeRegistryRequest(region="ap-south-1"), SENTINEL_JWT),
    ]
    codes: list[grpc.StatusCode] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        for rpc, request, token in calls:
            call = getattr(stub, rpc)(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=10
            )
            try:
                said.append(str(await call))
            except grpc.aio.AioRpcError as exc:
                said.append(f"{exc.code()} {exc.details()} {exc.debug_error_string()}")
            said.append(repr(await call.trailing_metadata()))
            codes.append(await call.code())
    return codes


@pytest.mark.parametrize("endpoint", ["moto", "unreachable"])
async def test_no_sentinel_is_ever_said(
    aws: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    endpoint: str,
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="registry_gateway")
    raw = config_dict(aws if endpoint == "moto" else "http://127.0.0.1:9")
    gateway = await start(raw, tmp_path)
    said: list[str] = []
    try:
        codes = await drive(gateway, said)
    finally:
        await gateway.stop_now()
    out, err = capsys.readouterr()
    audit = (tmp_path / "audit.jsonl").read_text()
    everything = "\n".join([*said, caplog.text, out, err, audit])
    # The sentinels really are working credentials: the test cannot pass vacuously.
    expected_first = grpc.StatusCode.OK if endpoint == "moto" else grpc.StatusCode.UNAVAILABLE
    assert codes[:2] == [expected_first, expected_first]
    assert grpc.StatusCode.UNAUTHENTICATED in codes and grpc.StatusCode.PERMISSION_DENIED in codes
    sentinels: dict[str, str] = {
        "api key": SENTINEL_KEY,
        "jwt": SENTINEL_JWT,
        "jwt signature": SENTINEL_JWT.rsplit(".", 1)[1],
        "expired jwt": EXPIRED_JWT,
        "jwt secret": SENTINEL_JWT_SECRET,
        "aws secret": SENTINEL_AWS_SECRET,
        "aws session token": SENTINEL_SESSION_TOKEN,
    }
    leaks = [name for name, value in sentinels.items() if value in everything]
    assert leaks == []
    assert "Traceback" not in everything
