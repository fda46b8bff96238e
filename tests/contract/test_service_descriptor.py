"""Every RPC in the service descriptor has an implementation and an end-to-end test."""

from __future__ import annotations

from pathlib import Path

import pytest

from service import catalog
from service.config import OPERATIONS
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.rpc.request_limits import largest_request_bytes, max_request_bytes
from service.rpc.servicer import RegistryConfigServicer

SERVICE = pb.DESCRIPTOR.services_by_name["RegistryConfigService"]
RPCS = [m.name for m in SERVICE.methods]
E2E = Path(__file__).parent.parent / "e2e"


def test_the_contract_names() -> None:
    assert SERVICE.full_name == "ecr.registry.v1.RegistryConfigService"
    assert set(OPERATIONS) <= set(RPCS)


@pytest.mark.parametrize("rpc", RPCS)
def test_rpc_is_implemented(rpc: str) -> None:
    base = getattr(pb_grpc.RegistryConfigServiceServicer, rpc)
    assert getattr(RegistryConfigServicer, rpc) is not base, f"{rpc} is not implemented"


@pytest.mark.parametrize("rpc", RPCS)
def test_rpc_has_an_end_to_end_test(rpc: str) -> None:
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in rpc).lstrip("_")
    path = E2E / f"test_{snake}.py"
    assert path.exists(), f"{rpc} needs tests in {path.relative_to(E2E.parent.parent)}"
    assert f"stub.{rpc}(" in path.read_text()


def test_the_catalog_reads_are_the_rpcs_marked_without_side_effects() -> None:
    # A read: no audit line, the read rate limit, GET and ETag over HTTP, retried by clients.
    assert {
        "DescribeRegistry",
        "GetRegistryPolicy",
        "GetReplicationRules",
        "GetPolicyStatements",
        "GetConfigurationHistory",
    } == catalog.READS
    assert set(RPCS) - catalog.READS == catalog.WRITES


@pytest.mark.parametrize("rpc", RPCS)
def test_every_request_has_a_byte_bound(rpc: str) -> None:
    # Derived from the request's fields; a field without a bound fails loudly (LookupError).
    assert 0 < max_request_bytes(rpc) <= largest_request_bytes()


def test_the_history_request_is_small() -> None:
    # Its only free text is a page token of at most 64 characters: far below any write.
    assert max_request_bytes("GetConfigurationHistory") < 2 * 1024
