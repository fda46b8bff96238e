"""`RegistryConfigClient`: the asyncio client, over gRPC (grpc.aio) or Connect (HTTP).

Its blocking twin, `_sync.py`, is generated from this file: edit here, then run
`python scripts/unasync.py` (`--check`, run by `make test`, fails when the twin is stale).
What cannot be rewritten word for word lives in `_aio_only` (see there).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import grpc
from google.protobuf.message import Message

from registry_gateway_client._aio_grpc import GrpcTransport
from registry_gateway_client._aio_only import Awaitable, MaybeAwaitable, maybe_await
from registry_gateway_client._core import (
    DEFAULT_TIMEOUT,
    CallInfo,
    CallMetadata,
    PolicyRestored,
    ReplicationRestored,
    Resource,
    Restored,
    RulesInput,
    StatementsInput,
    Tls,
    bearer_metadata,
    caller_metadata,
    channel_options,
    check_credentials,
    is_connect_target,
    prepare,
    replication_rules,
    resource_value,
    retry_safe,
    statements_list,
)
from registry_gateway_client._errors import (
    EtagMismatch,
    Internal,
    InvalidArgument,
    NotFound,
    RegistryGatewayError,
    VersionNotFound,
    VersionNotRestorable,
    client_error,
)
from registry_gateway_client._retry import Attempts, Deadline, RetryPolicy
from registry_gateway_client._transport import (
    AsyncInterceptor,
    AsyncProceed,
    AsyncTransport,
    Attempt,
    Reply,
)
from registry_gateway_client.v1 import registry_pb2 as pb

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Written = TypeVar("Written")

#: Gets a bearer token (a JWT) for each attempt; may be a coroutine function.
AsyncTokenProvider = Callable[[], MaybeAwaitable[str]]
#: Changes a replication configuration in place (returning None) or returns a new one.
AsyncConfigChange = Callable[
    [pb.ReplicationConfiguration], MaybeAwaitable[pb.ReplicationConfiguration | None]
]
#: Changes the caller's rules (a list of copies) in place (returning None) or returns the
#: new list (messages or AWS-shaped JSON rules); may be a coroutine function.
AsyncRulesChange = Callable[[list[pb.ReplicationRule]], MaybeAwaitable[RulesInput | None]]
#: Changes the caller's statements (parsed JSON objects) in place (returning None) or
#: returns the new list; may be a coroutine function.
AsyncStatementsChange = Callable[[list[Any]], MaybeAwaitable[StatementsInput | None]]


class RegistryConfigClient:
    """Async client of the Registry Config Gateway.

    ```python
    async with RegistryConfigClient("gateway:50051", api_key=KEY) as client:
        registry = await client.describe_registry()
    ```

    The target is a gRPC address (`host:port`), or the URL of the gateway's HTTP listener
    (`http://host:8080`, `https://...`), which the client then speaks Connect to (needs the
    `connect` extra): the same methods, typed errors and retries either way.

    Credentials: `api_key`, or `token_provider` (called before every attempt, so a JWT can
    be refreshed), and/or `tls` (mTLS when it holds a client certificate; gRPC only).
    `registry_id` and `region` are defaults for calls that name neither. Each call has one
    deadline, `timeout` seconds (default 10), that covers its retries; `retry` says which
    failures are retried (see `RetryPolicy`); `metadata=` adds metadata to one call;
    `interceptors` see every attempt of every call (see `AsyncInterceptor`). Failures raise
    the typed errors of `registry_gateway_client` (`NotFound`, `EtagMismatch`, ...). Pass
    `channel=` to use a grpc channel you made (the client then does not close it);
    `options=` are grpc channel options.
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
        interceptors: Sequence[AsyncInterceptor] = (),
    ) -> None:
        check_credentials(api_key, token_provider)
        if (target is None) == (channel is None):
            raise ValueError("give a target or a channel")
        self._transport: AsyncTransport
        if target is not None and is_connect_target(target):
            if options:
                raise ValueError("options= are grpc channel options: not for an http(s) target")
            self._transport = _connect_transport(target, tls)
        else:
            owns_channel = channel is None
            if channel is None:
                assert target is not None
                opts = channel_options(tls, options)
                channel = (
                    grpc.aio.secure_channel(target, tls.credentials(), opts)
                    if tls is not None
                    else grpc.aio.insecure_channel(target, opts)
                )
            self._transport = GrpcTransport(channel, owns_channel=owns_channel)
        self._proceed: AsyncProceed = self._transport.unary
        for interceptor in reversed(interceptors):
            self._proceed = _link(interceptor, self._proceed)
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
        """Close the channel (if the client opened it) or the HTTP client."""
        await self._transport.close()

    # --- the RPCs --------------------------------------------------------------------------

    async def describe_registry(
        self,
        request: pb.DescribeRegistryRequest | None = None,
        *,
        registry_id: str | None = None,
        region: str | None = None,
        no_cache: bool = False,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        metadata: CallMetadata | None = None,
        info: CallInfo | None = None,
    ) -> pb.DescribeRegistryResponse:
        """The registry's id, replication configuration and its etag (a cached read;
        `no_cache=True` reads fresh from AWS)."""
        message = self._prepare(
            pb.DescribeRegistryRequest, request, registry_id=registry_id, region=region
        )
        return await self._call(
            "DescribeRegistry",
            message,
            pb.DescribeRegistryResponse,
            no_cache,
            timeout,
            retry,
            info,
            metadata,
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
        metadata: CallMetadata | None = None,
        info: CallInfo | None = None,
    ) -> pb.GetRegistryPolicyResponse:
        """The registry policy and its etag; raises `NotFound` when there is none."""
        message = self._prepare(
            pb.GetRegistryPolicyRequest, request, registry_id=registry_id, region=region
        )
        return await self._call(
            "GetRegistryPolicy",
            message,
            pb.GetRegistryPolicyResponse,
            no_cache,
            timeout,
            retry,
            info,
            metadata,
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
        metadata: CallMetadata | None = None,
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
            "PutRegistryPolicy",
            message,
            pb.PutRegistryPolicyResponse,
            False,
            timeout,
            retry,
            info,
            metadata,
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
        metadata: CallMetadata | None = None,
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
            message,
            pb.DeleteRegistryPolicyResponse,
            False,
            timeout,
            retry,
            info,
            metadata,
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
        metadata: CallMetadata | None = None,
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
            message,
            pb.PutReplicationConfigurationResponse,
            False,
            timeout,
            retry,
            info,
            metadata,
        )

    async def get_replication_rules(
        self,
        request: pb.GetReplicationRulesRequest | None = None,
        *,
        registry_id: str | None = None,
        region: str | None = None,
        no_cache: bool = False,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        metadata: CallMetadata | None = None,
        info: CallInfo | None = None,
    ) -> pb.GetReplicationRulesResponse:
        """Your replication rules in a shared registry (your slice), its etag, and the
        registry's use of the shared limits (10 rules, 25 unique destinations)."""
        message = self._prepare(
            pb.GetReplicationRulesRequest, request, registry_id=registry_id, region=region
        )
        return await self._call(
            "GetReplicationRules",
            message,
            pb.GetReplicationRulesResponse,
            no_cache,
            timeout,
            retry,
            info,
            metadata,
        )

    async def put_replication_rules(
        self,
        request: pb.PutReplicationRulesRequest | None = None,
        *,
        rules: RulesInput | None = None,
        registry_id: str | None = None,
        region: str | None = None,
        etag: str | None = None,
        validate_only: bool | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        metadata: CallMetadata | None = None,
        info: CallInfo | None = None,
    ) -> pb.PutReplicationRulesResponse:
        """Replace your slice of the replication rules (messages or AWS-shaped JSON rules;
        `[]` removes them); the gateway keeps everyone else's rules and writes the merge.
        Prefer `update_replication_rules` to change part."""
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
            message,
            pb.PutReplicationRulesResponse,
            False,
            timeout,
            retry,
            info,
            metadata,
        )

    async def get_policy_statements(
        self,
        request: pb.GetPolicyStatementsRequest | None = None,
        *,
        registry_id: str | None = None,
        region: str | None = None,
        no_cache: bool = False,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        metadata: CallMetadata | None = None,
        info: CallInfo | None = None,
    ) -> pb.GetPolicyStatementsResponse:
        """Your statements of the registry policy (`statements_json`) and their etag."""
        message = self._prepare(
            pb.GetPolicyStatementsRequest, request, registry_id=registry_id, region=region
        )
        return await self._call(
            "GetPolicyStatements",
            message,
            pb.GetPolicyStatementsResponse,
            no_cache,
            timeout,
            retry,
            info,
            metadata,
        )

    async def put_policy_statements(
        self,
        request: pb.PutPolicyStatementsRequest | None = None,
        *,
        statements: StatementsInput | str | None = None,
        registry_id: str | None = None,
        region: str | None = None,
        etag: str | None = None,
        validate_only: bool | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        metadata: CallMetadata | None = None,
        info: CallInfo | None = None,
    ) -> pb.PutPolicyStatementsResponse:
        """Replace your statements of the registry policy (dicts or a JSON array; `[]`
        removes them); the gateway keeps everyone else's and writes the merged policy.
        Prefer `update_policy_statements` to change part."""
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
            message,
            pb.PutPolicyStatementsResponse,
            False,
            timeout,
            retry,
            info,
            metadata,
        )

    async def get_configuration_history(
        self,
        request: pb.GetConfigurationHistoryRequest | None = None,
        *,
        resource: Resource | None = None,
        registry_id: str | None = None,
        region: str | None = None,
        page_size: int | None = None,
        page_token: str | None = None,
        no_cache: bool = False,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        metadata: CallMetadata | None = None,
        info: CallInfo | None = None,
    ) -> pb.GetConfigurationHistoryResponse:
        """One page of a resource's recorded versions, newest first (`next_page_token`
        continues; `iter_configuration_history` follows it for you); a slice tenant gets its
        own slice of each version (`slice_view`). `resource`: "replication" or "policy" (or
        the proto enum). The history is always read from the gateway's store, never a
        cache: `no_cache` is accepted, as on every read, and changes nothing."""
        message = self._prepare(
            pb.GetConfigurationHistoryRequest,
            request,
            registry_id=registry_id,
            region=region,
            resource=None if resource is None else resource_value(resource),
            page_size=page_size,
            page_token=page_token,
        )
        return await self._call(
            "GetConfigurationHistory",
            message,
            pb.GetConfigurationHistoryResponse,
            no_cache,
            timeout,
            retry,
            info,
            metadata,
        )

    # --- helpers ---------------------------------------------------------------------------

    async def iter_configuration_history(
        self,
        resource: Resource,
        *,
        registry_id: str | None = None,
        region: str | None = None,
        page_size: int | None = None,
        no_cache: bool = False,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        metadata: CallMetadata | None = None,
    ) -> AsyncIterator[pb.ConfigurationVersion]:
        """Every recorded version of `resource` ("replication" or "policy"), newest first,
        across pages: `async for version in client.iter_configuration_history("policy")`.
        Each page is one call, with its own deadline (`timeout`) and retries, made when the
        previous page is used up (stop early and no more pages are read)."""
        token = ""
        seen: set[str] = set()
        while True:
            page = await self.get_configuration_history(
                resource=resource,
                registry_id=registry_id,
                region=region,
                page_size=page_size,
                page_token=token,
                no_cache=no_cache,
                timeout=timeout,
                retry=retry,
                metadata=metadata,
            )
            for version in page.versions:
                yield version
            token = page.next_page_token
            if not token:
                return
            if token in seen:  # a server that never ends: stop rather than loop for ever
                raise client_error(
                    Internal, "the gateway answered a page token twice", reason="PAGE_LOOP"
                )
            seen.add(token)

    async def update_replication_rules(
        self,
        change: AsyncRulesChange,
        *,
        registry_id: str | None = None,
        region: str | None = None,
        max_attempts: int = 5,
        timeout: float | None = None,
        metadata: CallMetadata | None = None,
        info: CallInfo | None = None,
    ) -> pb.PutReplicationRulesResponse:
        """Read your rules (fresh, past the cache), `change` them, write them back only if
        nobody wrote your slice in between (its etag); on `EtagMismatch`, again.

        `change` gets a list of copies of your rules and edits it in place (returning None)
        or returns the new list (messages or AWS-shaped JSON rules); it may be called
        several times, so it must not assume what it finds. When the result equals what was
        read, nothing is written and the answer holds the current rules and etag. One
        deadline, `timeout` (the client's by default), covers every read, write and wait;
        after `max_attempts` conflicts the last `EtagMismatch` is raised.
        """

        async def once(deadline: Deadline) -> pb.PutReplicationRulesResponse:
            current = await self.get_replication_rules(
                registry_id=registry_id,
                region=region,
                no_cache=True,
                timeout=deadline.left(),
                metadata=metadata,
                info=info,
            )
            rules = replication_rules(current.rules)
            changed = await maybe_await(change(rules))
            desired = replication_rules(rules if changed is None else changed)
            if desired == list(current.rules):
                return pb.PutReplicationRulesResponse(
                    registry_id=current.registry_id, rules=current.rules, etag=current.etag
                )
            return await self.put_replication_rules(
                rules=desired,
                registry_id=current.registry_id,
                region=region,
                etag=current.etag,
                timeout=deadline.left(),
                metadata=metadata,
                info=info,
            )

        return await self._read_modify_write(once, max_attempts, timeout)

    async def update_policy_statements(
        self,
        change: AsyncStatementsChange,
        *,
        registry_id: str | None = None,
        region: str | None = None,
        max_attempts: int = 5,
        timeout: float | None = None,
        metadata: CallMetadata | None = None,
        info: CallInfo | None = None,
    ) -> pb.PutPolicyStatementsResponse:
        """Read your statements of the registry policy (fresh, past the cache), `change`
        them, write them back only if nobody wrote your slice in between; on `EtagMismatch`,
        again.

        `change` gets your statements as parsed JSON objects (dicts) and edits the list in
        place (returning None) or returns the new list. As `update_replication_rules`: no
        write when nothing changed, one deadline for the loop, `max_attempts` conflicts.
        """

        async def once(deadline: Deadline) -> pb.PutPolicyStatementsResponse:
            current = await self.get_policy_statements(
                registry_id=registry_id,
                region=region,
                no_cache=True,
                timeout=deadline.left(),
                metadata=metadata,
                info=info,
            )
            statements = json.loads(current.statements_json or "[]")
            changed = await maybe_await(change(statements))
            desired = statements_list(statements if changed is None else changed)
            if desired == json.loads(current.statements_json or "[]"):
                return pb.PutPolicyStatementsResponse(
                    registry_id=current.registry_id,
                    statements_json=current.statements_json,
                    etag=current.etag,
                )
            return await self.put_policy_statements(
                statements=desired,
                registry_id=current.registry_id,
                region=region,
                etag=current.etag,
                timeout=deadline.left(),
                metadata=metadata,
                info=info,
            )

        return await self._read_modify_write(once, max_attempts, timeout)

    async def update_replication_configuration(
        self,
        change: AsyncConfigChange,
        *,
        registry_id: str | None = None,
        region: str | None = None,
        max_attempts: int = 5,
        timeout: float | None = None,
        metadata: CallMetadata | None = None,
        info: CallInfo | None = None,
    ) -> pb.PutReplicationConfigurationResponse:
        """Read the whole configuration (fresh), `change`, write back only if nobody wrote
        in between; repeat on a conflict. A tenant of a shared registry uses
        `update_replication_rules` (its slice) instead.

        `change` gets a copy of the current configuration and edits it in place (or returns
        a new one); it may be called several times, so it must not assume what it finds. The
        write carries the etag of the read, so a colleague's concurrent change is never
        overwritten: on `EtagMismatch` the configuration is read again and `change` applied
        to that. After `max_attempts` conflicts the last `EtagMismatch` is raised. When
        `change` leaves the configuration as it was, nothing is written and the answer holds
        the current configuration and etag. One deadline, `timeout`, covers the loop.
        """

        async def once(deadline: Deadline) -> pb.PutReplicationConfigurationResponse:
            # Past the cache: a stale read could make "nothing changed" look true.
            current = await self.describe_registry(
                registry_id=registry_id,
                region=region,
                no_cache=True,
                timeout=deadline.left(),
                metadata=metadata,
                info=info,
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
            return await self.put_replication_configuration(
                replication_configuration=desired,
                registry_id=current.registry_id,
                region=region,
                etag=current.etag,
                timeout=deadline.left(),
                metadata=metadata,
                info=info,
            )

        return await self._read_modify_write(once, max_attempts, timeout)

    @overload
    async def restore(
        self,
        version_etag: str,
        *,
        resource: Literal["replication"],
        etag: str | None = None,
        registry_id: str | None = None,
        region: str | None = None,
        timeout: float | None = None,
        metadata: CallMetadata | None = None,
        info: CallInfo | None = None,
    ) -> ReplicationRestored: ...

    @overload
    async def restore(
        self,
        version_etag: str,
        *,
        resource: Literal["policy"],
        etag: str | None = None,
        registry_id: str | None = None,
        region: str | None = None,
        timeout: float | None = None,
        metadata: CallMetadata | None = None,
        info: CallInfo | None = None,
    ) -> PolicyRestored: ...

    @overload
    async def restore(
        self,
        version_etag: str,
        *,
        resource: pb.HistoryResource.ValueType,
        etag: str | None = None,
        registry_id: str | None = None,
        region: str | None = None,
        timeout: float | None = None,
        metadata: CallMetadata | None = None,
        info: CallInfo | None = None,
    ) -> Restored: ...

    async def restore(
        self,
        version_etag: str,
        *,
        resource: Resource,
        etag: str | None = None,
        registry_id: str | None = None,
        region: str | None = None,
        timeout: float | None = None,
        metadata: CallMetadata | None = None,
        info: CallInfo | None = None,
    ) -> Restored:
        """Write back the version of `resource` whose etag is `version_etag` (from
        `iter_configuration_history`), as an ordinary write with an etag precondition.

        `etag`: the current etag the caller decided on (from a read or the history's newest
        version); when someone changed the resource since, the write raises `EtagMismatch`
        and nothing is written. Without it, the current etag is read fresh first, so only a
        change in that moment is protected. A slice tenant restores its own slice (its rules
        or statements) with the slice RPCs. Raises `VersionNotFound` (a `LookupError`) when
        no recorded version has `version_etag`, and `VersionNotRestorable` (a `ValueError`,
        before any write) when that version was kept without its document
        (`document_omitted`: too large for the gateway's history). Answers the write's
        response: for `resource="replication"` a `PutReplicationConfigurationResponse` (a
        slice tenant: `PutReplicationRulesResponse`), for "policy" a
        `PutRegistryPolicyResponse` or `DeleteRegistryPolicyResponse` (the version was "no
        policy"; a slice tenant: `PutPolicyStatementsResponse`). One deadline, `timeout`,
        covers the history's pages, the read and the write.
        """
        if not version_etag:
            raise client_error(
                InvalidArgument,
                "version_etag is empty: pass the etag of a recorded version",
                reason="INVALID_ARGUMENT",
                field="version_etag",
            )
        kind = resource_value(resource)
        deadline = Deadline(self._timeout if timeout is None else timeout)
        version, slice_view = await self._find_version(
            version_etag, kind, registry_id, region, deadline, metadata
        )
        if version.document_omitted:
            # Its empty document would be written as "no rules" / "no policy".
            raise client_error(
                VersionNotRestorable,
                f"version {version_etag[:64]!r} was kept without its document (larger than "
                "the gateway's history.max_bytes): it cannot be restored; nothing was written",
                reason="DOCUMENT_OMITTED",
            )
        where: dict[str, Any] = {"registry_id": registry_id, "region": region}
        where["metadata"] = metadata
        replication = kind == pb.HISTORY_RESOURCE_REPLICATION
        if slice_view and replication:
            if etag is None:
                etag = (
                    await self.get_replication_rules(
                        no_cache=True, timeout=deadline.left(), **where
                    )
                ).etag
            return await self.put_replication_rules(
                rules=version.replication_configuration.rules,
                etag=etag,
                info=info,
                timeout=deadline.left(),
                **where,
            )
        if slice_view:
            if etag is None:
                etag = (
                    await self.get_policy_statements(
                        no_cache=True, timeout=deadline.left(), **where
                    )
                ).etag
            return await self.put_policy_statements(
                statements=version.statements_json or "[]",
                etag=etag,
                info=info,
                timeout=deadline.left(),
                **where,
            )
        if replication:
            if etag is None:
                etag = (
                    await self.describe_registry(no_cache=True, timeout=deadline.left(), **where)
                ).etag
            return await self.put_replication_configuration(
                replication_configuration=version.replication_configuration,
                etag=etag,
                info=info,
                timeout=deadline.left(),
                **where,
            )
        if etag is None:
            etag = await self._policy_etag(where, deadline)
        if not version.policy_text:
            return await self.delete_registry_policy(
                etag=etag, info=info, timeout=deadline.left(), **where
            )
        return await self.put_registry_policy(
            policy_text=version.policy_text, etag=etag, info=info, timeout=deadline.left(), **where
        )

    # --- internals -------------------------------------------------------------------------

    async def _find_version(
        self,
        version_etag: str,
        resource: pb.HistoryResource.ValueType,
        registry_id: str | None,
        region: str | None,
        deadline: Deadline,
        metadata: CallMetadata | None,
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
                timeout=deadline.left(),
                metadata=metadata,
            )
            for version in page.versions:
                if version.etag == version_etag:
                    return version, page.slice_view
            token = page.next_page_token
            if not token:
                break
        raise client_error(
            VersionNotFound,
            f"no recorded version has etag {version_etag[:64]!r}",
            reason="VERSION_NOT_FOUND",
        )

    async def _policy_etag(self, where: dict[str, Any], deadline: Deadline) -> str:
        try:
            return (
                await self.get_registry_policy(no_cache=True, timeout=deadline.left(), **where)
            ).etag
        except NotFound:
            return "absent"  # the etag of no policy

    async def _read_modify_write(
        self,
        once: Callable[[Deadline], Awaitable[Written]],
        max_attempts: int,
        timeout: float | None,
    ) -> Written:
        """Run `once` (read, change, write with the read's etag) until it does not conflict,
        at most `max_attempts` times, all under one deadline."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        deadline = Deadline(self._timeout if timeout is None else timeout)
        for attempt in range(1, max_attempts + 1):
            try:
                return await once(deadline)
            except EtagMismatch:
                delay = self._retry.backoff(attempt, None)
                if attempt == max_attempts or not deadline.allows(delay):
                    raise
                await asyncio.sleep(delay)
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
        request: Message,
        response_type: type[Resp],
        no_cache: bool,
        timeout: float | None,
        retry: RetryPolicy | None,
        info: CallInfo | None,
        metadata: CallMetadata | None,
    ) -> Resp:
        policy = retry or self._retry
        has_credentials = self._api_key is not None or self._token_provider is not None
        extra = caller_metadata(metadata, has_credentials=has_credentials)
        attempts = Attempts(
            policy,
            self._timeout if timeout is None else timeout,
            retry_safe=retry_safe(rpc, request, policy),
            rpc=rpc,
        )
        while True:
            left = attempts.start()
            sent = bearer_metadata(await self._token(), no_cache) + extra
            try:
                reply = await self._proceed(
                    Attempt(rpc, request, response_type, sent, left, attempts.count)
                )
            except RegistryGatewayError as error:
                delay = attempts.delay_after(error)
                if delay is None:
                    if info is not None:
                        info.record(error.trailing_metadata, attempts.count)
                    raise
                attempts.retrying(error, delay)
                await asyncio.sleep(delay)
                continue
            if info is not None:
                info.record(reply.metadata, attempts.count)
            if not isinstance(reply.response, response_type):  # an interceptor's mistake
                raise TypeError(f"{rpc} answered {type(reply.response).__name__}")
            return reply.response


def _link(interceptor: AsyncInterceptor, proceed: AsyncProceed) -> AsyncProceed:
    """`proceed` seen through `interceptor`: one link of the chain."""

    async def link(attempt: Attempt) -> Reply:
        return await interceptor.intercept(attempt, proceed)

    return link


def _connect_transport(url: str, tls: Tls | None) -> AsyncTransport:
    """The Connect transport: imported only here, so the client works without the extra."""
    try:
        from registry_gateway_client._aio_connect import ConnectTransport
    except ImportError as exc:  # connectrpc or pyqwest missing
        raise ImportError(
            f"an {url.split(':')[0]}:// target speaks Connect, which needs the `connect` "
            "extra: pip install 'registry-gateway-client[connect]'"
        ) from exc
    return ConnectTransport(url, tls=tls)
