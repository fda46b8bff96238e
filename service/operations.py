"""The five ECR operations as the gateway performs them: reads, and writes under the lock.

A write takes the registry's lock, reads the current value fresh (for the caller's etag
precondition and the audit trail), calls AWS (unless validate_only), and answers with a
fresh read taken inside the lock, so the etag it returns is the one the next reader sees.
"""

from __future__ import annotations

from ecr.registry.v1 import registry_pb2 as pb

from service import convert, etags, plan
from service.audit import WriteRecord
from service.auth.targets import Target
from service.errors import EtagMismatch, NotFound
from service.locks import RegistryLocks
from service.upstream import Upstream


class RegistryOperations:
    """Reads and writes of registry configuration through the upstream."""

    def __init__(self, upstream: Upstream, locks: RegistryLocks) -> None:
        self._upstream = upstream
        self._locks = locks

    async def describe_registry(self, target: Target) -> pb.DescribeRegistryResponse:
        """DescribeRegistry of the target, with the replication configuration's etag."""
        return convert.describe_response(await self._upstream.call(target, "describe_registry"))

    async def get_registry_policy(self, target: Target) -> pb.GetRegistryPolicyResponse:
        """GetRegistryPolicy of the target; NotFound when it has none."""
        aws = await self._upstream.call(target, "get_registry_policy")
        return pb.GetRegistryPolicyResponse(
            registry_id=aws.get("registryId", target.registry_id),
            policy_text=aws["policyText"],
            etag=etags.of_policy(aws["policyText"]),
        )

    async def put_registry_policy(
        self, target: Target, policy_text: str, etag: str, validate_only: bool, record: WriteRecord
    ) -> pb.PutRegistryPolicyResponse:
        """Set the registry policy if `etag` (when given) still holds."""
        async with self._locks.hold(target.registry_id, target.region):
            policy = await self._current_policy(target)
            current = record.etag_before = etags.of_policy(policy)
            _check(etag, current, target)
            if validate_only:
                return pb.PutRegistryPolicyResponse(
                    registry_id=target.registry_id,
                    policy_text=policy_text,
                    etag=current,
                    changes=plan.policy_changes(policy, policy_text),
                )
            aws = await self._upstream.call(target, "put_registry_policy", policyText=policy_text)
            after = record.etag_after = etags.of_policy(await self._current_policy(target))
            return pb.PutRegistryPolicyResponse(
                registry_id=aws.get("registryId", target.registry_id),
                policy_text=aws.get("policyText", policy_text),
                etag=after,
            )

    async def delete_registry_policy(
        self, target: Target, etag: str, validate_only: bool, record: WriteRecord
    ) -> pb.DeleteRegistryPolicyResponse:
        """Delete the registry policy if `etag` (when given) still holds; NotFound if none."""
        async with self._locks.hold(target.registry_id, target.region):
            policy = await self._current_policy(target)
            current = record.etag_before = etags.of_policy(policy)
            _check(etag, current, target)
            if policy is None:
                raise NotFound(
                    "the registry has no registry policy", reason="REGISTRY_POLICY_NOT_FOUND"
                )
            if validate_only:
                return pb.DeleteRegistryPolicyResponse(
                    registry_id=target.registry_id,
                    policy_text=policy,
                    etag=current,
                    changes=plan.policy_changes(policy, None),
                )
            aws = await self._upstream.call(target, "delete_registry_policy")
            after = record.etag_after = etags.of_policy(await self._current_policy(target))
            return pb.DeleteRegistryPolicyResponse(
                registry_id=aws.get("registryId", target.registry_id),
                policy_text=aws.get("policyText", ""),
                etag=after,
            )

    async def put_replication_configuration(
        self,
        target: Target,
        configuration: pb.ReplicationConfiguration,
        etag: str,
        validate_only: bool,
        record: WriteRecord,
    ) -> pb.PutReplicationConfigurationResponse:
        """Replace the replication configuration if `etag` (when given) still holds."""
        async with self._locks.hold(target.registry_id, target.region):
            current = await self.describe_registry(target)
            record.etag_before = current.etag
            _check(etag, current.etag, target)
            if validate_only:
                return pb.PutReplicationConfigurationResponse(
                    replication_configuration=configuration,
                    etag=current.etag,
                    registry_id=current.registry_id or target.registry_id,
                    changes=plan.replication_changes(
                        current.replication_configuration, configuration
                    ),
                )
            await self._upstream.call(
                target,
                "put_replication_configuration",
                replicationConfiguration=convert.replication_to_aws(configuration),
            )
            after = await self.describe_registry(target)
            record.etag_after = after.etag
            return pb.PutReplicationConfigurationResponse(
                replication_configuration=after.replication_configuration,
                etag=after.etag,
                registry_id=after.registry_id or target.registry_id,
            )

    async def _current_policy(self, target: Target) -> str | None:
        try:
            aws = await self._upstream.call(target, "get_registry_policy")
        except NotFound:
            return None
        return str(aws["policyText"])


def _check(expected: str, current: str, target: Target) -> None:
    if expected and expected != current:
        raise EtagMismatch(
            f"etag {expected[:64]!r} does not match the current etag {current!r} of registry "
            f"{target.registry_id} in {target.region}; read again, reapply your change, retry",
            metadata={
                "currentEtag": current,
                "registryId": target.registry_id,
                "region": target.region,
            },
        )
