"""Content rules: what a tenant may write, beyond where it may write.

Checked after validation and before anything reaches AWS: replication destinations must
be on the registry entry's allow-list, and registry policies must keep to the tenant's
guardrails (no wildcard principal unless allowed; principals only from listed accounts).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from ecr.registry.v1 import registry_pb2 as pb

from service.auth.targets import Target, denied
from service.config import PolicyGuardrails
from service.errors import FieldViolation, InvalidArgument

# An AWS principal names its account either bare or inside an IAM/STS ARN.
_ACCOUNT_IN_PRINCIPAL = re.compile(r"^(?:arn:aws[a-z-]*:(?:iam|sts)::)?([0-9]{12})(?::|$)")


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
        for i, statement in enumerate(statements):
            if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
                continue  # a Deny narrows access; only grants are guarded
            path = f"policy_text.Statement[{i}]"
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
