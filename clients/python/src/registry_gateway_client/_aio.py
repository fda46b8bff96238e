"""`RegistryConfigClient`: the asyncio client, on grpc.aio.

Its blocking twin, `_sync.py`, is generated from this file: edit here, then run
`python scripts/unasync.py` (`--check`, run by `make test`, fails when the twin is stale).
What cannot be rewritten word for word lives in `_aio_only` (see there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from registry_gateway_client._aio_only import MaybeAwaitable, maybe_await, with_call
from registry_gateway_client._core import (
    DEFAULT_TIMEOUT,
    CallInfo,
    Tls,
    bearer_metadata,
    channel_options,
    check_credentials,
    prepare,
    retry_safe,
)
from registry_gateway_client._errors import EtagMismatch, NotFound, from_rpc_error
from registry_gateway_client._retry import Attempts, RetryPolicy
from registry_gateway_client.v1 import registry_pb2 as pb
from registry_gateway_client.v1 import registry_pb2_grpc as pb_grpc

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

#: Gets a bearer token (a JWT) for each attempt; may be a coroutine function.
AsyncTokenProvider = Callable[[], MaybeAwaitable[str]]
#: Changes a replication configuration in place (returning None) or returns a new one.
AsyncConfigChange = Callable[
    [pb.ReplicationConfiguration], MaybeAwaitable[pb.ReplicationConfiguration | None]
]


class RegistryConfigClient:
    """Async client of the Registry Config Gateway.

    ```python
    async with RegistryConfigClient("gateway:50051", api_key=KEY) as client:
        registry = await client.describe_registry()
    ```

    Credentials: `api_key`, or `token_provider` (called before every attempt, so a JWT can
    be refreshed), and/or `tls` (mTLS when it holds a client certificate). `registry_id`
    and `region` are defaults for calls that name neither. Each call has one deadline,
    `timeout` seconds (default 10), that covers its retries; `retry` says which failures
    are retried (see `RetryPolicy`). Failures raise the typed errors of
    `registry_gateway_client` (`NotFound`, `EtagMismatch`, ...). Pass `channel=` to use a
    channel you made (the client then does not close it).
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        token_provider: AsyncTokenProvider | None = None,
        tls: Tls | None = None,
        registry_id: str | None = None,
        region: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        channel: grpc.aio.Channel | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        check_credentials(api_key, token_provider)
        if (target is None) == (channel is None):
            raise ValueError("give a target or a channel")
        self._owns_channel = channel is None
        if channel is None:
            assert target is not None
            opts = channel_options(tls, options)
            channel = (
                grpc.aio.secure_channel(target, tls.credentials(), opts)
                if tls is not None
                else grpc.aio.insecure_channel(target, opts)
            )
        self._channel = channel
        self._stub = pb_grpc.RegistryConfigServiceStub(channel)
        self._api_key = api_key
        self._token_provider = token_provider
        self._registry_id = registry_id
        self._region = region
        self._timeout = timeout
        self._retry = retry or RetryPolicy()

    async def __aenter__(self) -> RegistryConfigClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel, if the client opened it."""
        if self._owns_channel:
            await self._channel.close()

    async def describe_registry(
        self,
        request: pb.DescribeRegistryRequest | None = None,
        *,
        registry_id: str | None = None,
        region: str | None = None,
        no_cache: bool = False,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        info: CallInfo | None = None,
    ) -> pb.DescribeRegistryResponse:
        """The registry's id, replication configuration and its etag (a cached read;
        `no_cache=True` reads fresh from AWS)."""
        message = self._prepare(
            pb.DescribeRegistryRequest, request, registry_id=registry_id, region=region
        )
        return await self._call(
            "DescribeRegistry", self._stub.DescribeRegistry, message, no_cache, timeout, retry, info
        )

    async def get_registry_policy(
        self,
        request: pb.GetRegistryPolicyRequest | None = None,
        *,
        registry_id: str | None = None,
        region: str | None = None,
        no_cache: bool = False,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        info: CallInfo | None = None,
    ) -> pb.GetRegistryPolicyResponse:
        """The registry policy and its etag; raises `NotFound` when there is none."""
        message = self._prepare(
            pb.GetRegistryPolicyRequest, request, registry_id=registry_id, region=region
        )
        return await self._call(
            "GetRegistryPolicy",
            self._stub.GetRegistryPolicy,
            message,
            no_cache,
            timeout,
            retry,
            info,
        )

    async def put_registry_policy(
        self,
        request: pb.PutRegistryPolicyRequest | None = None,
        *,
        policy_text: str | Mapping[str, Any] | None = None,
        registry_id: str | None = None,
        region: str | None = None,
        etag: str | None = None,
        validate_only: bool | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        info: CallInfo | None = None,
    ) -> pb.PutRegistryPolicyResponse:
        """Set the registry policy (`policy_text`: JSON text or a dict). With `etag`, only
        if it is still that one (`"absent"`: only if there is none), else `EtagMismatch`."""
        message = self._prepare(
            pb.PutRegistryPolicyRequest,
            request,
            policy_text=policy_text,
            registry_id=registry_id,
            region=region,
            etag=etag,
            validate_only=validate_only,
        )
        return await self._call(
            "PutRegistryPolicy", self._stub.PutRegistryPolicy, message, False, timeout, retry, info
        )

    async def delete_registry_policy(
        self,
        request: pb.DeleteRegistryPolicyRequest | None = None,
        *,
        registry_id: str | None = None,
        region: str | None = None,
        etag: str | None = None,
        validate_only: bool | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        info: CallInfo | None = None,
    ) -> pb.DeleteRegistryPolicyResponse:
        """Delete the registry policy (with `etag`: only if it is still that one)."""
        message = self._prepare(
            pb.DeleteRegistryPolicyRequest,
            request,
            registry_id=registry_id,
            region=region,
            etag=etag,
            validate_only=validate_only,
        )
        return await self._call(
            "DeleteRegistryPolicy",
            self._stub.DeleteRegistryPolicy,
            message,
            False,
            timeout,
            retry,
            info,
        )

    async def put_replication_configuration(
        self,
        request: pb.PutReplicationConfigurationRequest | None = None,
        *,
        replication_configuration: pb.ReplicationConfiguration | Mapping[str, Any] | None = None,
        registry_id: str | None = None,
        region: str | None = None,
        etag: str | None = None,
        validate_only: bool | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        info: CallInfo | None = None,
    ) -> pb.PutReplicationConfigurationResponse:
        """Replace the whole replication configuration (a message, or AWS-shaped JSON such
        as `{"rules": [...]}`). Prefer `update_replication_configuration` to change part."""
        message = self._prepare(
            pb.PutReplicationConfigurationRequest,
            request,
            replication_configuration=replication_configuration,
            registry_id=registry_id,
            region=region,
            etag=etag,
            validate_only=validate_only,
        )
        return await self._call(
            "PutReplicationConfiguration",
            self._stub.PutReplicationConfiguration,
            message,
            False,
            timeout,
            retry,
            info,
        )

    async def get_replication_rules(
        self,
        request: pb.GetReplicationRulesRequest | None = None,
        *,
        registry_id: str | None = None,
        region: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        info: CallInfo | None = None,
    ) -> pb.GetReplicationRulesResponse:
        """Your replication rules in a shared registry (your slice), its etag, and the
        registry's use of the shared limits (10 rules, 25 unique destinations)."""
        message = self._prepare(
            pb.GetReplicationRulesRequest, request, registry_id=registry_id, region=region
        )
        return await self._call(
            "GetReplicationRules",
            self._stub.GetReplicationRules,
            message,
            False,
            timeout,
            retry,
            info,
        )

    async def put_replication_rules(
        self,
        request: pb.PutReplicationRulesRequest | None = None,
        *,
        rules: Sequence[pb.ReplicationRule | Mapping[str, Any]] | None = None,
        registry_id: str | None = None,
        region: str | None = None,
        etag: str | None = None,
        validate_only: bool | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        info: CallInfo | None = None,
    ) -> pb.PutReplicationRulesResponse:
        """Replace your slice of the replication rules (messages or AWS-shaped JSON rules;
        `[]` removes them); the gateway keeps everyone else's rules and writes the merge."""
        message = self._prepare(
            pb.PutReplicationRulesRequest,
            request,
            rules=rules,
            registry_id=registry_id,
            region=region,
            etag=etag,
            validate_only=validate_only,
        )
        return await self._call(
            "PutReplicationRules",
            self._stub.PutReplicationRules,
            message,
            False,
            timeout,
            retry,
            info,
        )

    async def get_policy_statements(
        self,
        request: pb.GetPolicyStatementsRequest | None = None,
        *,
        registry_id: str | None = None,
        region: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        info: CallInfo | None = None,
    ) -> pb.GetPolicyStatementsResponse:
        """Your statements of the registry policy (`statements_json`) and their etag."""
        message = self._prepare(
            pb.GetPolicyStatementsRequest, request, registry_id=registry_id, region=region
        )
        return await self._call(
            "GetPolicyStatements",
            self._stub.GetPolicyStatements,
            message,
            False,
            timeout,
            retry,
            info,
        )

    async def put_policy_statements(
        self,
        request: pb.PutPolicyStatementsRequest | None = None,
        *,
        statements: Sequence[Mapping[str, Any]] | str | None = None,
        registry_id: str | None = None,
        region: str | None = None,
        etag: str | None = None,
        validate_only: bool | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        info: CallInfo | None = None,
    ) -> pb.PutPolicyStatementsResponse:
        """Replace your statements of the registry policy (dicts or a JSON array; `[]`
        removes them); the gateway keeps everyone else's and writes the merged policy."""
        message = self._prepare(
            pb.PutPolicyStatementsRequest,
            request,
            statements_json=statements,
            registry_id=registry_id,
            region=region,
            etag=etag,
            validate_only=validate_only,
        )
        return await self._call(
            "PutPolicyStatements",
            self._stub.PutPolicyStatements,
            message,
            False,
            timeout,
            retry,
            info,
        )

    async def get_configuration_history(
        self,
        request: pb.GetConfigurationHistoryRequest | None = None,
        *,
        resource: pb.HistoryResource.ValueType | None = None,
        registry_id: str | None = None,
        region: str | None = None,
        page_size: int | None = None,
        page_token: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        info: CallInfo | None = None,
    ) -> pb.GetConfigurationHistoryResponse:
        """One page of a resource's recorded versions, newest first (`next_page_token`
        continues); a slice tenant gets its own slice of each version (`slice_view`)."""
        message = self._prepare(
            pb.GetConfigurationHistoryRequest,
            request,
            registry_id=registry_id,
            region=region,
            resource=resource,
            page_size=page_size,
            page_token=page_token,
        )
        return await self._call(
            "GetConfigurationHistory",
            self._stub.GetConfigurationHistory,
            message,
            False,
            timeout,
            retry,
            info,
        )

    async def restore(
        self,
        version_etag: str,
        *,
        resource: pb.HistoryResource.ValueType,
        etag: str | None = None,
        registry_id: str | None = None,
        region: str | None = None,
        timeout: float | None = None,
        info: CallInfo | None = None,
    ) -> Message:
        """Write back the version of `resource` whose etag is `version_etag` (from
        `get_configuration_history`), as an ordinary write with an etag precondition.

        `etag`: the current etag the caller decided on (from a read or the history's newest
        version); when someone changed the resource since, the write raises `EtagMismatch`
        and nothing is written. Without it, the current etag is read fresh first, so only a
        change in that moment is protected. A slice tenant restores its own slice (its rules
        or statements) with the slice RPCs. Raises `LookupError` when no recorded version
        has `version_etag`, and `ValueError` (before any write) when that version was kept
        without its document (`document_omitted`: too large for the gateway's history), so
        it cannot be written back. Answers the write's response.
        """
        if not version_etag:
            raise ValueError("version_etag is empty: pass the etag of a recorded version")
        version, slice_view = await self._find_version(
            version_etag, resource, registry_id, region, timeout
        )
        if version.document_omitted:
            # Its empty document would be written as "no rules" / "no policy".
            raise ValueError(
                f"version {version_etag[:64]!r} was kept without its document (larger than "
                "the gateway's history.max_bytes): it cannot be restored; nothing was written"
            )
        where: dict[str, Any] = {"registry_id": registry_id, "region": region, "timeout": timeout}
        replication = resource == pb.HISTORY_RESOURCE_REPLICATION
        if slice_view and replication:
            if etag is None:
                etag = (await self.get_replication_rules(**where)).etag
            return await self.put_replication_rules(
                rules=version.replication_configuration.rules, etag=etag, info=info, **where
            )
        if slice_view:
            if etag is None:
                etag = (await self.get_policy_statements(**where)).etag
            return await self.put_policy_statements(
                statements=version.statements_json or "[]", etag=etag, info=info, **where
            )
        if replication:
            if etag is None:
                etag = (await self.describe_registry(no_cache=True, **where)).etag
            return await self.put_replication_configuration(
                replication_configuration=version.replication_configuration,
                etag=etag,
                info=info,
                **where,
            )
        if etag is None:
            etag = await self._policy_etag(where)
        if not version.policy_text:
            return await self.delete_registry_policy(etag=etag, info=info, **where)
        return await self.put_registry_policy(
            policy_text=version.policy_text, etag=etag, info=info, **where
        )

    async def _find_version(
        self,
        version_etag: str,
        resource: pb.HistoryResource.ValueType,
        registry_id: str | None,
        region: str | None,
        timeout: float | None,
    ) -> tuple[pb.ConfigurationVersion, bool]:
        token = ""
        # The gateway keeps a bounded history (`history.max_versions`); the page bound here
        # only guards against a server that never stops answering tokens.
        for _ in range(100):
            page = await self.get_configuration_history(
                resource=resource,
                registry_id=registry_id,
                region=region,
                page_size=50,
                page_token=token,
                timeout=timeout,
            )
            for version in page.versions:
                if version.etag == version_etag:
                    return version, page.slice_view
            token = page.next_page_token
            if not token:
                break
        raise LookupError(f"no recorded version has etag {version_etag[:64]!r}")

    async def _policy_etag(self, where: dict[str, Any]) -> str:
        try:
            return (await self.get_registry_policy(no_cache=True, **where)).etag
        except NotFound:
            return "absent"  # the etag of no policy

    async def update_replication_configuration(
        self,
        change: AsyncConfigChange,
        *,
        registry_id: str | None = None,
        region: str | None = None,
        max_attempts: int = 5,
        timeout: float | None = None,
        info: CallInfo | None = None,
    ) -> pb.PutReplicationConfigurationResponse:
        """Read, `change`, write back only if nobody wrote in between; repeat on a conflict.

        `change` gets a copy of the current configuration and edits it in place (or returns
        a new one); it may be called several times, so it must not assume what it finds. The
        write carries the etag of the read, so a colleague's concurrent change is never
        overwritten: on `EtagMismatch` the configuration is read again, fresh from AWS, and
        `change` applied to that. After `max_attempts` conflicts the last `EtagMismatch`
        is raised. When `change` leaves the configuration as it was, nothing is written and
        the answer holds the current configuration and etag.
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        for attempt in range(1, max_attempts + 1):
            # After a conflict the cache may still hold what we lost to: read past it.
            current = await self.describe_registry(
                registry_id=registry_id, region=region, no_cache=attempt > 1, timeout=timeout
            )
            config = pb.ReplicationConfiguration()
            config.CopyFrom(current.replication_configuration)
            changed = await maybe_await(change(config))
            desired = config if changed is None else changed
            if desired == current.replication_configuration:
                return pb.PutReplicationConfigurationResponse(
                    replication_configuration=current.replication_configuration,
                    etag=current.etag,
                    registry_id=current.registry_id,
                )
            try:
                return await self.put_replication_configuration(
                    replication_configuration=desired,
                    registry_id=current.registry_id,
                    region=region,
                    etag=current.etag,
                    timeout=timeout,
                    info=info,
                )
            except EtagMismatch:
                if attempt == max_attempts:
                    raise
                await asyncio.sleep(self._retry.backoff(attempt, None))
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _prepare(self, kind: type[Req], request: Req | None, **fields: Any) -> Req:
        return prepare(kind, request, fields, registry_id=self._registry_id, region=self._region)

    async def _token(self) -> str | None:
        if self._token_provider is None:
            return self._api_key
        return await maybe_await(self._token_provider())

    async def _call(
        self,
        rpc: str,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        no_cache: bool,
        timeout: float | None,
        retry: RetryPolicy | None,
        info: CallInfo | None,
    ) -> Resp:
        policy = retry or self._retry
        attempts = Attempts(
            policy,
            self._timeout if timeout is None else timeout,
            retry_safe=retry_safe(rpc, request, policy),
        )
        while True:
            attempt_timeout = attempts.start()
            metadata = bearer_metadata(await self._token(), no_cache)
            try:
                response, call = await with_call(
                    method, request, timeout=attempt_timeout, metadata=metadata
                )
            except grpc.aio.AioRpcError as exc:
                trailing = exc.trailing_metadata()
                error = from_rpc_error(exc.code(), exc.details(), trailing)
                delay = attempts.delay_after(error)
                if delay is None:
                    if info is not None:
                        info.record(trailing, attempts.count)
                    raise error from exc
                await asyncio.sleep(delay)
                continue
            if info is not None:
                info.record(await call.trailing_metadata(), attempts.count)
            return response
