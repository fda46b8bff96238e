"""The five ECR operations as the gateway performs them: reads through the cache, writes
under the registry's lock. The slice operations (service/registry/slices.py) write through the same
read-modify-write methods, `update_replication` and `update_policy`.

A write takes the lock, reads the current value fresh from AWS (for the caller's etag
precondition, the plan and the audit trail), re-checks it still owns the lock, calls AWS
(unless validate_only), then reads back inside the lock and writes that through to the
cache, so the etag it returns is the one every replica's next read sees. A write that
fails or is abandoned after calling AWS invalidates the cache: its outcome is unknown.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from ecr.registry.v1 import registry_pb2 as pb

from service.auth.targets import Target
from service.aws.upstream import Upstream
from service.errors import EtagMismatch, NotFound, QuotaViolation, ResourceExhausted
from service.observability.audit import WriteRecord
from service.registry import convert, etags, plan
from service.state.cache import CacheKey, Outcome, ReadCache
from service.state.cache.base import Resource
from service.state.locks import HeldLock


@dataclass(frozen=True)
class ReplicationUpdate:
    """A read-modify-write of the replication configuration: before, asked, after."""

    before: pb.DescribeRegistryResponse  # read fresh from AWS inside the lock
    proposed: pb.ReplicationConfiguration
    after: pb.DescribeRegistryResponse | None  # read back after the write; None: validate_only


@dataclass(frozen=True)
class PolicyUpdate:
    """A read-modify-write of the registry policy: before, asked, after (None: no policy)."""

    before: str | None  # read fresh from AWS inside the lock
    proposed: str | None
    after: str | None  # read back after the write (validate_only: the current one)
    done: bool  # False with validate_only


class Locks(Protocol):
    """Per-registry write locks (in-process or in Redis)."""

    def hold(self, registry_id: str, region: str) -> AbstractAsyncContextManager[HeldLock]:
        """An async context manager holding the registry's lock."""
        ...


@functools.lru_cache(maxsize=4096)
def _key(registry_id: str, region: str, resource: Resource) -> CacheKey:
    # One key object per resource, not one per call (a frozen dataclass is slow to build).
    return CacheKey(registry_id, region, resource)


def _registry_key(target: Target) -> CacheKey:
    return _key(target.registry_id, target.region, "registry")


def _policy_key(target: Target) -> CacheKey:
    return _key(target.registry_id, target.region, "policy")


