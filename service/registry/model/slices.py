"""Tenant-owned slices of a shared registry: who owns which rule or statement, and merging.

A registry has one replication configuration and one policy; several teams sharing it would
overwrite each other's parts. Each tenant's registry entry names what it owns:

- a repository filter is the tenant's when it starts with one of its
  `owned_repository_prefixes` (config loading refuses overlapping prefixes of two tenants,
  service/config/tenancy_checks.py, so ownership is never ambiguous). A tenant's rules are
  its filters and where each goes: read back in one canonical form (`rules_in`: one rule per
  destination set, filters sorted, split every 100), whatever rules of the registry hold
  them. A rule without filters applies to every repository, so it belongs to nobody: only a
  full PutReplicationConfiguration changes it;
- a policy statement is the tenant's when its `Sid` starts with `owned_statement_sid_prefix`.

A replication slice write replaces the caller's filters and packs the whole configuration
(service/registry/model/packing.py): every filter keeps exactly its destinations (the union
of the rules naming it), rules are one per destination set, so hundreds of slices fit ECR's
10 rules, and the document depends only on what the slices ask, never on the order of the
writes. A slice etag is of the canonical form, so another tenant's write, which repacks the
rules, never moves it. A statement slice write replaces the caller's statements and keeps
every other one in order, the caller's new ones standing where its old ones stood (appended
when it had none). Merges run inside `RegistryOperations.update_*`, on the document read
fresh under the registry's write lock, so two tenants writing at once both keep their parts.

Isolation: one tenant's part never decides another's write, nor shows in its answers.
The caller's rules and statements are judged alone (grammar, ownership, confinement to its
repositories, its guardrails, its share of ECR's limits in service/ecr/limits.py) before
the merge; the merged whole is judged only for what no single part decides (ECR's own
limits; for rules, the configuration's validity), and a failure there names counts, never
content. Plans and responses show the caller's slice only.

This module is the pure model (no I/O; it imports nothing of writes/ nor rpcs/): the
drift detector reads ownership from it, the slice RPCs build on it.

Other tenants' statements are carried as AWS stores them and never judged again by the
gateway's grammar: AWS rewrites what it stores (a deleted role's ARN becomes its unique id,
`AROA...`), and a rule the owner can no longer meet must not lock everyone else out. AWS,
which took them, judges the merged document; its refusal is answered without its text
(service/registry/rpcs/slice_responses.py, with the slice RPCs' answers).
A share counts a tenant's statements as AWS will store them (account ids as root ARNs,
service/ecr/policy_grammar.py's `stored_form`): that form, not what was sent, is what
every later merge carries, so counting the request would let one slice grow into another's.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import botocore.exceptions
import botocore.session

from service.auth.targets import Target, denied
from service.ecr import convert, etags, policy_grammar
from service.ecr.limits import (
    MAX_FILTERS_PER_RULE,
    MAX_POLICY_CHARS,
    MAX_RULES,
    MAX_UNIQUE_DESTINATIONS,
    RegistrySlice,
    statement_chars,
)
from service.errors import (
    INVALID_REQUEST,
    MAX_VIOLATIONS,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    QuotaViolation,
    ResourceExhausted,
)
from service.gen.v1 import registry_pb2 as pb
from service.registry.model import packing

# A registry without a policy gets this Version when a tenant adds the first statement.
POLICY_VERSION = "2012-10-17"


@dataclass(frozen=True)
class Ownership:
    """What one tenant owns of one registry, from its registry entry."""

    tenant: str
    repository_prefixes: tuple[str, ...]
    sid_prefix: str | None

    @classmethod
    def of(cls, target: Target) -> Ownership:
        """The ownership the target's registry entry configures."""
        return cls(
            target.tenant,
            target.registry.owned_repository_prefixes,
            target.registry.owned_statement_sid_prefix,
        )

    # --- replication rules ---------------------------------------------------------------

    def owns_filter(self, value: str) -> bool:
        """Whether a repository filter lies inside one of the owned prefixes."""
        return any(value.startswith(prefix) for prefix in self.repository_prefixes)

    def owns_rule(self, rule: pb.ReplicationRule) -> bool:
        """Whether the tenant holds a part of the rule: one of its filters (a packed rule
        holds the filters of every slice that replicates to its destinations)."""
        return any(self.owns_filter(f.filter) for f in rule.repository_filters)

    def rules_in(self, configuration: pb.ReplicationConfiguration) -> list[pb.ReplicationRule]:
        """The tenant's rules of a configuration, in their canonical form: what its filters
        ask (each filter's destinations: the union of the rules naming it), one rule per
        destination set, split every 100 filters, sorted (service/registry/model/packing.py).
        The same whatever rules hold them, so repacking never changes a tenant's slice."""
        meaning = packing.filter_destinations(configuration.rules)
        return packing.grouped({k: v for k, v in meaning.items() if self.owns_filter(k[0])})

    def check_rules(self, target: Target, rules: Sequence[pb.ReplicationRule]) -> None:
        """PermissionDenied naming the first new rule the tenant could not own."""
        for i, rule in enumerate(rules):
            if not rule.repository_filters:
                raise denied(
                    target,
                    "PutReplicationRules",
                    "RULE_WITHOUT_FILTER",
                    f"rules[{i}]: a rule without repository filters applies to every "
                    f"repository and belongs to no tenant; only PutReplicationConfiguration "
                    f"may set it",
                    f"rules[{i}].repository_filters",
                )
            for j, repository_filter in enumerate(rule.repository_filters):
                if not self.owns_filter(repository_filter.filter):
                    owned = ", ".join(self.repository_prefixes) or "none"
                    raise denied(
                        target,
                        "PutReplicationRules",
                        "RULE_NOT_OWNED",
                        f"rules[{i}].repository_filters[{j}]: filter "
                        f"{repository_filter.filter[:120]!r} is outside the repository "
                        f"prefixes tenant {self.tenant} owns ({owned})",
                        f"rules[{i}].repository_filters[{j}].filter",
                    )

    def merge_rules(
        self, current: pb.ReplicationConfiguration, mine: Sequence[pb.ReplicationRule]
    ) -> pb.ReplicationConfiguration:
        """`current` with the tenant's filters replaced by those of `mine`, packed: every
        other filter keeps exactly its destinations, rules without filters are carried."""
        return packing.pack(current, lambda key: self.owns_filter(key[0]), mine)

    # --- policy statements ---------------------------------------------------------------

    def owns_statement(self, statement: Any) -> bool:
        """A statement whose Sid starts with the owned Sid prefix."""
        if not self.sid_prefix or not isinstance(statement, dict):
            return False
        sid = statement.get("Sid")
        return isinstance(sid, str) and sid.startswith(self.sid_prefix)

    def statements_in(self, policy_text: str | None) -> list[Any]:
        """The tenant's statements of a policy (None: no policy), in order."""
        return [s for s in _statements(policy_text) if self.owns_statement(s)]

    def check_statements(self, target: Target, statements: Sequence[Any]) -> None:
        """PermissionDenied naming the first new statement the tenant could not own."""
        for i, statement in enumerate(statements):
            if not self.owns_statement(statement):
                sid = statement.get("Sid") if isinstance(statement, dict) else None
                owned = f"'{self.sid_prefix}'" if self.sid_prefix else "none"
                raise denied(
                    target,
                    "PutPolicyStatements",
                    "STATEMENT_NOT_OWNED",
                    f"statements_json[{i}]: Sid {str(sid)[:120]!r} does not start with the "
                    f"statement Sid prefix tenant {self.tenant} owns ({owned})",
                    f"statements_json[{i}].Sid",
                )

    def merge_policy(self, current: str | None, mine: Sequence[Any]) -> str | None:
        """`current` with the tenant's statements replaced by `mine`; None when none is left."""
        document = _document(current)
        merged: list[Any] = []
        placed = False
        for statement in _statements(current):
            if not self.owns_statement(statement):
                merged.append(statement)
            elif not placed:
                merged.extend(mine)
                placed = True
        if not placed:
            merged.extend(mine)
        if not merged:
            return None  # an empty policy is no policy: DeleteRegistryPolicy
        document["Statement"] = merged
        return json.dumps(document, separators=(",", ":"))


