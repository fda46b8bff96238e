"""The five ECR operations as the gateway performs them: reads through the cache, writes
under the registry's lock.

A write takes the lock, reads the current value fresh from AWS (for the caller's etag
precondition, the plan and the audit trail), re-checks it still owns the lock, calls AWS
(unless validate_only), then reads back inside the lock and writes that through to the
cache, so the etag it returns is the one every replica's next read sees. A write that
fails or is abandoned after calling AWS invalidates the cache: its outcome is unknown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

from ecr.registry.v1 import registry_pb2 as pb

from service import convert, etags, plan
from service.audit import WriteRecord
from service.auth.targets import Target
from service.cache import CacheKey, Outcome, ReadCache
from service.errors import EtagMismatch, NotFound
from service.locks import HeldLock
from service.upstream import Upstream


class Locks(Protocol):
    """Per-registry write locks (in-process or in Redis)."""

    def hold(self, registry_id: str, region: str) -> AbstractAsyncContextManager[HeldLock]:
        """An async context manager holding the registry's lock."""
        ...


def _registry_key(target: Target) -> CacheKey:
    return CacheKey(target.registry_id, target.region, "registry")


def _policy_key(target: Target) -> CacheKey:
    return CacheKey(target.registry_id, target.region, "policy")


class RegistryOperations:
    """Reads and writes of registry configuration through the cache and the upstream."""

    def __init__(self, upstream: Upstream, locks: Locks, cache: ReadCache) -> None:
        self._upstream = upstream
        self._locks = locks
        self._cache = cache

    async def describe_registry(
        self,
        target: Target,
        *,
        fresh: bool = False,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> pb.DescribeRegistryResponse:
        """DescribeRegistry of the target through the cache, with the configuration's etag."""
        response = await self._cache.get_or_load(
            _registry_key(target),
            lambda: self._describe_from_aws(target),
            fresh=fresh,
            on_outcome=on_outcome,
        )
        assert isinstance(response, pb.DescribeRegistryResponse)
        return response

    async def get_registry_policy(
        self,
        target: Target,
        *,
        fresh: bool = False,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> pb.GetRegistryPolicyResponse:
        """GetRegistryPolicy of the target through the cache; NotFound (cached too) if none."""
        response = await self._cache.get_or_load(
            _policy_key(target),
            lambda: self._policy_from_aws(target),
            fresh=fresh,
            on_outcome=on_outcome,
        )
        assert isinstance(response, pb.GetRegistryPolicyResponse)
        return response

    async def put_registry_policy(
        self, target: Target, policy_text: str, etag: str, validate_only: bool, record: WriteRecord
    ) -> pb.PutRegistryPolicyResponse:
        """Set the registry policy if `etag` (when given) still holds."""
        async with self._locks.hold(target.registry_id, target.region) as held:
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
            async with self._writing(_policy_key(target), held):
                aws = await _sent(
                    self._upstream.call(
                        target, "put_registry_policy", finish_once_sent=True, policyText=policy_text
                    )
                )
                after = await self._read_back_policy(target)
            record.etag_after = etags.of_policy(after.policy_text if after else None)
            return pb.PutRegistryPolicyResponse(
                registry_id=aws.get("registryId", target.registry_id),
                policy_text=aws.get("policyText", policy_text),
                etag=record.etag_after,
            )

    async def delete_registry_policy(
        self, target: Target, etag: str, validate_only: bool, record: WriteRecord
    ) -> pb.DeleteRegistryPolicyResponse:
        """Delete the registry policy if `etag` (when given) still holds; NotFound if none."""
        async with self._locks.hold(target.registry_id, target.region) as held:
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
            async with self._writing(_policy_key(target), held):
                aws = await _sent(
                    self._upstream.call(target, "delete_registry_policy", finish_once_sent=True)
                )
                after = await self._read_back_policy(target)
            record.etag_after = etags.of_policy(after.policy_text if after else None)
            return pb.DeleteRegistryPolicyResponse(
                registry_id=aws.get("registryId", target.registry_id),
                policy_text=aws.get("policyText", ""),
                etag=record.etag_after,
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
        async with self._locks.hold(target.registry_id, target.region) as held:
            current = await self._describe_from_aws(target)
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
            async with self._writing(_registry_key(target), held):
                await _sent(
                    self._upstream.call(
                        target,
                        "put_replication_configuration",
                        finish_once_sent=True,
                        replicationConfiguration=convert.replication_to_aws(configuration),
                    )
                )
                after = await self._describe_from_aws(target)
                await self._cache.put(_registry_key(target), after)
            record.etag_after = after.etag
            return pb.PutReplicationConfigurationResponse(
                replication_configuration=after.replication_configuration,
                etag=after.etag,
                registry_id=after.registry_id or target.registry_id,
            )

    @asynccontextmanager
    async def _writing(self, key: CacheKey, held: HeldLock) -> AsyncIterator[None]:
        """Around the AWS write: lock ownership checked first; on failure, the key forgotten."""
        await held.ensure_owned()
        try:
            yield
        except BaseException:
            # AWS may or may not have applied it: no replica may serve the old value as
            # current. BaseException: a cancelled (abandoned) write counts too.
            await self._cache.invalidate(key)
            raise

    async def _describe_from_aws(self, target: Target) -> pb.DescribeRegistryResponse:
        return convert.describe_response(await self._upstream.call(target, "describe_registry"))

    async def _policy_from_aws(self, target: Target) -> pb.GetRegistryPolicyResponse:
        aws = await self._upstream.call(target, "get_registry_policy")
        return pb.GetRegistryPolicyResponse(
            registry_id=aws.get("registryId", target.registry_id),
            policy_text=aws["policyText"],
            etag=etags.of_policy(aws["policyText"]),
        )

    async def _current_policy(self, target: Target) -> str | None:
        try:
            return (await self._policy_from_aws(target)).policy_text
        except NotFound:
            return None

    async def _read_back_policy(self, target: Target) -> pb.GetRegistryPolicyResponse | None:
        """The policy as AWS now holds it (it rewrites what it stores), written through."""
        try:
            after: pb.GetRegistryPolicyResponse | None = await self._policy_from_aws(target)
        except NotFound:
            after = None
        await self._cache.put(_policy_key(target), after)
        return after


async def _sent(write: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """A write sent to AWS is not abandoned half-way: if the caller leaves (its deadline
    passed), the write still finishes, under the registry lock, before the cancellation goes
    on; `_writing` then forgets the key, and the audit line says CANCELLED (outcome unknown
    to the caller)."""
    task = asyncio.ensure_future(write)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


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