class RegistryOperations:
    """Reads and writes of registry configuration through the cache and the upstream."""

    def __init__(
        self,
        upstream: Upstream,
        locks: Locks,
        cache: ReadCache,
        *,
        max_writes_per_tenant: int = 4,
    ) -> None:
        self._upstream = upstream
        self._locks = locks
        self._cache = cache
        self._max_writes_per_tenant = max_writes_per_tenant
        self._in_flight: dict[tuple[str, str, str], int] = {}

    @asynccontextmanager
    async def _hold(self, target: Target) -> AsyncIterator[HeldLock]:
        """The registry's write lock, for at most `max_writes_per_tenant` writes of one tenant
        at once (waiting or holding): the lock is a queue every tenant of the registry waits
        in, and one tenant's flood of writes must not push another's past its deadline."""
        key = (target.tenant, target.registry_id, target.region)
        if self._in_flight.get(key, 0) >= self._max_writes_per_tenant:
            raise ResourceExhausted(
                f"tenant {target.tenant} already has {self._max_writes_per_tenant} writes in "
                f"flight on registry {target.registry_id} in {target.region}; they run one "
                "at a time: retry when one has finished",
                reason="WRITES_IN_FLIGHT",
                metadata={
                    "tenant": target.tenant,
                    "registryId": target.registry_id,
                    "region": target.region,
                },
                retry_after_seconds=0.5,
                quota_violations=(
                    QuotaViolation(
                        subject=f"tenant:{target.tenant}",
                        description=f"writes in flight per registry: {self._max_writes_per_tenant}",
                    ),
                ),
            )
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            async with self._locks.hold(target.registry_id, target.region) as held:
                yield held
        finally:
            left = self._in_flight[key] - 1
            if left:
                self._in_flight[key] = left
            else:
                del self._in_flight[key]

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
            lambda: self._describe_from_aws(target, shared=True),
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
            lambda: self._policy_from_aws(target, shared=True),
            fresh=fresh,
            on_outcome=on_outcome,
        )
        assert isinstance(response, pb.GetRegistryPolicyResponse)
        return response

    async def put_registry_policy(
        self, target: Target, policy_text: str, etag: str, validate_only: bool, record: WriteRecord
    ) -> pb.PutRegistryPolicyResponse:
        """Set the registry policy if `etag` (when given) still holds."""
        async with self._hold(target) as held:
            policy = await self._current_policy(target)
            current = record.etag_before = etags.of_policy(policy)
            check_etag(etag, current, target)
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
        async with self._hold(target) as held:
            policy = await self._current_policy(target)
            current = record.etag_before = etags.of_policy(policy)
            check_etag(etag, current, target)
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

        def replace(current: pb.DescribeRegistryResponse) -> pb.ReplicationConfiguration:
            check_etag(etag, current.etag, target)
            return configuration

        update = await self.update_replication(target, replace, validate_only, record)
        if update.after is None:
            return pb.PutReplicationConfigurationResponse(
                replication_configuration=configuration,
                etag=update.before.etag,
                registry_id=update.before.registry_id or target.registry_id,
                changes=plan.replication_changes(
                    update.before.replication_configuration, configuration
                ),
            )
        return pb.PutReplicationConfigurationResponse(
            replication_configuration=update.after.replication_configuration,
            etag=update.after.etag,
            registry_id=update.after.registry_id or target.registry_id,
        )

    async def update_replication(
        self,
        target: Target,
        change: Callable[[pb.DescribeRegistryResponse], pb.ReplicationConfiguration],
        validate_only: bool,
        record: WriteRecord,
    ) -> ReplicationUpdate:
        """Read-modify-write of the replication configuration under the registry's lock.

        `change` sees the configuration read fresh from AWS inside the lock and answers the
        one to write, or raises (etag, quota, validation) to write nothing. With
        validate_only nothing is written and `after` is None.
        """
        async with self._hold(target) as held:
            current = await self._describe_from_aws(target)
            record.etag_before = current.etag
            proposed = change(current)
            if validate_only:
                return ReplicationUpdate(current, proposed, None)
            async with self._writing(_registry_key(target), held):
                await _sent(
                    self._upstream.call(
                        target,
                        "put_replication_configuration",
                        finish_once_sent=True,
                        replicationConfiguration=convert.replication_to_aws(proposed),
                    )
                )
                after = await self._describe_from_aws(target)
                await self._cache.put(_registry_key(target), after)
            record.etag_after = after.etag
            return ReplicationUpdate(current, proposed, after)

    async def update_policy(
        self,
        target: Target,
        change: Callable[[str | None], str | None],
        validate_only: bool,
        record: WriteRecord,
    ) -> PolicyUpdate:
        """Read-modify-write of the registry policy under the registry's lock.

        `change` sees the policy read fresh from AWS inside the lock (None: there is none)
        and answers the one to write, None to have none (DeleteRegistryPolicy, or nothing
        when there is none already), or raises to write nothing.
        """
        async with self._hold(target) as held:
            current = await self._current_policy(target)
            record.etag_before = etags.of_policy(current)
            proposed = change(current)
            if validate_only:
                return PolicyUpdate(current, proposed, current, done=False)
            if proposed is None and current is None:
                # Nothing to delete: AWS would answer RegistryPolicyNotFoundException.
                record.etag_after = etags.ABSENT
                return PolicyUpdate(current, proposed, None, done=True)
            async with self._writing(_policy_key(target), held):
                if proposed is None:
                    write = self._upstream.call(
                        target, "delete_registry_policy", finish_once_sent=True
                    )
                else:
                    write = self._upstream.call(
                        target, "put_registry_policy", finish_once_sent=True, policyText=proposed
                    )
                await _sent(write)
                after = await self._read_back_policy(target)
            after_text = after.policy_text if after else None
            record.etag_after = etags.of_policy(after_text)
            return PolicyUpdate(current, proposed, after_text, done=True)

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

    # `shared`: a cache load, which every caller of the key waits for (single flight). It is
    # nobody's: it takes no tenant's share of the AWS call slots (a tenant could otherwise
    # stall another on its own full share), only the account's.
    async def _describe_from_aws(
        self, target: Target, *, shared: bool = False
    ) -> pb.DescribeRegistryResponse:
        aws = await self._upstream.call(target, "describe_registry", shared=shared)
        return convert.describe_response(aws)

    async def _policy_from_aws(
        self, target: Target, *, shared: bool = False
    ) -> pb.GetRegistryPolicyResponse:
        aws = await self._upstream.call(target, "get_registry_policy", shared=shared)
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


def check_etag(expected: str, current: str, target: Target, what: str = "") -> None:
    """EtagMismatch (ABORTED) when the caller's precondition `expected` (if any) fails.

    `what` names a slice ("the rules of tenant payments") when the etag is of one.
    """
    if expected and expected != current:
        raise EtagMismatch(
            f"etag {expected[:64]!r} does not match the current etag {current!r} of "
            f"{what + ' in ' if what else ''}registry "
            f"{target.registry_id} in {target.region}; read again, reapply your change, retry",
            metadata={
                "currentEtag": current,
                "registryId": target.registry_id,
                "region": target.region,
            },
        )