def parse_statements(statements_json: str) -> list[Any]:
    """The statements of a validated `statements_json` (a JSON array)."""
    statements = json.loads(statements_json)
    assert isinstance(statements, list)  # RequestValidator checked it
    return statements


def rules_etag(rules: Sequence[pb.ReplicationRule]) -> str:
    """The etag of a slice of rules: a digest of their AWS JSON."""
    aws = convert.replication_to_aws(pb.ReplicationConfiguration(rules=rules))
    return etags.of_json(aws["rules"])


def statements_etag(statements: Sequence[Any]) -> str:
    """The etag of a slice of statements: a digest of their JSON."""
    return etags.of_json(list(statements))


def unique_destinations(rules: Sequence[pb.ReplicationRule]) -> set[tuple[str, str]]:
    """The (registry, region) pairs the rules replicate to."""
    return {(d.registry_id, d.region) for rule in rules for d in rule.destinations}


def where_of(target: Target) -> str:
    """How messages name the target's registry."""
    return f"registry {target.registry_id} in {target.region}"


def _quota_error(
    target: Target, reason: str, message: str, violations: list[QuotaViolation]
) -> FailedPrecondition:
    return FailedPrecondition(
        message,
        reason=reason,
        metadata=_where_metadata(target),
        quota_violations=violations,
    )


