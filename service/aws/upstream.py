"""The ECR port on aioboto3: one ECR client per (account, region), reused and verified.

Each client is made on first use and reused (never one per request); one unused for
`aws.client_idle_seconds` is closed (service/aws/client_pool.py) and made again on its
next call, and every client is closed at shutdown. When a client is first made, STS
GetCallerIdentity with the same credentials must name the registry's own account (asked
once per credentials: the base session's, or a role's); otherwise every call on that
registry is refused with FAILED_PRECONDITION, so a misconfigured key can never read
or change another registry. Then ECR's REGISTRY_POLICY_SCOPE of the account is read
(GetAccountSetting) into `policy_scopes` (service/aws/account_settings.py); again on
reload (`refresh_policy_scopes`). Both are kept when an idle client is closed: making it
again costs a client and a connection only.

One botocore session per role (reused across regions), on what every client of the process
shares: botocore's parsed data, its event handlers, the TLS contexts
(service/aws/shared_botocore.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import aioboto3
from aiobotocore.credentials import (
    AioAssumeRoleCredentialFetcher,
    AioCredentialResolver,
    AioDeferredRefreshableCredentials,
)
from botocore.credentials import CredentialProvider
from botocore.exceptions import BotoCoreError, ClientError
from opentelemetry.trace import Status, StatusCode

from service.auth.targets import Target
from service.aws.account_settings import SETTING, PolicyScopes
from service.aws.client_pool import ClientPool
from service.aws.errors import aws_errors_mapped, error_code, watch_attempts
from service.aws.port import NoPolicy
from service.aws.resilience import Resilience
from service.aws.shared_botocore import SharedBotocore
from service.bounded_gather import gather_bounded
from service.config import AwsConfig, GatewayConfig, RegistryConfig, registry_regions
from service.ecr import convert
from service.errors import DeadlineExceeded, FailedPrecondition, GatewayError, NotFound
from service.gen.v1 import registry_pb2 as pb
from service.observability.metrics import Metrics
from service.observability.tracing import Tracing

log = logging.getLogger("registry_gateway.upstream")

SessionFactory = Callable[[], aioboto3.Session]
# How a session makes a client: aioboto3's `Session.client` (the base session) or
# aiobotocore's `AioSession.create_client` (a role's); both an async context manager.
ClientMaker = Callable[..., AbstractAsyncContextManager[Any]]
T = TypeVar("T")
ROLE_SESSION_NAME = "registry-gateway"


@dataclass(frozen=True)
class Reachability:
    """What probing a target's account found: whether AWS answered (a refusal is an
    answer), and the error met on the way, if any (for the operators' diagnosis)."""

    answered: bool
    error: BaseException | None = None


@dataclass(frozen=True)
class _ClientKey:
    registry_id: str
    region: str
    role_arn: str | None
    external_id_env: str | None


class Upstream:
    """The ECR port (service/aws/port.py) on aioboto3: each call with the client of its
    target's (account, region), behind the breaker and bulkheads, traced and measured,
    and its AWS errors mapped (service/aws/errors.py)."""

    def __init__(
        self,
        aws: AwsConfig,
        *,
        session_factory: SessionFactory = aioboto3.Session,
        environ: Mapping[str, str] | None = None,
        time_left: Callable[[], float] = lambda: float("inf"),
        resilience: Resilience | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        shared: SharedBotocore | None = None,
    ) -> None:
        self._metrics = metrics
        self._tracing = tracing or Tracing(None)
        self._aws = aws
        self._session_factory = session_factory
        self._environ = os.environ if environ is None else environ
        self._time_left = time_left
        self.shared = shared or SharedBotocore()
        self._botocore_config = self.shared.config(
            # total_max_attempts counts the first attempt; botocore's max_attempts, retries.
            retries={"mode": "standard", "total_max_attempts": aws.max_attempts},
            connect_timeout=aws.connect_timeout_seconds,
            read_timeout=aws.read_timeout_seconds,
            user_agent_extra="registry-gateway",
        )
        self.clients: ClientPool[_ClientKey] = ClientPool(aws.client_idle_seconds)
        # The base session's STS client per region, every role's AssumeRole made with it.
        self._source_sts_clients: ClientPool[str] = ClientPool(aws.client_idle_seconds)
        # Keys whose account check passed: kept when their client is closed for idleness.
        self._verified: set[_ClientKey] = set()
        # The account each set of credentials reaches (role_arn, external_id_env; None and
        # None: the base session's), as STS GetCallerIdentity answered.
        self._accounts: dict[tuple[str | None, str | None], str] = {}
        self._refused: dict[_ClientKey, FailedPrecondition] = {}
        self._creating: dict[_ClientKey, asyncio.Lock] = {}
        self._base_session: aioboto3.Session | None = None
        self._role_sessions: dict[tuple[str, str | None], ClientMaker] = {}
        self._resilience = resilience or Resilience(
            aws, time_left, metrics.breaker_changed if metrics else None
        )
        # ECR's REGISTRY_POLICY_SCOPE per (account, region), read with each client; one
        # never read is read in the background when a policy write first asks for it.
        self.policy_scopes = PolicyScopes(metrics, on_missing=self._read_later)
        self._scope_reads: set[asyncio.Task[None]] = set()

    # --- the port (service/aws/port.py) -----------------------------------------------------

    async def describe_registry(
        self, target: Target, *, shared: bool = False
    ) -> pb.DescribeRegistryResponse:
        """DescribeRegistry: the replication configuration, with its etag."""
        aws = await self._call(target, "describe_registry", shared=shared)
        return convert.describe_response(aws)

    async def get_registry_policy(self, target: Target, *, shared: bool = False) -> str | NoPolicy:
        """GetRegistryPolicy: the policy text, or NoPolicy (RegistryPolicyNotFoundException)."""
        try:
            aws = await self._call(target, "get_registry_policy", shared=shared)
        except NotFound as exc:
            return NoPolicy(exc.metadata.get("awsRequestId", ""))
        return str(aws["policyText"])

    async def put_registry_policy(
        self, target: Target, policy_text: str, *, finish_once_sent: bool = False
    ) -> str:
        """PutRegistryPolicy; answers the policy text AWS took."""
        aws = await self._call(
            target, "put_registry_policy", finish_once_sent=finish_once_sent, policyText=policy_text
        )
        return str(aws.get("policyText", policy_text))

    async def delete_registry_policy(
        self, target: Target, *, finish_once_sent: bool = False
    ) -> str:
        """DeleteRegistryPolicy; answers the policy text AWS deleted (NotFound if none)."""
        aws = await self._call(target, "delete_registry_policy", finish_once_sent=finish_once_sent)
        return str(aws.get("policyText", ""))

    async def put_replication_configuration(
        self,
        target: Target,
        configuration: pb.ReplicationConfiguration,
        *,
        finish_once_sent: bool = False,
    ) -> pb.ReplicationConfiguration:
        """PutReplicationConfiguration; answers the configuration AWS took."""
        aws = await self._call(
            target,
            "put_replication_configuration",
            finish_once_sent=finish_once_sent,
            replicationConfiguration=convert.replication_to_aws(configuration),
        )
        return convert.replication_from_aws(aws.get("replicationConfiguration"))

    # --- one AWS call ------------------------------------------------------------------------

    async def _call(
        self,
        target: Target,
        operation: str,
        *,
        finish_once_sent: bool = False,
        shared: bool = False,
        **params: Any,
    ) -> dict[str, Any]:
        """Run one ECR operation (snake_case name) on the target, mapping AWS errors.

        Bounded by what remains of the call's deadline, except a write once sent
        (`finish_once_sent`): abandoning it half-way would leave its outcome unknown, so
        only botocore's own timeouts bound it. `shared`: on behalf of no one tenant (a
        cache load), so it takes none of the target tenant's share of the AWS call slots.
        """
        remaining = self._time_left()
        if remaining <= 0:
            raise DeadlineExceeded("deadline exceeded before AWS was called")
        tenant = None if shared else target.tenant
        async with self._resilience.guard(target.registry_id, target.region, tenant):
            client = await self._bounded(
                self._mapped(self._client(target), operation), remaining, operation
            )
            # In use from here (no await between): not closed for idleness meanwhile.
            with self.clients.using(_key_of(target)):
                request = self._measured(
                    getattr(client, operation)(**params), operation, target.region
                )
                if finish_once_sent:
                    return await self._mapped(request, operation)
                return await self._bounded(
                    self._mapped(request, operation), self._time_left(), operation
                )

    async def _measured(
        self, request: Awaitable[dict[str, Any]], operation: str, region: str
    ) -> dict[str, Any]:
        started = time.perf_counter()
        aws_error_code = ""
        try:
            with self._tracing.aws(operation, region) as span:
                try:
                    return await request
                except BaseException as exc:
                    if span is not None:
                        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    raise
        except BaseException as exc:
            aws_error_code = error_code(exc)
            raise
        finally:
            if self._metrics is not None:
                self._metrics.upstream.labels(operation, aws_error_code).inc()
                self._metrics.upstream_seconds.labels(operation).observe(
                    time.perf_counter() - started
                )

    async def _bounded(self, awaitable: Awaitable[T], remaining: float, operation: str) -> T:
        try:
            async with asyncio.timeout(None if remaining == float("inf") else remaining):
                return await awaitable
        except TimeoutError:
            raise DeadlineExceeded(
                f"deadline exceeded waiting for AWS ECR {operation}",
                metadata={"operation": operation},
            ) from None

    async def _mapped(self, request: Awaitable[T], operation: str) -> T:
        try:
            with aws_errors_mapped(operation):
                return await request
        except TimeoutError:
            raise DeadlineExceeded(
                f"deadline exceeded waiting for AWS ECR {operation}",
                metadata={"operation": operation},
            ) from None

    async def reachable(self, target: Target) -> Reachability:
        """Whether AWS answers for the target (STS, when its client is made); a refusal for
        another account counts as an answer, unreachable or timed out does not. The error
        met, answered or not, comes with it: the server says why (service/aws/diagnosis.py)."""
        try:
            async with asyncio.timeout(self.probe_timeout_seconds):
                await self._client(target)
        except (TimeoutError, BotoCoreError) as exc:
            return Reachability(False, exc)
        except (ClientError, GatewayError) as exc:
            return Reachability(True, exc)
        return Reachability(True)

    @property
    def probe_timeout_seconds(self) -> float:
        """How long `reachable` waits for AWS."""
        return self._aws.connect_timeout_seconds * 3

    # --- ECR's REGISTRY_POLICY_SCOPE (service/aws/account_settings.py) ---------------------

    async def read_policy_scope(self, target: Target) -> None:
        """Read GetAccountSetting(REGISTRY_POLICY_SCOPE) of the target's account and region
        into `policy_scopes`; a failure is recorded as such (never raised)."""
        registry = target.registry
        try:
            async with asyncio.timeout(self.probe_timeout_seconds):
                # Read here, not also by `_client` if this makes the client.
                client = await self._client(target, read_scope=False)
            # In use from here (no await between): not closed for idleness meanwhile.
            with self.clients.using(_key_of(target)):
                await self._read_scope_with(client, registry, target.region)
        except GatewayError as exc:
            # The account's client was refused (ACCOUNT_MISMATCH, no credentials): writes
            # answer that, not an unknown scope.
            self.policy_scopes.unreadable(registry, target.region, _why(exc), refused=exc)
        except (TimeoutError, BotoCoreError, ClientError) as exc:
            self.policy_scopes.unreadable(registry, target.region, _why(exc), cause=exc)

    async def refresh_policy_scopes(
        self, config: GatewayConfig, *, missing: bool = False, skip: Collection[str] = ()
    ) -> None:
        """Read the setting again for every (account, region) the config names whose client
        was made (on reload: a changed setting, or a changed pin, is seen; a client closed
        for idleness is made again); with `missing`, for those never read instead, making
        their clients (at start-up, after the probe of each registry's first region), but
        for the registries in `skip` (whose probe found no answer: each read would wait
        for its timeout). `aws.probe_concurrency` reads at a time."""
        reads: dict[tuple[str, str], Target] = {}
        for tenant in config.tenants:
            for registry in tenant.registries:
                if missing and registry.registry_id in skip:
                    continue
                for region in registry_regions(config, registry):
                    key = _ClientKey(
                        registry.registry_id, region, registry.role_arn, registry.external_id_env
                    )
                    never_read = self.policy_scopes.read(registry.registry_id, region) is None
                    if (missing and never_read) or (not missing and key in self._verified):
                        reads.setdefault(
                            (registry.registry_id, region), Target(tenant.name, registry, region)
                        )
        await gather_bounded(
            [functools.partial(self.read_policy_scope, t) for t in reads.values()],
            limit=self._aws.probe_concurrency,
            patience=self._aws.connect_timeout_seconds,
        )

    async def _read_scope_with(self, client: Any, registry: RegistryConfig, region: str) -> None:
        operation = "get_account_setting"
        try:
            answer = await asyncio.wait_for(
                self._measured(client.get_account_setting(name=SETTING), operation, region),
                self.probe_timeout_seconds,
            )
        except (TimeoutError, BotoCoreError, ClientError) as exc:
            self.policy_scopes.unreadable(registry, region, _why(exc), cause=exc)
            return
        self.policy_scopes.record(registry, region, str(answer.get("value", "")))

    def _read_later(self, registry: RegistryConfig, region: str) -> None:
        """A policy write asked for a scope never read (a region no start-up probe made a
        client for): read it in the background, so the caller's retry finds it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self.read_policy_scope(Target("", registry, region)))
        self._scope_reads.add(task)
        task.add_done_callback(self._scope_reads.discard)

    async def close(self) -> None:
        """Close every client (at shutdown)."""
        for task in list(self._scope_reads):
            task.cancel()
        await self.clients.close()
        await self._source_sts_clients.close()

    async def _client(self, target: Target, *, read_scope: bool = True) -> Any:
        """The target's open client, made if need be: the first time, after the account
        check, and followed by the read of its policy scope (unless not `read_scope`)."""
        registry = target.registry
        key = _key_of(target)
        client = self.clients.get(key)
        if client is not None:
            return client
        refused = self._refused.get(key)
        if refused is not None:
            raise refused
        lock = self._creating.setdefault(key, asyncio.Lock())
        async with lock:
            # Single flight: only the first of many concurrent first calls creates the client.
            client = self.clients.get(key)
            if client is not None:
                return client
            if key in self._refused:
                raise self._refused[key]
            make = await self._session_for(registry, target.region)
            # First made: the account check, then the policy scope. Made again after being
            # closed for idleness: both are known already.
            first = key not in self._verified
            if first:
                await self._check_account(make, key)
            client = await self.clients.add(
                key,
                make(
                    "ecr",
                    region_name=target.region,
                    endpoint_url=self._aws.endpoint_url,
                    config=self._botocore_config,
                ),
            )
            # Whether a failed call may have reached AWS, across botocore's own retries.
            watch_attempts(client)
            if first and read_scope:
                with self.clients.using(key):
                    await self._read_scope_with(client, registry, target.region)
            return client

    async def _check_account(self, make: ClientMaker, key: _ClientKey) -> None:
        """STS GetCallerIdentity with the client's credentials must name the registry's
        account: remembered either way (refused for good, or verified). Asked once per
        credentials (the base session's, or a role's): the account they reach is the same
        in every region they are valid in."""
        credentials = (key.role_arn, key.external_id_env)
        account = self._accounts.get(credentials)
        if account is None:
            account = await self._caller_account(make, key.region)
            self._accounts[credentials] = account
        if account != key.registry_id:
            log.error(
                "AWS credentials reach the wrong account",
                extra={"registry_id": key.registry_id, "account": account, "region": key.region},
            )
            self._refused[key] = FailedPrecondition(
                f"the gateway's AWS credentials for registry {key.registry_id} reach "
                f"account {account}; every call on this registry is refused",
                reason="ACCOUNT_MISMATCH",
                metadata={"registryId": key.registry_id, "region": key.region},
            )
            raise self._refused[key]
        self._verified.add(key)

    async def _caller_account(self, make: ClientMaker, region: str) -> str:
        async with make(
            "sts",
            region_name=region,
            endpoint_url=self._aws.endpoint_url,
            config=self._botocore_config,
        ) as sts:
            identity = await sts.get_caller_identity()
        return str(identity["Account"])

    async def _session_for(self, registry: RegistryConfig, region: str) -> ClientMaker:
        """How to make the registry's clients: the base session's, or its role's (one
        session per role, reused across regions)."""
        if self._base_session is None:
            self._base_session = self._session_factory()
        if registry.role_arn is None:
            return self._base_session.client  # type: ignore[no-any-return]  # aioboto3 untyped
        role_key = (registry.role_arn, registry.external_id_env)
        make = self._role_sessions.get(role_key)
        if make is None:
            make = await self._assume_role_session(registry, region)
            self._role_sessions[role_key] = make
        return make

    def _source_sts(
        self, region: str, service_name: str, **frozen: Any
    ) -> AbstractAsyncContextManager[Any]:
        """The STS client a role's credential fetcher asks for (`client_creator`, with the
        source credentials frozen), to call AssumeRole with: the base session's own STS
        client of the region, shared by every role (it holds the same credentials, the
        base session's, and refreshes them as they refresh), rather than a client made and
        closed per role and per refresh."""
        assert service_name == "sts" and self._base_session is not None
        base = self._base_session
        return self._source_sts_clients.lent(
            region,
            lambda: base.client(
                "sts",
                region_name=region,
                endpoint_url=self._aws.endpoint_url,
                config=self._botocore_config,
            ),
        )

    async def _assume_role_session(self, registry: RegistryConfig, region: str) -> ClientMaker:
        # botocore's own AssumeRoleProvider needs a profile; this is the same fetcher and
        # deferred refreshable credentials it builds, fed from the base session's chain, so
        # the role is assumed on first use and re-assumed before the credentials expire.
        #
        # Public API only: the base session is used through boto3's Session methods
        # (`get_credentials`, `client`); the role's session is an AioSession of our own
        # (service/aws/shared_botocore.py: on the process's shared loader and event hooks)
        # whose "credential_provider" component, one of the components botocore exposes
        # through the public `Session.register_component`/`get_component` (unlike its
        # `_internal_components`), is a resolver holding only the role's provider; its
        # clients are made with aiobotocore's `AioSession.create_client`.
        assert self._base_session is not None and registry.role_arn is not None
        source = await self._base_session.get_credentials()
        if source is None:
            raise FailedPrecondition(
                "the gateway has no AWS credentials to assume the registry's role with",
                reason="NO_AWS_CREDENTIALS",
                metadata={"registryId": registry.registry_id},
            )
        extra_args: dict[str, Any] = {"RoleSessionName": ROLE_SESSION_NAME}
        if registry.external_id_env:
            external_id = self._environ.get(registry.external_id_env)
            if not external_id:
                raise FailedPrecondition(
                    f"env {registry.external_id_env} (the external id of registry "
                    f"{registry.registry_id}'s role) is not set",
                    reason="EXTERNAL_ID_MISSING",
                    metadata={"registryId": registry.registry_id},
                )
            extra_args["ExternalId"] = external_id
        fetcher = AioAssumeRoleCredentialFetcher(
            client_creator=functools.partial(self._source_sts, region),
            source_credentials=source,
            role_arn=registry.role_arn,
            extra_args=extra_args,
        )
        role = _AssumedRole(
            AioDeferredRefreshableCredentials(
                refresh_using=fetcher.fetch_credentials, method=_AssumedRole.METHOD
            )
        )
        session = self.shared.session(AioCredentialResolver(providers=[role]))
        return session.create_client  # type: ignore[no-any-return]  # aiobotocore untyped


def _key_of(target: Target) -> _ClientKey:
    registry = target.registry
    return _ClientKey(
        registry.registry_id, target.region, registry.role_arn, registry.external_id_env
    )


class _AssumedRole(CredentialProvider):  # type: ignore[misc]  # botocore is untyped
    """A credential provider answering the role's refreshable credentials: the only
    provider of a role session's resolver, so nothing falls back to the default chain."""

    METHOD = "assume-role"

    def __init__(self, credentials: AioDeferredRefreshableCredentials) -> None:
        super().__init__()
        self._credentials = credentials

    async def load(self) -> AioDeferredRefreshableCredentials:
        """What AioCredentialResolver awaits: the role's credentials (refreshed lazily)."""
        return self._credentials


def _why(exc: BaseException) -> str:
    """What stopped a read of the setting, for the operators (the AWS error code if any)."""
    if isinstance(exc, TimeoutError):
        return "AWS did not answer in time"
    if isinstance(exc, GatewayError):
        return str(exc)
    # botocore's text may carry a whole HTML error page: its first line, clipped.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{error_code(exc)}: {text[:200]}"
