"""The servicer: one thin method per RPC, composing authorization, rules and operations.

The pipeline (service/rpc/interceptor.py) has already authenticated the caller, admitted
the call and set the deadline; each method reads like the call path of
docs/architecture.md: authorize the target, validate the request, apply the content rules,
then read or write, and record what the domain returned. A call that goes past the cache (a
write, a `no-cache` read, a history read) spends its tenant's upstream budget only once
those checks have passed (`past_the_cache`, service/pipeline/gates.py): a call the gateway
refuses itself never reached AWS.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias, TypeVar, cast

import grpc

from service.auth.content import ContentRules
from service.auth.history import history_view
from service.auth.targets import Target
from service.auth.tenancy import Tenancy
from service.call import CACHE_OUTCOME_KEY, Call, outside_call
from service.errors import GatewayError
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.observability.audit import WriteRecord, policy_digest
from service.pipeline.gates import past_the_cache
from service.registry.rpcs.destinations import UNVERIFIED_KEY, Checked, DestinationCheck
from service.registry.rpcs.history_view import HistoryView, parse_query
from service.registry.rpcs.slice_operations import SliceOperations, told_cache_outcome
from service.registry.rpcs.validation import RequestValidator
from service.registry.writes.context import WriteContext
from service.registry.writes.operations import (
    Read,
    RegistryOperations,
    WriteResult,
    etag_read_before,
)
from service.state.history import HistoryStore

T = TypeVar("T")
_Request: TypeAlias = (
    pb.DescribeRegistryRequest
    | pb.GetRegistryPolicyRequest
    | pb.GetReplicationRulesRequest
    | pb.GetPolicyStatementsRequest
)
_WriteRequest: TypeAlias = (
    pb.PutRegistryPolicyRequest
    | pb.DeleteRegistryPolicyRequest
    | pb.PutReplicationConfigurationRequest
    | pb.PutReplicationRulesRequest
    | pb.PutPolicyStatementsRequest
)


class RegistryConfigServicer:
    """ecr.registry.v1.RegistryConfigService: each method takes the request and the call
    the pipeline admitted (service/call.py), passed by the transport that serves it (the
    gRPC interceptor, the Connect service), never grpc's context."""

    def __init__(
        self,
        content: ContentRules,
        operations: RegistryOperations,
        validator: RequestValidator | None = None,
        *,
        history: HistoryStore,
        tenancy: Callable[[], Tenancy] | None = None,
    ) -> None:
        self._content = content
        self._ops = operations
        self._history = HistoryView(history)
        # Default: the installed AWS model and botocore's known regions.
        self._validator = validator if validator is not None else RequestValidator()
        # `tenancy`: the config current now, for slice writes other replicas hand over
        # (service/registry/writes/handoff.py).
        self._slices = SliceOperations(
            operations, content, self._validator, past_the_cache=past_the_cache, tenancy=tenancy
        )
        self._destinations = DestinationCheck(operations, content)

    @staticmethod
    def _target(call: Call, registry_id: str, region: str) -> Target:
        target = call.tenancy.authorizer.authorize(
            call.identity.tenant, call.rpc, registry_id, region
        )
        where = call.where
        where["registry_id"] = target.registry.registry_id
        where["region"] = target.region
        return target

    @staticmethod
    def _write_target(
        call: Call, registry_id: str, region: str, validate_only: bool
    ) -> tuple[Target, WriteRecord]:
        record = call.write if call.write is not None else WriteRecord()
        record.validate_only = validate_only
        # What was asked for, as sent (the audit bounds it): a refused attempt's line must
        # say what the tenant tried to touch; the defaults it resolved to, if it sent none.
        record.registry_id, record.region = registry_id or None, region or None
        try:
            target = RegistryConfigServicer._target(call, registry_id, region)
        except GatewayError as exc:
            record.registry_id = record.registry_id or exc.metadata.get("registryId")
            record.region = record.region or exc.metadata.get("region")
            raise
        record.registry_id, record.region = target.registry_id, target.region
        return target, record

    def _read_request(self, call: Call, request: _Request) -> Target:
        """The target of a read, authorized, and the request validated. A plain function
        (it runs on every read): a `no-cache` read then spends its pass past the cache
        (`past_the_cache`), in the RPC's method."""
        # `_target`, written out: this runs on every read.
        target = call.tenancy.authorizer.authorize(
            call.identity.tenant, call.rpc, request.registry_id, request.region
        )
        where = call.where
        where["registry_id"] = target.registry.registry_id
        where["region"] = target.region
        self._validator.check(request, target)
        return target

    def _write_request(
        self, call: Call, request: _WriteRequest, policy: str | None = None
    ) -> tuple[Target, WriteRecord]:
        """The target of a write, authorized, its audit record (with the digest of the
        `policy` it carries), and the request validated."""
        target, record = self._write_target(
            call, request.registry_id, request.region, request.validate_only
        )
        if policy is not None:
            record.policy_sha256 = policy_digest(policy)
        self._validator.check(request, target)
        return target, record

    @staticmethod
    def _served(call: Call, read: Read[T]) -> T:
        """Tell the caller how the cache served its read (x-cache); answer it."""
        outcome = read.cache_outcome
        if outcome is not None:
            # `call.cache_outcome(outcome)`, written out: this runs on every read.
            call.trailers.append((CACHE_OUTCOME_KEY, outcome))
            call.cache_result.append(outcome)
        return read.answer()

    @staticmethod
    def _served_slice(call: Call, read: Read[T]) -> T:
        """A slice read: the caller is told the cache outcome its own request decides
        (`told_cache_outcome`), never one another tenant's writes decide; the access log
        keeps how the cache really served it."""
        told = told_cache_outcome(read.cache_outcome, call.no_cache)
        call.cache_outcome(read.cache_outcome, told=told)
        return read.answer()

    @staticmethod
    def _write_context(call: Call) -> WriteContext:
        """What the domain is told of a write's caller, as data: who writes, its deadline,
        and how a write already sent outlives that deadline."""
        identity = call.identity
        return WriteContext(
            identity=f"{identity.kind}:{identity.subject}",
            rpc=call.rpc,
            request_id=call.request_id,
            deadline=call.deadline,
            outlive=outside_call,
        )

    @staticmethod
    def _unverified(call: Call, record: WriteRecord, checked: Checked) -> None:
        """Tell the caller (trailer) and the audit line which destinations were not verified
        (the answer's `unverified_destinations`, the plan of a dry run included, is filled
        once the domain has returned it)."""
        shown = checked.trailer()
        if shown is not None:
            call.trailers.append((UNVERIFIED_KEY, shown))
            record.unverified_destinations = shown

    @staticmethod
    async def _written(record: WriteRecord, write: Awaitable[WriteResult[T]]) -> T:
        """Run a write; record the etags around it for the audit line (a failed write's,
        the one it had read); answer its response."""
        try:
            done = await write
        except BaseException as exc:
            record.etag_before = etag_read_before(exc)
            raise
        record.etag_before, record.etag_after = done.etag_before, done.etag_after
        return done.response

    async def DescribeRegistry(
        self, request: pb.DescribeRegistryRequest, call: Call
    ) -> pb.DescribeRegistryResponse:
        target = self._read_request(call, request)
        if call.no_cache:
            await past_the_cache()
        return self._served(call, await self._ops.describe_registry(target, fresh=call.no_cache))

    async def GetRegistryPolicy(
        self, request: pb.GetRegistryPolicyRequest, call: Call
    ) -> pb.GetRegistryPolicyResponse:
        target = self._read_request(call, request)
        if call.no_cache:
            await past_the_cache()
        return self._served(call, await self._ops.get_registry_policy(target, fresh=call.no_cache))

    async def PutRegistryPolicy(
        self, request: pb.PutRegistryPolicyRequest, call: Call
    ) -> pb.PutRegistryPolicyResponse:
        target, record = self._write_request(call, request, request.policy_text)
        self._content.check_policy(target, call.tenant.policy_guardrails, request.policy_text)
        await past_the_cache()
        write = self._ops.put_registry_policy(
            target,
            request.policy_text,
            request.etag,
            request.validate_only,
            context=self._write_context(call),
        )
        return await self._written(record, write)

    async def DeleteRegistryPolicy(
        self, request: pb.DeleteRegistryPolicyRequest, call: Call
    ) -> pb.DeleteRegistryPolicyResponse:
        target, record = self._write_request(call, request)
        await past_the_cache()
        write = self._ops.delete_registry_policy(
            target, request.etag, request.validate_only, context=self._write_context(call)
        )
        return await self._written(record, write)

    async def PutReplicationConfiguration(
        self, request: pb.PutReplicationConfigurationRequest, call: Call
    ) -> pb.PutReplicationConfigurationResponse:
        target, record = self._write_request(call, request)
        self._content.check_destinations(target, request.replication_configuration)
        checked = await self._destinations.check(
            target, call.tenancy.config, request.replication_configuration.rules
        )
        self._unverified(call, record, checked)
        await past_the_cache()
        write = self._ops.put_replication_configuration(
            target,
            request.replication_configuration,
            request.etag,
            request.validate_only,
            context=self._write_context(call),
        )
        answer = await self._written(record, write)
        answer.unverified_destinations.extend(checked.messages())
        return answer

    # --- tenant-owned slices of a shared registry (service/registry/rpcs/slice_operations.py) ----

    async def GetReplicationRules(
        self, request: pb.GetReplicationRulesRequest, call: Call
    ) -> pb.GetReplicationRulesResponse:
        target = self._read_request(call, request)
        if call.no_cache:
            await past_the_cache()
        return self._served_slice(call, await self._slices.get_rules(target, fresh=call.no_cache))

    async def PutReplicationRules(
        self, request: pb.PutReplicationRulesRequest, call: Call
    ) -> pb.PutReplicationRulesResponse:
        target, record = self._write_request(call, request)
        checked = await self._destinations.check(
            target, call.tenancy.config, request.rules, rpc=call.rpc, field="rules"
        )
        self._unverified(call, record, checked)
        write = self._slices.put_rules(
            target,
            request.rules,
            request.etag,
            request.validate_only,
            context=self._write_context(call),
        )
        answer = await self._written(record, write)
        answer.unverified_destinations.extend(checked.messages())
        return answer

    async def GetPolicyStatements(
        self, request: pb.GetPolicyStatementsRequest, call: Call
    ) -> pb.GetPolicyStatementsResponse:
        target = self._read_request(call, request)
        if call.no_cache:
            await past_the_cache()
        read = await self._slices.get_statements(target, fresh=call.no_cache)
        return self._served_slice(call, read)

    async def PutPolicyStatements(
        self, request: pb.PutPolicyStatementsRequest, call: Call
    ) -> pb.PutPolicyStatementsResponse:
        target, record = self._write_request(call, request, request.statements_json)
        write = self._slices.put_statements(
            target,
            call.tenant.policy_guardrails,
            request.statements_json,
            request.etag,
            request.validate_only,
            context=self._write_context(call),
        )
        return await self._written(record, write)

    # --- the recorded versions of a resource (service/registry/rpcs/history_view.py) --------------

    async def GetConfigurationHistory(
        self, request: pb.GetConfigurationHistoryRequest, call: Call
    ) -> pb.GetConfigurationHistoryResponse:
        target = self._target(call, request.registry_id, request.region)
        query = parse_query(request, target)
        # Which view (whole documents or the caller's slice) is a rule of its own, on the
        # resource the request names: service/auth/history.py.
        view = history_view(target, query.resource)
        await past_the_cache()
        # Read from the history store, not through the cache: no x-cache. A store that does
        # not answer is UNAVAILABLE (HISTORY_UNAVAILABLE), never an empty history.
        return await self._history.page(target, query, view)


def add_to_server(servicer: RegistryConfigServicer, server: grpc.aio.Server) -> None:
    """Serve `servicer` on `server`. Its methods take the `Call` where grpc's generated base
    class has the context: the interceptor (service/rpc/interceptor.py) wraps every method
    of the service (fail closed) and calls each with the call it admitted, so grpc never
    calls them itself."""
    pb_grpc.add_RegistryConfigServiceServicer_to_server(
        cast(pb_grpc.RegistryConfigServiceServicer, servicer), server
    )
