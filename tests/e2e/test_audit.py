"""The audit trail: exactly one JSON line per write attempt, whatever its outcome."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.app.server import Gateway
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.observability.audit import policy_digest
from tests.conftest import Gate, GatewayFactory, wait_until
from tests.support.helpers import ACCOUNT, KEY, OTHER_KEY, POLICY, config_dict, metadata

FIELDS = {
    "time",
    "request_id",
    "tenant",
    "identity",
    "rpc",
    "outcome",
    "reason",
    "registry_id",
    "region",
    "validate_only",
    "etag_before",
    "etag_after",
    "policy_sha256",
    "unverified_destinations",
}


@pytest.fixture
async def audited(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path
) -> tuple[Gateway, Path]:
    raw = config_dict(aws)
    raw["audit"] = {"path": str(tmp_path / "audit.jsonl")}
    return await gateway_factory(raw), tmp_path / "audit.jsonl"


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def only_line(path: Path) -> dict[str, Any]:
    """The one audit line of the one write. Waited for: a refused write's status reaches the
    caller before the gateway writes its line (the line is written as the handler ends)."""
    written: list[dict[str, Any]] = await wait_until(lambda: lines(path), what="the audit line")
    [line] = written
    return line


async def put_policy(
    gateway: Gateway, key: str = KEY, **fields: Any
) -> tuple[grpc.StatusCode, pb.PutRegistryPolicyResponse | None]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        try:
            response = await stub.PutRegistryPolicy(
                pb.PutRegistryPolicyRequest(policy_text=POLICY, **fields), metadata=metadata(key)
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code(), None
    return grpc.StatusCode.OK, response


async def test_allowed_write(audited: tuple[Gateway, Path]) -> None:
    gateway, path = audited
    code, response = await put_policy(gateway)
    assert code == grpc.StatusCode.OK and response is not None
    line = await only_line(path)
    assert set(line) == FIELDS
    assert line["outcome"] == "OK" and line["reason"] is None
    assert line["tenant"] == "payments"
    assert line["identity"].startswith("api_key:sha256:")
    assert line["rpc"] == "PutRegistryPolicy"
    assert (line["registry_id"], line["region"]) == (ACCOUNT, "us-east-1")
    assert line["etag_before"] == "absent"
    assert line["etag_after"] == response.etag
    assert line["policy_sha256"] == policy_digest(POLICY)
    assert line["validate_only"] is False


async def test_denied_write(audited: tuple[Gateway, Path]) -> None:
    gateway, path = audited
    code, _ = await put_policy(gateway, key=OTHER_KEY)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    line = await only_line(path)
    assert line["outcome"] == "PERMISSION_DENIED"
    assert line["reason"] == "TARGET_NOT_ALLOWED"
    assert line["tenant"] == "readonly"
    assert line["etag_before"] is None and line["etag_after"] is None


async def test_unauthenticated_write(audited: tuple[Gateway, Path]) -> None:
    gateway, path = audited
    code, _ = await put_policy(gateway, key="no-such-key")
    assert code == grpc.StatusCode.UNAUTHENTICATED
    line = await only_line(path)
    assert line["outcome"] == "UNAUTHENTICATED" and line["tenant"] is None


async def test_failed_write(audited: tuple[Gateway, Path]) -> None:
    gateway, path = audited
    code, _ = await put_policy(gateway, etag="0" * 32)
    assert code == grpc.StatusCode.ABORTED
    line = await only_line(path)
    assert line["outcome"] == "ABORTED" and line["reason"] == "ETAG_MISMATCH"
    assert line["etag_before"] == "absent" and line["etag_after"] is None


async def test_validate_only_write(audited: tuple[Gateway, Path]) -> None:
    gateway, path = audited
    code, _ = await put_policy(gateway, validate_only=True)
    assert code == grpc.StatusCode.OK
    line = await only_line(path)
    assert line["validate_only"] is True and line["etag_after"] is None


async def test_reads_are_not_audited_and_no_secret_is_written(
    audited: tuple[Gateway, Path],
) -> None:
    gateway, path = audited
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata())
    assert lines(path) == []
    await put_policy(gateway)
    text = path.read_text()
    assert KEY not in text
    assert "ReplicateFromPartner" not in text  # the policy text itself never appears


async def test_write_whose_caller_leaves_is_audited_as_cancelled(
    audited: tuple[Gateway, Path],
    slow_describe: Gate,
    aws_state: Callable[[], dict[str, Any]],
) -> None:
    gateway, path = audited
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        # moto makes a region's registry on first use: compare AWS from then on (a read
        # that DescribeRegistry's gate does not hold).
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as no_policy:
            await stub.GetRegistryPolicy(pb.GetRegistryPolicyRequest(), metadata=metadata())
        assert no_policy.value.code() == grpc.StatusCode.NOT_FOUND
    before = aws_state()
    eu = pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)
    configuration = pb.ReplicationConfiguration(rules=[pb.ReplicationRule(destinations=[eu])])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        leaving = stub.PutReplicationConfiguration(
            pb.PutReplicationConfigurationRequest(replication_configuration=configuration),
            metadata=metadata(),
            timeout=60,
        )
        # The write holds the registry's lock and waits for its fresh read (moto holds it).
        held = await asyncio.get_running_loop().run_in_executor(
            None, slow_describe.entered.wait, 30
        )
        assert held, "the write never reached AWS"
        assert lines(path) == []  # nothing is audited before the write ends
        leaving.cancel()  # the caller leaves
        with pytest.raises(asyncio.CancelledError):
            await leaving
        line = await only_line(path)
        assert line["outcome"] == "CANCELLED" and line["reason"] == "CANCELLED"
        assert line["rpc"] == "PutReplicationConfiguration" and line["tenant"] == "payments"
        assert (line["registry_id"], line["region"]) == (ACCOUNT, "us-east-1")
        assert line["etag_before"] is None and line["etag_after"] is None
        slow_describe.opened.set()
        # The registry's lock is free again (the abandoned write ended, and wrote nothing):
        # another write, a validate-only one, takes it and is audited after it.
        await stub.PutReplicationConfiguration(
            pb.PutReplicationConfigurationRequest(
                replication_configuration=configuration, validate_only=True
            ),
            metadata=metadata(),
            timeout=30,
        )
    assert [line["outcome"] for line in lines(path)] == ["CANCELLED", "OK"]
    assert aws_state() == before  # AWS is unchanged
