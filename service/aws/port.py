"""The ECR port: the five registry-level ECR operations the domain needs, typed.

service/registry/ calls ECR only through `EcrPort`. Its implementations:

- `service.aws.upstream.Upstream`: aioboto3, one verified client per (account, region),
  behind the breaker and bulkheads, traced and measured; what the server uses;
- `service.aws.memory.MemoryEcr`: ECR's behaviour for these five operations in memory,
  for unit tests of the domain logic only (never used by the server).

Every implementation answers in proto messages and plain values (no AWS JSON) and raises
only the gateway's errors (service/errors.py), mapped in service/aws/errors.py. Etags are
computed the same way by every implementation (service/ecr/etags.py, on the AWS JSON
of the configuration, service/ecr/convert.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from service.auth.targets import Target
from service.aws.errors import policy_not_found
from service.errors import NotFound
from service.gen.v1 import registry_pb2 as pb


@dataclass(frozen=True)
class NoPolicy:
    """ECR's answer to GetRegistryPolicy on a registry without a policy.

    Not an error: a write's fresh read and a slice read take it as "nothing yet". It keeps
    AWS's request id, which a NOT_FOUND answered to the caller quotes for the operators.
    """

    aws_request_id: str = ""

    def not_found(self) -> NotFound:
        """The NOT_FOUND a caller of GetRegistryPolicy is answered."""
        return policy_not_found(self.aws_request_id, "get_registry_policy")


class EcrPort(Protocol):
    """ECR's registry configuration of one target (registry and region).

    `shared`: the read is a cache load, which every caller of the key waits for; it is on
    behalf of no one tenant and takes none of the target tenant's share of the AWS call
    slots. `finish_once_sent`: a write is bounded by what remains of the caller's deadline
    only until it is sent; abandoning it half-way would leave its outcome unknown.
    """

    async def describe_registry(
        self, target: Target, *, shared: bool = False
    ) -> pb.DescribeRegistryResponse:
        """DescribeRegistry: the replication configuration, with its etag."""
        ...

    async def get_registry_policy(self, target: Target, *, shared: bool = False) -> str | NoPolicy:
        """GetRegistryPolicy: the policy text as ECR stores it, or NoPolicy."""
        ...

    async def put_registry_policy(
        self, target: Target, policy_text: str, *, finish_once_sent: bool = False
    ) -> str:
        """PutRegistryPolicy; answers the policy text ECR took."""
        ...

    async def delete_registry_policy(
        self, target: Target, *, finish_once_sent: bool = False
    ) -> str:
        """DeleteRegistryPolicy; answers the policy text ECR deleted, NotFound (like ECR's
        RegistryPolicyNotFoundException) when there is none."""
        ...

    async def put_replication_configuration(
        self,
        target: Target,
        configuration: pb.ReplicationConfiguration,
        *,
        finish_once_sent: bool = False,
    ) -> pb.ReplicationConfiguration:
        """PutReplicationConfiguration; answers the configuration ECR took."""
        ...
