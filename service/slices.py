"""Tenant-owned slices of a shared registry: who owns which rule or statement, and merging.

A registry has one replication configuration and one policy; several teams sharing it would
overwrite each other's parts. Each tenant's registry entry names what it owns:

- a replication rule is the tenant's when it has at least one repository filter and every
  filter starts with one of its `owned_repository_prefixes`. A rule without filters applies
  to every repository, so it belongs to nobody: only a full PutReplicationConfiguration
  changes it;
- a policy statement is the tenant's when its `Sid` starts with `owned_statement_sid_prefix`.

A slice write replaces the caller's part and keeps every other one in order, the caller's
new part standing where its old one stood (appended when it had none). The merge runs
inside `RegistryOperations.update_*`, on the configuration read fresh under the registry's
write lock, so two tenants writing at once both keep their parts. Config loading refuses
overlapping prefixes of two tenants (service/config.py), so ownership is never ambiguous.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ecr.registry.v1 import registry_pb2 as pb

from service import convert, etags, plan
from service.auth.targets import Target, denied
from service.errors import FailedPrecondition, QuotaViolation
from service.operations import PolicyUpdate, ReplicationUpdate
from service.validation import MAX_UNIQUE_DESTINATIONS

# ECR quota: "a maximum of 10 rules" per replication configuration (the model's list max).
MAX_RULES = 10
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
        """At least one filter, and every filter inside the owned prefixes."""
        filters = rule.repository_filters
        return bool(filters) and all(self.owns_filter(f.filter) for f in filters)

    def rules_in(self, configuration: pb.ReplicationConfiguration) -> list[pb.ReplicationRule]:
        """The tenant's rules of a configuration, in order."""
        return [rule for rule in configuration.rules if self.owns_rule(rule)]

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
        """`current` with the tenant's rules replaced by `mine`, everything else in order."""
        merged = pb.ReplicationConfiguration()
        placed = False
        for rule in current.rules:
            if not self.owns_rule(rule):
                merged.rules.append(rule)
            elif not placed:
                # Where the old slice began, so a team's rules keep their place in the list.
                merged.rules.extend(mine)
                placed = True
        if not placed:
            merged.rules.extend(mine)
        return merged

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


def check_quotas(
    target: Target,
    owner: Ownership,
    merged: pb.ReplicationConfiguration,
    mine: Sequence[pb.ReplicationRule],
) -> None:
    """FailedPrecondition with a QuotaFailure when the merge passes ECR's shared limits.

    Each violation names the limit, the registry's use without the caller and the caller's
    share, so a team sees whether to shrink its slice or to talk to the others.
    """
    where = f"registry {target.registry_id} in {target.region}"
    others = [rule for rule in merged.rules if not owner.owns_rule(rule)]
    violations: list[QuotaViolation] = []
    if len(merged.rules) > MAX_RULES:
        violations.append(
            QuotaViolation(
                f"{where}: replication rules",
                f"at most {MAX_RULES} rules per registry; the merge would hold "
                f"{len(merged.rules)}: {len(others)} used by others, {len(mine)} of tenant "
                f"{owner.tenant}",
            )
        )
    used = unique_destinations(merged.rules)
    if len(used) > MAX_UNIQUE_DESTINATIONS:
        theirs = unique_destinations(others)
        own = unique_destinations(mine)
        violations.append(
            QuotaViolation(
                f"{where}: unique replication destinations",
                f"at most {MAX_UNIQUE_DESTINATIONS} unique destinations across all rules; the "
                f"merge would name {len(used)}: {len(theirs)} used by others, {len(own)} by "
                f"tenant {owner.tenant} ({len(own - theirs)} of them not used by others)",
            )
        )
    if violations:
        raise FailedPrecondition(
            f"the replication rules of tenant {owner.tenant} would pass a shared limit of "
            f"{where}: {violations[0].description}",
            reason="REPLICATION_QUOTA_EXCEEDED",
            metadata={
                "tenant": owner.tenant,
                "registryId": target.registry_id,
                "region": target.region,
            },
            quota_violations=violations,
        )


# --- responses -----------------------------------------------------------------------------


def rules_response(
    target: Target, owner: Ownership, described: pb.DescribeRegistryResponse
) -> pb.GetReplicationRulesResponse:
    """GetReplicationRules: the tenant's rules, their etag and the shared limits' use."""
    configuration = described.replication_configuration
    mine = owner.rules_in(configuration)
    return pb.GetReplicationRulesResponse(
        registry_id=described.registry_id or target.registry_id,
        rules=mine,
        etag=rules_etag(mine),
        rules_used=len(configuration.rules),
        rules_limit=MAX_RULES,
        unique_destinations_used=len(unique_destinations(configuration.rules)),
        unique_destinations_limit=MAX_UNIQUE_DESTINATIONS,
    )


def put_rules_response(
    target: Target, owner: Ownership, update: ReplicationUpdate
) -> pb.PutReplicationRulesResponse:
    """PutReplicationRules: the slice after the write, or the plan of a validate_only call."""
    if update.after is None:
        return pb.PutReplicationRulesResponse(
            registry_id=update.before.registry_id or target.registry_id,
            rules=owner.rules_in(update.proposed),
            etag=rules_etag(owner.rules_in(update.before.replication_configuration)),
            changes=plan.replication_changes(
                update.before.replication_configuration, update.proposed
            ),
        )
    mine = owner.rules_in(update.after.replication_configuration)
    return pb.PutReplicationRulesResponse(
        registry_id=update.after.registry_id or target.registry_id,
        rules=mine,
        etag=rules_etag(mine),
    )


def statements_response(
    target: Target, owner: Ownership, policy_text: str | None
) -> pb.GetPolicyStatementsResponse:
    """GetPolicyStatements: the tenant's statements and their etag."""
    mine = owner.statements_in(policy_text)
    return pb.GetPolicyStatementsResponse(
        registry_id=target.registry_id, statements_json=json.dumps(mine), etag=statements_etag(mine)
    )


def put_statements_response(
    target: Target, owner: Ownership, update: PolicyUpdate
) -> pb.PutPolicyStatementsResponse:
    """PutPolicyStatements: the slice after the write, or the plan of a validate_only call."""
    if not update.done:
        return pb.PutPolicyStatementsResponse(
            registry_id=target.registry_id,
            statements_json=json.dumps(owner.statements_in(update.proposed)),
            etag=statements_etag(owner.statements_in(update.before)),
            changes=plan.policy_changes(update.before, update.proposed),
        )
    mine = owner.statements_in(update.after)
    return pb.PutPolicyStatementsResponse(
        registry_id=target.registry_id, statements_json=json.dumps(mine), etag=statements_etag(mine)
    )


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
