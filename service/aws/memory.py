"""ECR in memory, for unit tests of the domain logic (service/registry/) through the port.

Never used by the server: the gateway always calls AWS through `Upstream`, and its end-to-end
tests run against a real moto server. This fake behaves like ECR for the five operations
of the port (service/aws/port.py), per (registry, region):

- no policy: GetRegistryPolicy answers `NoPolicy`, DeleteRegistryPolicy NotFound (the
  mapping of ECR's RegistryPolicyNotFoundException, service/aws/errors.py);
- DescribeRegistry answers what PutReplicationConfiguration stored, as its AWS JSON, with
  the etag every implementation computes (service/ecr/convert.py);
- ECR rewrites a policy it stores (account ids into root ARNs): `rewrite_policy` plays that
  part, so a test can tell a read-back from the request.

Tests can see every call (`calls`), make the next call of an operation fail (`fail_next`),
hold writes until they are let through (`hold_writes`), and seed or inspect the state.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.auth.targets import Target
from service.aws.errors import POLICY_NOT_FOUND, from_aws
from service.aws.port import NoPolicy
from service.ecr import convert
from service.errors import GatewayError
from service.gen.v1 import registry_pb2 as pb


@dataclass(frozen=True)
class Call:
    """One call the fake answered: operation, registry, region and how it was asked."""

    operation: str
    registry_id: str
    region: str
    shared: bool = False
    finish_once_sent: bool = False


@dataclass
class _Registry:
    policy: str | None = None
    replication: dict[str, Any] = field(default_factory=lambda: {"rules": []})


class MemoryEcr:
    """The ECR port in memory (see the module docstring)."""

    def __init__(self, *, rewrite_policy: Callable[[str], str] = lambda text: text) -> None:
        self.rewrite_policy = rewrite_policy
        self.calls: list[Call] = []
        # operation -> the error its next call raises (once), before touching anything.
        self.fail_next: dict[str, GatewayError] = {}
        # When set, writes wait for it before they apply (to test what happens meanwhile).
        self.hold_writes: asyncio.Event | None = None
        self._registries: dict[tuple[str, str], _Registry] = {}
        self._request_ids = itertools.count(1)

    # --- state, for tests --------------------------------------------------------------------

    def policy(self, registry_id: str, region: str) -> str | None:
        """The policy ECR holds (None: none)."""
        return self._registry(registry_id, region).policy

    def set_policy(self, registry_id: str, region: str, text: str | None) -> None:
        """Change the policy behind the gateway's back (the console, Terraform)."""
        self._registry(registry_id, region).policy = text

    def replication(self, registry_id: str, region: str) -> pb.ReplicationConfiguration:
        """The replication configuration ECR holds."""
        return convert.replication_from_aws(self._registry(registry_id, region).replication)

    def set_replication(
        self, registry_id: str, region: str, configuration: pb.ReplicationConfiguration
    ) -> None:
        """Change the replication configuration behind the gateway's back."""
        self._registry(registry_id, region).replication = convert.replication_to_aws(configuration)

    def writes(self) -> list[Call]:
        """The write calls answered so far."""
        return [c for c in self.calls if c.operation.startswith(("put_", "delete_"))]

    # --- the port ----------------------------------------------------------------------------

    async def describe_registry(
        self, target: Target, *, shared: bool = False
    ) -> pb.DescribeRegistryResponse:
        """DescribeRegistry: the stored configuration, with its etag."""
        registry = self._called("describe_registry", target, shared=shared)
        return convert.describe_response(
            {"registryId": target.registry_id, "replicationConfiguration": registry.replication}
        )

    async def get_registry_policy(self, target: Target, *, shared: bool = False) -> str | NoPolicy:
        """GetRegistryPolicy: the stored text, or NoPolicy."""
        registry = self._called("get_registry_policy", target, shared=shared)
        if registry.policy is None:
            return NoPolicy(self._request_id())
        return registry.policy

    async def put_registry_policy(
        self, target: Target, policy_text: str, *, finish_once_sent: bool = False
    ) -> str:
        """PutRegistryPolicy: stores the text as ECR would (`rewrite_policy`)."""
        registry = self._called("put_registry_policy", target, finish_once_sent=finish_once_sent)
        await self._held()
        registry.policy = self.rewrite_policy(policy_text)
        return policy_text

    async def delete_registry_policy(
        self, target: Target, *, finish_once_sent: bool = False
    ) -> str:
        """DeleteRegistryPolicy: the deleted text; NotFound like ECR when there is none."""
        registry = self._called("delete_registry_policy", target, finish_once_sent=finish_once_sent)
        await self._held()
        if registry.policy is None:
            raise from_aws(
                POLICY_NOT_FOUND,
                "Registry policy does not exist in the registry",
                self._request_id(),
                "delete_registry_policy",
            )
        deleted, registry.policy = registry.policy, None
        return deleted

    async def put_replication_configuration(
        self,
        target: Target,
        configuration: pb.ReplicationConfiguration,
        *,
        finish_once_sent: bool = False,
    ) -> pb.ReplicationConfiguration:
        """PutReplicationConfiguration: stores it as the AWS JSON the client would send."""
        registry = self._called(
            "put_replication_configuration", target, finish_once_sent=finish_once_sent
        )
        await self._held()
        registry.replication = convert.replication_to_aws(configuration)
        return convert.replication_from_aws(registry.replication)

    # --- inside ------------------------------------------------------------------------------

    def _called(
        self,
        operation: str,
        target: Target,
        *,
        shared: bool = False,
        finish_once_sent: bool = False,
    ) -> _Registry:
        self.calls.append(
            Call(operation, target.registry_id, target.region, shared, finish_once_sent)
        )
        error = self.fail_next.pop(operation, None)
        if error is not None:
            raise error
        return self._registry(target.registry_id, target.region)

    async def _held(self) -> None:
        if self.hold_writes is not None:
            await self.hold_writes.wait()

    def _registry(self, registry_id: str, region: str) -> _Registry:
        return self._registries.setdefault((registry_id, region), _Registry())

    def _request_id(self) -> str:
        return f"memory-{next(self._request_ids)}"
