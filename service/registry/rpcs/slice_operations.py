"""The four slice RPCs as the gateway performs them, on RegistryOperations.

Reads answer the caller's slice of what the cache holds (its rules in their canonical
form). A slice write judges the caller's part alone (ownership, its destinations, its
catalog of destination sets or guardrails, its share of ECR's limits), then merges it,
under the registry's lock, into the configuration read fresh from AWS
(`RegistryOperations.update_*`; rules are packed: service/registry/model/packing.py): the
caller's etag is checked against its slice, the merged whole only for what no single part
decides, and AWS's refusal of the merged whole never shows its text. The rules of
ownership and merging are in service/registry/model/slices.py.

A slice write holds when the caller's slice holds (`CallerSlice`, in
service/registry/writes/settlement.py): a change another writer made to someone else's part
between the write and its read-back is answered OK to the caller (its etag is its slice's)
and reported to the operators as drift, never as the caller's overwritten write (which
would also tell it that another part changed).

Like RegistryOperations, these return what happened (`Read`, `WriteResult`): the servicer
records it.

A slice read is served from the registry's one cache entry, which every tenant's write
refreshes (write-through) or forgets (a failed write): whether that entry is fresh, and
since when, follows other tenants' writes. So a slice reader is told a cache outcome its own
request decides (`told_cache_outcome`): `miss` for its `no-cache` reads, `hit` otherwise
(`stale` while AWS is unavailable). Its answer and its etag are its slice's alone, so the
HTTP `ETag` and `304 Not Modified` (service/http/) follow only its own slice too.

A slice write spends its tenant's budget of calls past the cache (`past_the_cache`) only
once its own checks have passed, just before it reaches AWS.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from google.protobuf.message import DecodeError

from service.auth.content import ContentRules
from service.auth.targets import Target
from service.auth.tenancy import Tenancy
from service.config import PolicyGuardrails
from service.errors import InvalidArgument, PermissionDenied
from service.gen.v1 import registry_pb2 as pb
from service.registry.model import slices
from service.registry.rpcs import slice_responses as responses
from service.registry.rpcs.validation import RequestValidator
from service.registry.writes.context import UNATTRIBUTED, WriteContext
from service.registry.writes.handoff import Handed
from service.registry.writes.operations import Read, RegistryOperations, WriteResult, check_etag
from service.registry.writes.settlement import CallerSlice
from service.registry.writes.slice_write import Rejudged
from service.state.cache import CacheKey, Outcome

PUT_RULES = "PutReplicationRules"
PUT_STATEMENTS = "PutPolicyStatements"


def told_cache_outcome(outcome: Outcome | None, fresh: bool) -> Outcome:
    """The `x-cache` a slice reader is told: what its own request decides, never what the
    shared entry's age (reset by every tenant's write, forgotten by a failed one) decides.

    `miss` for a `no-cache` read (it went to AWS because the caller asked); `hit` for any
    other (its answer is at most the cache's TTL old, which is what `hit` promises, whether
    this read loaded the entry or found it); `stale` in both cases when AWS was unavailable
    and the answer is older than that: staleness is the caller's to know."""
    if outcome == "stale":
        return "stale"
    return "miss" if fresh else "hit"


async def _nothing_to_spend() -> None:
    return None