def _where_metadata(target: Target) -> dict[str, str]:
    return {"tenant": target.tenant, "registryId": target.registry_id, "region": target.region}


def check_destination_sets(target: Target, mine: Sequence[pb.ReplicationRule]) -> None:
    """PermissionDenied naming the first rule whose filter would replicate to a destination
    set outside the catalog of the caller's registry entry (`destination_sets`), if it has
    one. A filter's set is the union of the caller's rules naming it (what it asks)."""
    catalog = target.share.destination_sets
    if catalog is None:
        return
    for key, targets in packing.filter_destinations(mine).items():
        if targets in catalog:
            continue
        i = next(
            i
            for i, rule in enumerate(mine)
            if any((f.filter, f.filter_type) == key for f in rule.repository_filters)
        )
        shown = ", ".join(f"{region} of {registry}" for registry, region in sorted(targets))
        raise denied(
            target,
            "PutReplicationRules",
            "DESTINATION_SET_NOT_IN_CATALOG",
            f"rules[{i}]: filter {key[0][:120]!r} would replicate to {{{shown or 'nowhere'}}} "
            f"(the destinations of every rule naming it), which is not one of the "
            f"{len(catalog)} destination sets of the catalog of tenant {target.tenant} on "
            f"{where_of(target)} (its destination_sets)",
            f"rules[{i}].destinations",
        )


