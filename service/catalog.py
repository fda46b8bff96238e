"""The contract's RPCs, read from its descriptor: which read, which write, which are ECR's.

Nothing here is a list kept by hand. A read is an RPC marked
`option idempotency_level = NO_SIDE_EFFECTS;` in proto/ecr/registry/v1/registry.proto; every
other RPC is a write (an audit line each, the write rate limit, unknown fields refused). An
RPC named as an operation of the ECR API (botocore's service model) proxies that operation;
the others (the tenant-owned slices) reach AWS through those.
"""

from __future__ import annotations

import functools
from typing import Any

import botocore.session
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.descriptor_pb2 import MethodOptions

from service.gen.v1 import registry_pb2 as pb

SERVICE: ServiceDescriptor = pb.DESCRIPTOR.services_by_name["RegistryConfigService"]


def is_read(method: MethodDescriptor) -> bool:
    """Whether the contract marks the RPC as having no side effects."""
    options = method.GetOptions()
    assert isinstance(options, MethodOptions)
    return options.idempotency_level == MethodOptions.NO_SIDE_EFFECTS


@functools.cache
def aws_model() -> Any:
    """botocore's ECR service model, loaded once (parsing it costs tens of milliseconds)."""
    return botocore.session.get_session().get_service_model("ecr")


# Every RPC of the service, in the order the contract declares them.
RPCS: tuple[str, ...] = tuple(method.name for method in SERVICE.methods)
READS: frozenset[str] = frozenset(m.name for m in SERVICE.methods if is_read(m))
WRITES: frozenset[str] = frozenset(RPCS) - READS
# The RPCs that are ECR API operations of the same name (an IAM policy names these).
ECR_OPERATIONS: tuple[str, ...] = tuple(rpc for rpc in RPCS if rpc in aws_model().operation_names)
# The gateway's own RPCs (no ECR operation of that name): the tenant-owned slices and the
# configuration history. They reach AWS, if at all, through the ECR operations.
SLICE_OPERATIONS: tuple[str, ...] = tuple(rpc for rpc in RPCS if rpc not in ECR_OPERATIONS)
# Reads answered from no cache: the history is read from the store (Redis) whole on every
# call, up to `history.max_bytes`. Like a `no-cache` read they draw on the tenant's budget of
# calls past the cache (`aws.tenant_upstream_*`), so one tenant polling it cannot load the
# Redis every replica's locks and cache share.
UNCACHED_READS: frozenset[str] = frozenset({"GetConfigurationHistory"}) & READS
