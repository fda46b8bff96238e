"""The slice RPCs' answers: the caller's slice of a read or a write, and AWS's refusal of a
merged document answered without its text. The ownership model they read the slice with is
service/registry/model/slices.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from service.auth.targets import Target
from service.errors import InvalidArgument
from service.gen.v1 import registry_pb2 as pb
from service.registry.model import plan, slices
from service.registry.writes.operations import PolicyUpdate, ReplicationUpdate

# AWS's and botocore's texts about a request may quote it, and a slice write's request is
# the merged whole: other slices included.
_AWS_REFUSALS = frozenset({"AWS_INVALID_PARAMETER", "AWS_PARAM_VALIDATION"})


@contextmanager
def aws_refusals_withheld(target: Target) -> Iterator[None]:
    """Around a slice write's call to AWS: AWS refusing the merged document answers its
    error code and request id (for the operators), never its text, which could quote
    another slice."""
    try:
        yield
    except InvalidArgument as exc:
        if exc.reason not in _AWS_REFUSALS:
            raise
        raise InvalidArgument(
            f"AWS refused the merged configuration of {slices.where_of(target)} "
            f"({exc.metadata.get('awsErrorCode', 'parameter validation')}); its text is "
            f"withheld from slice writes, as it may quote other tenants' slices; the "
            f"registry's operators can look up awsRequestId",
            reason=exc.reason,
            metadata=exc.metadata,
            etag_read_before=exc.etag_read_before,  # the audit trail's, as the refusal's
        ) from None


def rules_response(
    target: Target, owner: slices.Ownership, described: pb.DescribeRegistryResponse
) -> pb.GetReplicationRulesResponse:
    """GetReplicationRules: the tenant's rules (canonical form), their etag and its use of
    its share."""
    mine = owner.rules_in(described.replication_configuration)
    # Use and limits are the caller's own: its rules against its share. That is what a team
    # can act on (its share is all it may fill), and the other slices' use is not its to see.
    return pb.GetReplicationRulesResponse(
        registry_id=described.registry_id or target.registry_id,
        rules=mine,
        etag=slices.rules_etag(mine),
        rules_used=len(mine),
        rules_limit=target.share.rules,
        unique_destinations_used=len(slices.unique_destinations(mine)),
        unique_destinations_limit=target.share.destinations,
        filters_used=sum(len(rule.repository_filters) for rule in mine),
        filters_limit=target.share.filters,
    )


def put_rules_response(
    target: Target, owner: slices.Ownership, update: ReplicationUpdate
) -> pb.PutReplicationRulesResponse:
    """PutReplicationRules: the slice after the write, or the plan of a validate_only call."""
    if update.after is None:
        current = owner.rules_in(update.before.replication_configuration)
        proposed = owner.rules_in(update.proposed)
        return pb.PutReplicationRulesResponse(
            registry_id=update.before.registry_id or target.registry_id,
            rules=proposed,
            etag=slices.rules_etag(current),
            # The caller's slice only: the others' rules are not its to see, nor its change.
            changes=plan.rule_changes(current, proposed, "rules"),
        )
    mine = owner.rules_in(update.after.replication_configuration)
    return pb.PutReplicationRulesResponse(
        registry_id=update.after.registry_id or target.registry_id,
        rules=mine,
        etag=slices.rules_etag(mine),
    )


def statements_response(
    target: Target, owner: slices.Ownership, policy_text: str | None
) -> pb.GetPolicyStatementsResponse:
    """GetPolicyStatements: the tenant's statements and their etag."""
    mine = owner.statements_in(policy_text)
    return pb.GetPolicyStatementsResponse(
        registry_id=target.registry_id,
        statements_json=json.dumps(mine),
        etag=slices.statements_etag(mine),
    )


def put_statements_response(
    target: Target, owner: slices.Ownership, update: PolicyUpdate
) -> pb.PutPolicyStatementsResponse:
    """PutPolicyStatements: the slice after the write, or the plan of a validate_only call."""
    if not update.done:
        current = owner.statements_in(update.before)
        proposed = owner.statements_in(update.proposed)
        return pb.PutPolicyStatementsResponse(
            registry_id=target.registry_id,
            statements_json=json.dumps(proposed),
            etag=slices.statements_etag(current),
            changes=plan.statement_changes(current, proposed),
        )
    mine = owner.statements_in(update.after)
    return pb.PutPolicyStatementsResponse(
        registry_id=target.registry_id,
        statements_json=json.dumps(mine),
        etag=slices.statements_etag(mine),
    )