def check_rule_share(target: Target, mine: Sequence[pb.ReplicationRule]) -> None:
    """ResourceExhausted with a QuotaFailure when the caller's rules pass its own share:
    its canonical rules, its filters, its unique destinations (service/ecr/limits.py).

    Judged on the caller's rules alone, so what other slices hold never decides it.
    """
    share, where = target.share, where_of(target)
    canonical = packing.canonical(mine)
    violations: list[QuotaViolation] = []
    if len(canonical) > share.rules:
        violations.append(
            QuotaViolation(
                f"tenant {target.tenant} on {where}: replication rules",
                f"the share of tenant {target.tenant} is {share.rules} of the {MAX_RULES} "
                f"rules of the registry; its rules would number {len(canonical)} in their "
                f"canonical form (one per destination set, split every "
                f"{MAX_FILTERS_PER_RULE} filters)",
            )
        )
    filters = sum(len(rule.repository_filters) for rule in canonical)
    if filters > share.filters:
        violations.append(
            QuotaViolation(
                f"tenant {target.tenant} on {where}: repository filters",
                f"the share of tenant {target.tenant} is {share.filters} repository filters "
                f"of the registry's replication rules; its rules would hold {filters}",
            )
        )
    own = unique_destinations(mine)
    if len(own) > share.destinations:
        violations.append(
            QuotaViolation(
                f"tenant {target.tenant} on {where}: unique replication destinations",
                f"the share of tenant {target.tenant} is {share.destinations} of the "
                f"{MAX_UNIQUE_DESTINATIONS} unique destinations of the registry; its rules "
                f"would name {len(own)}",
            )
        )
    if violations:
        raise ResourceExhausted(
            f"the replication rules of tenant {target.tenant} would pass its share of "
            f"{where}: {violations[0].description}",
            reason="REPLICATION_QUOTA_EXCEEDED",
            metadata=_where_metadata(target),
            quota_violations=violations,
        )


@dataclass(frozen=True)
class SliceUse:
    """What one tenant's slice holds of a configuration, against its share."""

    tenant: str
    rules: int  # canonical rules
    filters: int
    destinations: int  # unique destinations
    share: RegistrySlice

    @property
    def over(self) -> bool:
        """Whether the slice holds more than its share allows."""
        return (
            self.rules > self.share.rules
            or self.filters > self.share.filters
            or self.destinations > self.share.destinations
        )


@dataclass(frozen=True)
class Census:
    """Who holds what of a registry's replication configuration: the slices over their
    shares, and what lies outside every slice (rules without filters, filters no tenant
    owns, in their canonical rules). The shares are a guarantee only while both are empty."""

    over_share: tuple[SliceUse, ...]
    rules_outside: int
    filters_outside: int


def census(
    configuration: pb.ReplicationConfiguration, registry_slices: Sequence[RegistrySlice]
) -> Census:
    """The census of a configuration against the slices the config gives its registry."""
    over: list[SliceUse] = []
    owners = [Ownership(s.tenant, s.repository_prefixes, None) for s in registry_slices]
    for owner, share in zip(owners, registry_slices, strict=True):
        rules = owner.rules_in(configuration)
        use = SliceUse(
            share.tenant,
            len(rules),
            sum(len(rule.repository_filters) for rule in rules),
            len(unique_destinations(rules)),
            share,
        )
        if use.over:
            over.append(use)
    meaning = packing.filter_destinations(configuration.rules)
    outside = {k: v for k, v in meaning.items() if not any(o.owns_filter(k[0]) for o in owners)}
    unfiltered = sum(1 for rule in configuration.rules if not rule.repository_filters)
    return Census(tuple(over), len(packing.grouped(outside)) + unfiltered, len(outside))