class SliceOperations:
    """GetReplicationRules, PutReplicationRules, GetPolicyStatements, PutPolicyStatements."""

    def __init__(
        self,
        operations: RegistryOperations,
        content: ContentRules,
        validator: RequestValidator,
        *,
        past_the_cache: Callable[[], Awaitable[None]] = _nothing_to_spend,
        tenancy: Callable[[], Tenancy] | None = None,
    ) -> None:
        self._ops = operations
        self._content = content
        self._validator = validator
        # Awaited once a write's own checks have passed, just before it reaches AWS: the
        # caller's upstream budget (service/pipeline/gates.py); it may refuse the write.
        self._past_the_cache = past_the_cache
        # The tenant config current now: what a slice write another replica hands over is
        # judged again with (service/registry/writes/handoff.py). None: none is taken.
        self._tenancy = tenancy
        if tenancy is not None:
            operations.serve_handed(self.rejudge)

    async def get_rules(
        self, target: Target, *, fresh: bool = False
    ) -> Read[pb.GetReplicationRulesResponse]:
        """The caller's rules, their etag and its use of its share."""
        read = await self._ops.describe_registry(target, fresh=fresh)
        owner = slices.Ownership.of(target)
        return Read(responses.rules_response(target, owner, read.answer()), read.cache_outcome)

    async def get_statements(
        self, target: Target, *, fresh: bool = False
    ) -> Read[pb.GetPolicyStatementsResponse]:
        """The caller's statements and their etag; no policy is an empty slice."""
        read = await self._ops.get_registry_policy(target, fresh=fresh)
        text = None if read.value is None else read.value.policy_text
        owner = slices.Ownership.of(target)
        return Read(responses.statements_response(target, owner, text), read.cache_outcome)

    async def put_rules(
        self,
        target: Target,
        rules: Sequence[pb.ReplicationRule],
        etag: str,
        validate_only: bool,
        *,
        context: WriteContext = UNATTRIBUTED,
    ) -> WriteResult[pb.PutReplicationRulesResponse]:
        """Replace the caller's rules, keeping everyone else's in place."""
        judged = self._rules_change(target, rules, etag)
        await self._past_the_cache()
        request = None
        if self._tenancy is not None and not validate_only:
            request = pb.PutReplicationRulesRequest(
                registry_id=target.registry_id, region=target.region, rules=rules, etag=etag
            ).SerializeToString(deterministic=True)
        with responses.aws_refusals_withheld(target):
            update = await self._ops.update_replication(
                target,
                judged.change,
                validate_only,
                caller_slice=judged.caller_slice,
                context=context,
                request=request,
            )
        owner = slices.Ownership.of(target)
        return WriteResult.of(responses.put_rules_response(target, owner, update), update)

    def _rules_change(
        self, target: Target, rules: Sequence[pb.ReplicationRule], etag: str
    ) -> Rejudged[pb.DescribeRegistryResponse, pb.ReplicationConfiguration]:
        """The caller's rules judged alone (ownership, destinations, sets, share), and the
        change that merges them under the lock; raises what the caller is answered."""
        owner = slices.Ownership.of(target)
        owner.check_rules(target, rules)
        # Only the caller's rules: the others' destinations were allowed to them, not to it.
        self._content.check_destinations(
            target, pb.ReplicationConfiguration(rules=rules), rpc=PUT_RULES, field="rules"
        )
        mine = list(rules)
        slices.check_destination_sets(target, mine)
        slices.check_rule_share(target, mine)

        def merge(current: pb.DescribeRegistryResponse) -> pb.ReplicationConfiguration:
            # Runs under the registry's lock, on the configuration read fresh from AWS.
            existing = owner.rules_in(current.replication_configuration)
            check_etag(etag, slices.rules_etag(existing), target, f"the rules of {target.tenant}")
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

        return Rejudged(
            target,
            merge,
            CallerSlice(
                part=lambda whole: pb.ReplicationConfiguration(rules=owner.rules_in(whole)),
                merged=lambda whole, part: owner.merge_rules(whole, list(part.rules)),
                etag=lambda whole: slices.rules_etag(owner.rules_in(whole)),
            ),
        )

    async def put_statements(
        self,
        target: Target,
        guardrails: PolicyGuardrails,
        statements_json: str,
        etag: str,
        validate_only: bool,
        *,
        context: WriteContext = UNATTRIBUTED,
    ) -> WriteResult[pb.PutPolicyStatementsResponse]:
        """Replace the caller's policy statements, keeping everyone else's in place; when
        no statement is left, the policy is deleted. `guardrails`: the caller's own."""
        judged = self._statements_change(target, guardrails, statements_json, etag)
        await self._past_the_cache()
        request = None
        if self._tenancy is not None and not validate_only:
            request = pb.PutPolicyStatementsRequest(
                registry_id=target.registry_id,
                region=target.region,
                statements_json=statements_json,
                etag=etag,
            ).SerializeToString(deterministic=True)
        with responses.aws_refusals_withheld(target):
            update = await self._ops.update_policy(
                target,
                judged.change,
                validate_only,
                caller_slice=judged.caller_slice,
                context=context,
                request=request,
            )
        owner = slices.Ownership.of(target)
        return WriteResult.of(responses.put_statements_response(target, owner, update), update)

    def _statements_change(
        self, target: Target, guardrails: PolicyGuardrails, statements_json: str, etag: str
    ) -> Rejudged[str | None, str | None]:
        """The caller's statements judged alone (grammar, ownership, its own guardrails,
        share), and the change that merges them under the lock."""
        owner = slices.Ownership.of(target)
        mine = slices.parse_statements(statements_json)
        slices.check_statement_grammar(target, statements_json, len(mine))
        owner.check_statements(target, mine)
        # The caller's statements alone, against its own guardrails: the others' were judged
        # against theirs when they wrote them, and must never decide this write.
        self._content.check_slice_statements(target, guardrails, mine, rpc=PUT_STATEMENTS)
        slices.check_statement_share(target, mine)

        def merge(current: str | None) -> str | None:
            # Runs under the registry's lock, on the policy read fresh from AWS.
            existing = owner.statements_in(current)
            check_etag(
                etag, slices.statements_etag(existing), target, f"the statements of {target.tenant}"
            )
            merged = owner.merge_policy(current, mine)
            if merged is not None:
                # Only what no single statement decides: the size. The others' statements are
                # carried as AWS stores them, never judged again (service/registry/model/slices.py).
                slices.check_policy_size(target, merged, mine)
            return merged

        return Rejudged(
            target,
            merge,
            CallerSlice(
                # The caller's statements alone, as a policy (None: it has none).
                part=lambda text: owner.merge_policy(None, owner.statements_in(text)),
                merged=lambda text, part: owner.merge_policy(text, owner.statements_in(part)),
                etag=lambda text: slices.statements_etag(owner.statements_in(text)),
            ),
        )

    # --- slice writes another replica hands over (service/registry/writes/handoff.py) -------

    def rejudge(self, key: CacheKey, handed: Handed) -> Rejudged[Any, Any]:
        """A slice write handed over by another replica, judged again here as if its caller
        had called this replica: its tenant as this replica's config has it (gone, or no
        longer allowed the RPC on this registry: refused), the request validated, the
        caller's part judged alone; its change, to apply in this replica's batch. What the
        caller's replica already did is not done again: the caller's authentication, its
        budgets (rate, upstream), the destination acceptance check, audit. Raises the
        GatewayError its caller is answered; nothing of a refused request is written."""
        assert self._tenancy is not None
        tenancy = self._tenancy()
        tenant = next((t for t in tenancy.config.tenants if t.name == handed.tenant), None)
        if tenant is None:
            raise PermissionDenied(
                f"tenant {handed.tenant[:64]} is not configured on the gateway replica that "
                "applies the write (a configuration reload in progress?); nothing was written",
                reason="TENANT_NOT_CONFIGURED",
            )
        request: pb.PutReplicationRulesRequest | pb.PutPolicyStatementsRequest
        try:
            if handed.rpc == PUT_RULES and key.resource == "registry":
                request = pb.PutReplicationRulesRequest.FromString(handed.body)
            elif handed.rpc == PUT_STATEMENTS and key.resource == "policy":
                request = pb.PutPolicyStatementsRequest.FromString(handed.body)
            else:
                raise DecodeError(handed.rpc[:64])
        except DecodeError:
            raise InvalidArgument(
                "a handed-over write that could not be read; nothing was written",
                reason="HANDOFF_NOT_UNDERSTOOD",
            ) from None
        target = tenancy.authorizer.authorize(
            tenant, handed.rpc, request.registry_id, request.region
        )
        if (target.registry_id, target.region) != (key.registry_id, key.region):
            raise InvalidArgument(
                "a handed-over write for another registry; nothing was written",
                reason="HANDOFF_NOT_UNDERSTOOD",
            )
        self._validator.check(request, target)
        if isinstance(request, pb.PutReplicationRulesRequest):
            return self._rules_change(target, request.rules, request.etag)
        return self._statements_change(
            target, tenant.policy_guardrails, request.statements_json, request.etag
        )
