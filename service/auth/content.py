"""Content rules: what a tenant may write, beyond where it may write.

Checked after validation and before anything reaches AWS: replication destinations must
be on the registry entry's allow-list, and registry policies must keep to the tenant's
guardrails (no wildcard principal unless allowed; principals only from listed accounts).
A tenant's slice statements (PutPolicyStatements) must besides act only on its own
repositories: every Resource under an owned repository prefix, and no NotPrincipal,
NotResource or NotAction.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import botocore.exceptions
import botocore.session

from service.auth.targets import Target, denied
from service.config import PolicyGuardrails
from service.errors import FieldViolation, InvalidArgument
from service.gen.v1 import registry_pb2 as pb

# An AWS principal names its account either bare or inside an IAM/STS ARN.
_ACCOUNT_IN_PRINCIPAL = re.compile(r"^(?:arn:aws[a-z-]*:(?:iam|sts)::)?([0-9]{12})(?::|$)")
# IAM's wildcards in a Resource: `*` any run of characters, `?` any one character.
_WILDCARD = re.compile(r"[*?]")
# Elements that apply to everything but what they name: never confined to a slice.
_NEGATED = ("NotPrincipal", "NotResource", "NotAction")


class ContentRules:
    """The tenant's allow-list and guardrails, applied to a write's content."""

    def check_destinations(
        self,
        target: Target,
        configuration: pb.ReplicationConfiguration,
        *,
        rpc: str = "PutReplicationConfiguration",
        field: str = "replication_configuration.rules",
    ) -> None:
        """PermissionDenied naming the first destination outside the registry's allow-list.

        `rpc` and `field` (the path of the rules in the request) name what the caller sent.
        """
        allowed = {
            (d.registry_id, region)
            for d in target.registry.replication_destinations
            for region in d.regions
        }
        for i, rule in enumerate(configuration.rules):
            for j, destination in enumerate(rule.destinations):
                if (destination.registry_id, destination.region) not in allowed:
                    path = f"{field}[{i}].destinations[{j}]"
                    raise denied(
                        target,
                        rpc,
                        "DESTINATION_NOT_ALLOWED",
                        f"{path}: tenant {target.tenant} may not replicate to registry "
                        f"{destination.registry_id} in {destination.region}",
                        path,
                    )

    def check_policy(
        self,
        target: Target,
        guardrails: PolicyGuardrails,
        policy_text: str,
        *,
        rpc: str = "PutRegistryPolicy",
    ) -> None:
        """PermissionDenied when the policy grants what the tenant's guardrails forbid."""
        statements = _statements(policy_text)
        _check_grants(target, guardrails, statements, rpc, "policy_text.Statement")

    def check_slice_statements(
        self,
        target: Target,
        guardrails: PolicyGuardrails,
        statements: Sequence[Any],
        *,
        rpc: str = "PutPolicyStatements",
    ) -> None:
        """PermissionDenied when a tenant's own slice statements reach past its repositories
        or grant what its guardrails forbid.

        Only the caller's statements are judged, against its own guardrails: the others'
        statements were judged against theirs when they wrote them.
        """
        arns = owned_repository_arns(target)
        for i, statement in enumerate(statements):
            if isinstance(statement, dict):
                _confine(target, statement, arns, rpc, f"statements_json[{i}]")
        _check_grants(target, guardrails, statements, rpc, "statements_json")


def owned_repository_arns(target: Target) -> tuple[str, ...]:
    """The ARN prefixes of the repositories the target's slice owns, in its registry."""
    partition = _partition(target.region)
    return tuple(
        f"arn:{partition}:ecr:{target.region}:{target.registry_id}:repository/{prefix}"
        for prefix in target.registry.owned_repository_prefixes
    )


def resource_inside(resource: str, arns: Sequence[str]) -> bool:
    """Whether every ARN `resource` can match lies under one of `arns`.

    IAM matches `*` (any run of characters) and `?` (any one character) anywhere in a
    Resource, so only the literal text before the first of them is certain; it must hold a
    whole owned prefix ("repository/payments*" also matches "repository/paymentsx").
    Owned prefixes hold no wildcard, so one inside the prefix already fails the comparison;
    cutting there keeps the rule what it says whatever the prefix grammar becomes.
    """
    literal = _WILDCARD.split(resource, maxsplit=1)[0]
    return any(literal.startswith(arn) for arn in arns)