def check_registry_rules(
    target: Target, merged: pb.ReplicationConfiguration, mine: Sequence[pb.ReplicationRule]
) -> None:
    """The backstop: FailedPrecondition with a QuotaFailure when the packed merge passes
    ECR's own limits although the caller keeps to its share. Shares that fit the config
    check cannot get here while every slice keeps to its share: slices a reload left over
    their new, smaller shares (`SLICES_OVER_SHARE`), or rules and filters no slice owns
    (written by a full PutReplicationConfiguration, `REPLICATION_QUOTA_EXCEEDED`) can. Only
    counts are said: who and what fills the rest of the registry is not the caller's to see.
    """
    where = where_of(target)
    own_rules = len(packing.canonical(mine))
    violations: list[QuotaViolation] = []
    if len(merged.rules) > MAX_RULES:
        violations.append(
            QuotaViolation(
                f"{where}: replication rules",
                f"at most {MAX_RULES} rules per registry; the packed merge would hold "
                f"{len(merged.rules)}, with tenant {target.tenant} holding {own_rules} "
                f"canonical rule(s) (within its share of {target.share.rules})",
            )
        )
    used = unique_destinations(merged.rules)
    if len(used) > MAX_UNIQUE_DESTINATIONS:
        violations.append(
            QuotaViolation(
                f"{where}: unique replication destinations",
                f"at most {MAX_UNIQUE_DESTINATIONS} unique destinations across all rules; the "
                f"merge would name {len(used)}, {len(unique_destinations(mine))} of them in the "
                f"rules of tenant {target.tenant} (within its share of "
                f"{target.share.destinations})",
            )
        )
    if violations:
        found = census(merged, target.share.registry_slices)
        # The caller keeps to its share (checked before the merge): never counted over.
        over = [use for use in found.over_share if use.tenant != target.tenant]
        outside = (
            f"{found.rules_outside} rule(s) holding {found.filters_outside} filter(s) are "
            f"outside every slice"
        )
        if over:
            raise _quota_error(
                target,
                "SLICES_OVER_SHARE",
                f"{where} has no room for the rules of tenant {target.tenant}, although they "
                f"keep to its share: {violations[0].description}; {len(over)} other slice(s) "
                f"hold more than their shares after a config change (together "
                f"{sum(u.rules for u in over)} canonical rule(s) for shares of "
                f"{sum(u.share.rules for u in over)}); {outside}; the registry's operators "
                f"are alerted (registry_gateway_slice_over_share), ask them",
                violations,
            )
        raise _quota_error(
            target,
            "REPLICATION_QUOTA_EXCEEDED",
            f"{where} has no room for the rules of tenant {target.tenant}, although they keep "
            f"to its share: {violations[0].description}; {outside}, ask the registry's "
            f"administrators",
            violations,
        )


def stored_chars(target: Target, statements: Sequence[Any]) -> int:
    """The characters `statements` take in the registry's policy once AWS has stored them
    (service/ecr/policy_grammar.py's `stored_form`: account ids as root ARNs), as compact
    JSON with one comma each: what every later merge carries of them."""
    partition = _partition(target.region)
    return statement_chars([policy_grammar.stored_form(s, partition) for s in statements])


@functools.cache
def _partition(region: str) -> str:
    # The partition of the region's ARNs (aws, aws-cn, aws-us-gov: the root ARN's length
    # depends on it); a region botocore does not know (a private partition) gets "aws", as
    # service/auth/content.py names repositories.
    try:
        partition: str = botocore.session.get_session().get_partition_for_region(region)
    except botocore.exceptions.BotoCoreError:  # UnknownRegionError
        return "aws"
    return partition


def check_statement_share(target: Target, mine: Sequence[Any]) -> None:
    """FailedPrecondition with a QuotaFailure when the caller's statements, as AWS will store
    them, pass its share of the policy's characters (judged on its statements alone)."""
    chars, share, where = stored_chars(target, mine), target.share.policy_chars, where_of(target)
    if chars <= share:
        return
    sent = statement_chars(mine)
    violation = QuotaViolation(
        f"tenant {target.tenant} on {where}: registry policy characters",
        f"the share of tenant {target.tenant} is {share} of the {MAX_POLICY_CHARS} characters "
        f"of the registry policy; its statements would take {chars} as AWS stores them "
        f"(compact JSON, one comma each, account ids as root ARNs"
        + (f"; {sent} as sent" if sent != chars else "")
        + ")",
    )
    raise _quota_error(
        target,
        "POLICY_QUOTA_EXCEEDED",
        f"the statements of tenant {target.tenant} would pass its share of {where}: "
        f"{violation.description}",
        [violation],
    )


