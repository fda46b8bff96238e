"""Shared test helpers: configs, keys, and reading rich error details off a failed call."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from service.auth.api_keys import hash_key
from service.config import OPERATIONS
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc

ACCOUNT = "123456789012"  # moto's default account: what the test credentials reach
OTHER_ACCOUNT = "111111111111"
PARTNER_ACCOUNT = "210987654321"  # a replication destination outside the gateway
KEY = "test-key-payments"
OTHER_KEY = "test-key-readonly"
POLICY = (
    '{"Version":"2012-10-17","Statement":[{"Sid":"ReplicateFromPartner","Effect":"Allow",'
    '"Principal":{"AWS":"arn:aws:iam::210987654321:root"},'
    '"Action":["ecr:CreateRepository","ecr:ReplicateImage"],'
    '"Resource":"arn:aws:ecr:us-east-1:123456789012:repository/*"}]}'
)


def metadata(key: str = KEY) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying an API key."""
    return (("authorization", f"Bearer {key}"),)


def config_dict(endpoint_url: str, **server: Any) -> dict[str, Any]:
    """A config with tenant `payments` (everything on ACCOUNT) and `readonly` (reads only)."""
    return {
        "listen": "127.0.0.1:0",
        # The suite calls far faster than a tenant would: the per-tenant upstream budget and
        # writes-in-flight cap are tested at their defaults in tests/adversarial/.
        "server": {
            "drain_seconds": 0,
            "grace_seconds": 1,
            "max_writes_in_flight_per_tenant": 1000,
            **server,
        },
        "aws": {
            "region": "us-east-1",
            "endpoint_url": endpoint_url,
            "max_attempts": 1,
            "connect_timeout_seconds": 1,
            "read_timeout_seconds": 5,
            "tenant_upstream_per_second": 10_000,
            "tenant_upstream_burst": 10_000,
        },
        "tenants": [
            {
                "name": "payments",
                "api_keys": [hash_key(KEY)],
                "registries": [
                    {
                        "registry_id": ACCOUNT,
                        "regions": ["us-east-1", "eu-west-1"],
                        "operations": list(OPERATIONS),
                        # Its slice of the registry for the slice RPCs
                        # (service/registry/model/slices.py).
                        "owned_repository_prefixes": ["payments/"],
                        "owned_statement_sid_prefix": "Payments",
                        "replication_destinations": [
                            # us-east-1 too: validation refuses same-source, not the allow-list.
                            {"registry_id": ACCOUNT, "regions": ["us-east-1", "eu-west-1"]},
                            {"registry_id": PARTNER_ACCOUNT, "regions": ["us-west-2"]},
                        ],
                    }
                ],
            },
            {
                "name": "readonly",
                "api_keys": [hash_key(OTHER_KEY)],
                "registries": [
                    {
                        "registry_id": ACCOUNT,
                        "regions": ["us-east-1"],
                        "operations": ["DescribeRegistry", "GetRegistryPolicy"],
                    }
                ],
            },
        ],
    }


@dataclass
class RichError:
    """The parts of a rich status a test looks at."""

    code: grpc.StatusCode
    message: str
    error_infos: list[error_details_pb2.ErrorInfo]
    bad_request: error_details_pb2.BadRequest | None
    retry_info: error_details_pb2.RetryInfo | None
    trailing: dict[str, Any]

    @property
    def info(self) -> error_details_pb2.ErrorInfo:
        """The one ErrorInfo (AIP-193 says exactly one)."""
        assert len(self.error_infos) == 1, self.error_infos
        return self.error_infos[0]


def rich_error(error: grpc.aio.AioRpcError) -> RichError:
    """Decode google.rpc.Status details from a failed aio call's trailing metadata."""
    trailing = dict(error.trailing_metadata() or ())
    raw = trailing.get("grpc-status-details-bin")
    assert raw is not None, f"no rich status on {error.code()}: {error.details()}"
    status = status_pb2.Status.FromString(raw)
    assert status.code == error.code().value[0]
    details = unpack_details(status)
    bad = details.bad_requests[0] if details.bad_requests else None
    retry = details.retry_infos[0] if details.retry_infos else None
    return RichError(error.code(), error.details() or "", details.error_infos, bad, retry, trailing)


@dataclass
class Details:
    """The google.rpc detail messages of a status, by type."""

    error_infos: list[error_details_pb2.ErrorInfo]
    bad_requests: list[error_details_pb2.BadRequest]
    retry_infos: list[error_details_pb2.RetryInfo]


def unpack_details(status: status_pb2.Status) -> Details:
    """Unpack the ErrorInfo, BadRequest and RetryInfo details of a google.rpc.Status."""
    found = Details([], [], [])
    kinds: list[tuple[Any, list[Any]]] = [
        (error_details_pb2.ErrorInfo, found.error_infos),
        (error_details_pb2.BadRequest, found.bad_requests),
        (error_details_pb2.RetryInfo, found.retry_infos),
    ]
    for detail in status.details:
        for kind, into in kinds:
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                into.append(message)
    return found


async def describe_status(port: int, key: str = KEY) -> grpc.StatusCode:
    """The status of a DescribeRegistry with `key` on a gateway's port."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        try:
            await stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata(key))
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def settled_text(path: Path, quiet: float = 0.1, at_most: float = 3.0) -> str:
    """The text of an audit trail once its writer thread has caught up: the file unchanged
    for `quiet` seconds (at most `at_most`). Event lines (drift, overwritten) are queued
    before the call that saw them answers, and written by the audit's thread just after;
    a write's own line is written before its answer (service/observability/audit.py)."""
    deadline = time.monotonic() + at_most
    size = -1
    while True:
        now = path.stat().st_size if path.exists() else 0
        if now == size or time.monotonic() > deadline:
            return path.read_text() if path.exists() else ""
        size = now
        time.sleep(quiet)