def _confine(
    target: Target, statement: dict[str, Any], arns: Sequence[str], rpc: str, path: str
) -> None:
    for key in _NEGATED:
        if key in statement:
            # "Everyone / everything but ..." reaches past the slice whatever it names.
            raise denied(
                target,
                rpc,
                "NEGATED_ELEMENT_NOT_ALLOWED",
                f"{path}.{key}: a slice statement may not use {key}: it applies to all "
                f"but what it names, beyond the repositories tenant {target.tenant} owns; "
                f"name them with {key.removeprefix('Not')}",
                f"{path}.{key}",
            )
    value = statement.get("Resource")
    items: list[tuple[str, Any]] = (
        [(f"{path}.Resource", value)]
        if not isinstance(value, list)
        else [(f"{path}.Resource[{j}]", item) for j, item in enumerate(value)]
    )
    if value is None or not items:
        items = [(f"{path}.Resource", "")]
    for here, item in items:
        if isinstance(item, str) and resource_inside(item, arns):
            continue
        shown = repr(item[:120]) if isinstance(item, str) else "a non-string"
        owned = ", ".join(f"{arn}*" for arn in arns[:3]) + (", ..." if len(arns) > 3 else "")
        raise denied(
            target,
            rpc,
            "RESOURCE_NOT_OWNED",
            f"{here}: {shown} may reach repositories outside those tenant {target.tenant} "
            f"owns; a slice statement's every Resource must lie under {owned or 'none'}",
            here,
        )


def _check_grants(
    target: Target,
    guardrails: PolicyGuardrails,
    statements: Sequence[Any],
    rpc: str,
    field: str,
) -> None:
    for i, statement in enumerate(statements):
        if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
            continue  # a Deny narrows access; only grants are guarded
        path = f"{field}[{i}]"
        if "NotPrincipal" in statement:
            # Allow + NotPrincipal grants everyone but a few: as wide as a wildcard.
            if not guardrails.allow_wildcard_principal:
                raise denied(
                    target,
                    rpc,
                    "WILDCARD_PRINCIPAL",
                    f"{path}: Allow with NotPrincipal grants nearly everyone; "
                    f"tenant {target.tenant} may not grant a wildcard principal",
                    path,
                )
            continue
        for principal in _principals(statement.get("Principal")):
            if "*" in principal:
                if guardrails.allow_wildcard_principal:
                    continue
                raise denied(
                    target,
                    rpc,
                    "WILDCARD_PRINCIPAL",
                    f"{path}: tenant {target.tenant} may not grant a wildcard principal",
                    path,
                )
            if guardrails.principal_accounts is None:
                continue
            match = _ACCOUNT_IN_PRINCIPAL.match(principal)
            if match is None or match.group(1) not in guardrails.principal_accounts:
                raise denied(
                    target,
                    rpc,
                    "PRINCIPAL_NOT_ALLOWED",
                    f"{path}: principal {principal[:120]!r} is outside the accounts tenant "
                    f"{target.tenant} may grant to",
                    path,
                )


@functools.cache
def _partition(region: str) -> str:
    # Which partition's ARNs name the region's repositories (aws, aws-cn, aws-us-gov, ...);
    # a region botocore does not know (a private partition) gets "aws", which refuses more.
    try:
        partition: str = botocore.session.get_session().get_partition_for_region(region)
    except botocore.exceptions.BotoCoreError:  # UnknownRegionError
        return "aws"
    return partition


def _statements(policy_text: str) -> list[Any]:
    try:
        policy = json.loads(policy_text)
    except ValueError:
        policy = None
    if not isinstance(policy, dict):
        raise InvalidArgument(
            "policy_text must be a JSON object",
            reason="POLICY_NOT_JSON",
            field_violations=[FieldViolation("policy_text", "must be a JSON object")],
        )
    statements = policy.get("Statement", [])
    return [statements] if isinstance(statements, dict) else list(statements or [])


def _principals(value: Any) -> Iterator[str]:
    """Every principal string of a Principal element ("*", {"AWS": [...]}, {"Service": ...})."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for kind, names in value.items():
            for name in [names] if isinstance(names, str) else names or []:
                # A service principal belongs to no account: prefixed so that an account
                # allow-list refuses it, while a wildcard in it is still seen.
                yield str(name) if kind == "AWS" else f"{kind}:{name}"
    elif isinstance(value, list):
        for item in value:
            yield from _principals(item)
