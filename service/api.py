"""The servicer: one thin method per RPC, composing authorization and the operations.

The wrapper in `middleware` has already authenticated the caller and set the deadline;
each method reads like the call path of DESIGN.md and decides nothing itself.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc
from ecr.registry.v1 import registry_pb2 as pb
from ecr.registry.v1 import registry_pb2_grpc as pb_grpc

from service.auth.targets import Target, TargetAuthorizer
from service.middleware import current_call
from service.operations import RegistryOperations

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"  # generic only in the stubs


class RegistryConfigServicer(pb_grpc.RegistryConfigServiceServicer):
    """ecr.registry.v1.RegistryConfigService."""

    def __init__(self, authorizer: TargetAuthorizer, operations: RegistryOperations) -> None:
        self._authorizer = authorizer
        self._ops = operations

    def _target(self, registry_id: str, region: str) -> Target:
        call = current_call()
        return self._authorizer.authorize(call.tenant, call.rpc, registry_id, region)

    async def DescribeRegistry(
        self, request: pb.DescribeRegistryRequest, context: Context
    ) -> pb.DescribeRegistryResponse:
        target = self._target(request.registry_id, request.region)
        return await self._ops.describe_registry(target)

    async def GetRegistryPolicy(
        self, request: pb.GetRegistryPolicyRequest, context: Context
    ) -> pb.GetRegistryPolicyResponse:
        target = self._target(request.registry_id, request.region)
        return await self._ops.get_registry_policy(target)

    async def PutRegistryPolicy(
        self, request: pb.PutRegistryPolicyRequest, context: Context
    ) -> pb.PutRegistryPolicyResponse:
        target = self._target(request.registry_id, request.region)
        return await self._ops.put_registry_policy(
            target, request.policy_text, request.etag, request.validate_only
        )

    async def DeleteRegistryPolicy(
        self, request: pb.DeleteRegistryPolicyRequest, context: Context
    ) -> pb.DeleteRegistryPolicyResponse:
        target = self._target(request.registry_id, request.region)
        return await self._ops.delete_registry_policy(target, request.etag, request.validate_only)

    async def PutReplicationConfiguration(
        self, request: pb.PutReplicationConfigurationRequest, context: Context
    ) -> pb.PutReplicationConfigurationResponse:
        target = self._target(request.registry_id, request.region)
        return await self._ops.put_replication_configuration(
            target, request.replication_configuration, request.etag, request.validate_only
        )
