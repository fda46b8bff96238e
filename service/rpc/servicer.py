"""The servicer: one thin method per RPC, composing authorization, rules and operations.

The wrapper in `middleware` has already authenticated the caller, applied its rate limit
and set the deadline; each method reads like the call path of DESIGN.md: authorize the
target, validate the request, apply the content rules, then read or write.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc
from ecr.registry.v1 import registry_pb2 as pb
from ecr.registry.v1 import registry_pb2_grpc as pb_grpc

from service.auth.content import ContentRules
from service.auth.targets import Target
from service.call import Call, current_call
from service.errors import GatewayError, NotFound
from service.observability.audit import WriteRecord, policy_digest
from service.registry import slices
from service.registry.operations import RegistryOperations, check_etag
from service.registry.validation import RequestValidator

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"  # generic only in the stubs


class RegistryConfigServicer(pb_grpc.RegistryConfigServiceServicer):
    """ecr.registry.v1.RegistryConfigService."""

    def __init__(
        self,
        content: ContentRules,
        operations: RegistryOperations,
        validator: RequestValidator | None = None,
    ) -> None:
        self._content = content
        self._ops = operations
        # Default: the installed AWS model and botocore's known regions.
        self._validator = validator if validator is not None else RequestValidator()

    @staticmethod
    def _target(call: Call, registry_id: str, region: str) -> Target:
        target = call.tenancy.authorizer.authorize(call.tenant, call.rpc, registry_id, region)
        call.where.update(registry_id=target.registry_id, region=target.region)
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

    async def DescribeRegistry(
        self, request: pb.DescribeRegistryRequest, context: Context
    ) -> pb.DescribeRegistryResponse:
        call = current_call()
        target = self._target(call, request.registry_id, request.region)
        self._validator.check(request, target)
        return await self._ops.describe_registry(
            target, fresh=call.no_cache, on_outcome=call.cache_outcome
        )

    async def GetRegistryPolicy(
        self, request: pb.GetRegistryPolicyRequest, context: Context
    ) -> pb.GetRegistryPolicyResponse:
        call = current_call()
        target = self._target(call, request.registry_id, request.region)
        self._validator.check(request, target)
        return await self._ops.get_registry_policy(
            target, fresh=call.no_cache, on_outcome=call.cache_outcome
        )

    async def PutRegistryPolicy(
        self, request: pb.PutRegistryPolicyRequest, context: Context
    ) -> pb.PutRegistryPolicyResponse:
        call = current_call()
        target, record = self._write_target(
            call, request.registry_id, request.region, request.validate_only
        )
        record.policy_sha256 = policy_digest(request.policy_text)
        self._validator.check(request, target)
        self._content.check_policy(target, call.tenant.policy_guardrails, request.policy_text)
        return await self._ops.put_registry_policy(
            target, request.policy_text, request.etag, request.validate_only, record
        )

    async def DeleteRegistryPolicy(
        self, request: pb.DeleteRegistryPolicyRequest, context: Context
    ) -> pb.DeleteRegistryPolicyResponse:
        target, record = self._write_target(
            current_call(), request.registry_id, request.region, request.validate_only
        )
        self._validator.check(request, target)
        return await self._ops.delete_registry_policy(
            target, request.etag, request.validate_only, record
        )

    async def PutReplicationConfiguration(
        self, request: pb.PutReplicationConfigurationRequest, context: Context
    ) -> pb.PutReplicationConfigurationResponse:
        target, record = self._write_target(
            current_call(), request.registry_id, request.region, request.validate_only
        )
        self._validator.check(request, target)
        self._content.check_destinations(target, request.replication_configuration)
        return await self._ops.put_replication_configuration(
            target, request.replication_configuration, request.etag, request.validate_only, record
        )

    # --- tenant-owned slices of a shared registry (service/registry/slices.py) ------------

    async def GetReplicationRules(
        self, request: pb.GetReplicationRulesRequest, context: Context
    ) -> pb.GetReplicationRulesResponse:
        call = current_call()
        target = self._target(call, request.registry_id, request.region)
        self._validator.check(request, target)
        described = await self._ops.describe_registry(
            target, fresh=call.no_cache, on_outcome=call.cache_outcome
        )
        return slices.rules_response(target, slices.Ownership.of(target), described)

    async def PutReplicationRules(
        self, request: pb.PutReplicationRulesRequest, context: Context
    ) -> pb.PutReplicationRulesResponse:
        call = current_call()
        target, record = self._write_target(
            call, request.registry_id, request.region, request.validate_only
        )
        self._validator.check(request, target)
        owner = slices.Ownership.of(target)
        owner.check_rules(target, request.rules)
        # Only the caller's rules: the others' destinations were allowed to them, not to it.
        self._content.check_destinations(
            target, pb.ReplicationConfiguration(rules=request.rules), rpc=call.rpc, field="rules"
        )
        mine = list(request.rules)
        slices.check_rule_share(target, mine)

        def merge(current: pb.DescribeRegistryResponse) -> pb.ReplicationConfiguration:
            # Runs under the registry's lock, on the configuration read fresh from AWS.
            existing = owner.rules_in(current.replication_configuration)
            check_etag(
                request.etag, slices.rules_etag(existing), target, f"the rules of {target.tenant}"
            )
            merged = owner.merge_rules(current.replication_configuration, mine)
            slices.check_registry_rules(target, merged, mine)
            # The caller's rules were validated alone; what fails now is the others' part.
            slices.merged_must_validate(
                target,
                "replication configuration",
                "REPLICATION_NOT_MERGEABLE",
                lambda: self._validator.check(
                    pb.PutReplicationConfigurationRequest(replication_configuration=merged), target
                ),
            )
            return merged

        with slices.aws_refusals_withheld(target):
            update = await self._ops.update_replication(
                target, merge, request.validate_only, record
            )
        return slices.put_rules_response(target, owner, update)

    async def GetPolicyStatements(
        self, request: pb.GetPolicyStatementsRequest, context: Context
    ) -> pb.GetPolicyStatementsResponse:
        call = current_call()
        target = self._target(call, request.registry_id, request.region)
        self._validator.check(request, target)
        try:
            policy = await self._ops.get_registry_policy(
                target, fresh=call.no_cache, on_outcome=call.cache_outcome
            )
            text: str | None = policy.policy_text
        except NotFound:
            text = None  # no policy: an empty slice, not an error
        return slices.statements_response(target, slices.Ownership.of(target), text)

    async def PutPolicyStatements(
        self, request: pb.PutPolicyStatementsRequest, context: Context
    ) -> pb.PutPolicyStatementsResponse:
        call = current_call()
        target, record = self._write_target(
            call, request.registry_id, request.region, request.validate_only
        )
        record.policy_sha256 = policy_digest(request.statements_json)
        self._validator.check(request, target)
        owner = slices.Ownership.of(target)
        mine = slices.parse_statements(request.statements_json)
        slices.check_statement_grammar(target, request.statements_json, len(mine))
        owner.check_statements(target, mine)
        # The caller's statements alone, against its own guardrails: the others' were judged
        # against theirs when they wrote them, and must never decide this write.
        self._content.check_slice_statements(
            target, call.tenant.policy_guardrails, mine, rpc=call.rpc
        )
        slices.check_statement_share(target, mine)

        def merge(current: str | None) -> str | None:
            # Runs under the registry's lock, on the policy read fresh from AWS.
            existing = owner.statements_in(current)
            check_etag(
                request.etag,
                slices.statements_etag(existing),
                target,
                f"the statements of {target.tenant}",
            )
            merged = owner.merge_policy(current, mine)
            if merged is not None:
                # Only what no single statement decides: the size, and the document's validity.
                slices.check_policy_size(target, merged, mine)
                slices.merged_must_validate(
                    target,
                    "registry policy",
                    "POLICY_NOT_MERGEABLE",
                    lambda: self._validator.check(
                        pb.PutRegistryPolicyRequest(policy_text=merged), target
                    ),
                )
            return merged

        with slices.aws_refusals_withheld(target):
            update = await self._ops.update_policy(target, merge, request.validate_only, record)
        return slices.put_statements_response(target, owner, update)