def check_policy_size(target: Target, merged: str, mine: Sequence[Any]) -> None:
    """The backstop: FailedPrecondition with a QuotaFailure when the merged policy passes
    ECR's 10,240 characters although the caller keeps to its share; counts only."""
    if len(merged) <= MAX_POLICY_CHARS:
        return
    where = where_of(target)
    violation = QuotaViolation(
        f"{where}: registry policy characters",
        f"at most {MAX_POLICY_CHARS} characters per registry policy; the merged policy would "
        f"hold {len(merged)}, {statement_chars(mine)} of them for the statements of tenant "
        f"{target.tenant} ({stored_chars(target, mine)} as AWS stores them, within its share "
        f"of {target.share.policy_chars})",
    )
    raise _quota_error(
        target,
        "POLICY_QUOTA_EXCEEDED",
        f"the registry policy of {where} has no room for the statements of tenant "
        f"{target.tenant}, although they keep to its share: {violation.description}; the "
        f"rest fills it (statements outside the slices, or a slice holding more than its "
        f"share, written outside the gateway), ask the registry's administrators",
        [violation],
    )


def check_statement_grammar(target: Target, statements_json: str, count: int) -> None:
    """InvalidArgument listing how the caller's statements break the policy grammar (under
    the registry's policy scope), with paths into `statements_json`.

    Checked on the caller's statements alone, before the merge; the others' statements are
    never judged again (carried as AWS stores them), the merged document only for its size.
    """
    if not count:
        return  # "[]": nothing to judge (a policy of no statements is no policy)
    # The text as sent, inside a policy: the strict reading (duplicate keys) sees the bytes.
    text = f'{{"Version":"{POLICY_VERSION}","Statement":{statements_json}}}'
    # `auto` (ECR's setting, known only to the validator): V2 here; under a V1 that ECR
    # answered, the request's validation judges the same statements under V1
    # (service/registry/rpcs/validation.py, service/aws/account_settings.py).
    scope: policy_grammar.PolicyScope = "V1" if target.registry.policy_scope == "V1" else "V2"
    found = policy_grammar.check_policy(text, scope, "statements_json")
    if not found:
        return
    violations = [
        FieldViolation(
            v.field.replace("statements_json.Statement", "statements_json", 1), v.description
        )
        for v in found
    ]
    first = violations[0]
    more = len(violations) - 1
    summary = f"{first.field}: {first.description}"
    if more:
        summary += f"; and {more} more problem{'s' if more != 1 else ''}"
    raise InvalidArgument(
        f"invalid PutPolicyStatements request: {summary}",
        reason=INVALID_REQUEST,
        metadata={"rpc": "PutPolicyStatements", "violations": str(len(violations))},
        field_violations=violations[:MAX_VIOLATIONS],
    )


def merged_must_validate(target: Target, what: str, reason: str, check: Callable[[], None]) -> None:
    """Run `check` (the validation of a merged document); its failure, which the caller's
    own part cannot cause (checked alone before), is FailedPrecondition naming only how
    many problems there are: the others' content is not the caller's to see."""
    try:
        check()
    except InvalidArgument as exc:
        count = exc.metadata.get("violations", str(len(exc.field_violations) or 1))
        raise FailedPrecondition(
            f"the {what} of {where_of(target)} breaks {count} validation rule(s) outside the "
            f"slice of tenant {target.tenant}; it cannot be merged into until the registry's "
            f"administrators repair it",
            reason=reason,
            metadata={
                "tenant": target.tenant,
                "registryId": target.registry_id,
                "region": target.region,
                "violations": count,
            },
        ) from None


def _document(policy_text: str | None) -> dict[str, Any]:
    if policy_text is None:
        return {"Version": POLICY_VERSION}
    try:
        document = json.loads(policy_text)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        # Merging into what cannot be read would drop it; an admin has to repair it first.
        raise FailedPrecondition(
            "the registry's current policy is not a JSON object; it cannot be merged into",
            reason="POLICY_NOT_MERGEABLE",
        )
    return document


def _statements(policy_text: str | None) -> list[Any]:
    if policy_text is None:
        return []
    statements = _document(policy_text).get("Statement", [])
    return [statements] if isinstance(statements, dict) else list(statements or [])
