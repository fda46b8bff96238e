"""Does a destination registry accept cross-account replication from a source account?

Cross-account replication works only if the destination registry's policy, in the
destination region, lets the source account run `ecr:CreateRepository` and
`ecr:ReplicateImage` on the destination's repositories; ECR accepts a replication rule either
way and then silently replicates nothing ("Private image replication in Amazon ECR",
https://docs.aws.amazon.com/AmazonECR/latest/userguide/replication.html, and the
cross-account steps of
https://docs.aws.amazon.com/AmazonECR/latest/userguide/registry-permissions-create-replication.html;
Terraform provider issue #28115).

This module judges one destination's policy text, pure (no I/O): `Accepts`,
`DoesNotAccept(missing, denied)` or `Unverified(why)`. The judgement is three-valued per
statement (applies / does not apply / cannot tell) and IAM's order for a resource policy
within one account pair: an explicit Deny wins, then an Allow, else the implicit deny
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html).
Only what can be evaluated soundly is: a Principal of `*`, the source account's id or root
ARN; conditions on `aws:PrincipalAccount` or `aws:SourceAccount` with `StringEquals` or
`StringLike`; `*` and `?` in actions and resources. `NotPrincipal`, `NotAction`,
`NotResource`, any other condition, a statement covering only some of the destination's
repositories: "cannot tell", which never counts as allowed. A refusal (`DoesNotAccept`) is
answered only when it is certain.

Nothing of the policy's text flows into a verdict: `missing` is drawn from the two actions,
`why` is one of the fixed sentences below, and the statement to add is built from the
account ids and the region alone, so a verdict shown to a tenant tells it no more of another
account's policy than "accepts / does not accept, and what is missing".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

ACTIONS = ("ecr:CreateRepository", "ecr:ReplicateImage")
# A policy read from AWS is at most 10,240 characters; anything much larger is not one, and
# the work stays bounded whatever the text.
_MAX_POLICY_CHARS = 64 * 1024
_MAX_STATEMENTS = 1000
_MAX_VALUES = 1000

# The fixed reasons of `Unverified` (never any of the policy's text).
WHY_UNREADABLE = "the destination's policy is not a readable policy document"
WHY_NOT_ELEMENTS = "a statement uses NotPrincipal, NotAction or NotResource"
WHY_CONDITION = "a statement has a condition the gateway cannot evaluate"
WHY_PRINCIPAL = "a statement names principals of the source account other than the account"
WHY_SOME_REPOSITORIES = "a statement applies to only some of the destination's repositories"
WHY_NO_POLICY_READ = "the destination's policy could not be read"
WHY_NOT_CONFIGURED = "the destination account is not a registry of this gateway"

_CONDITION_KEYS = frozenset({"aws:principalaccount", "aws:sourceaccount"})
_CONDITION_OPERATORS = frozenset({"StringEquals", "StringLike"})


@dataclass(frozen=True)
class Accepts:
    """The destination's policy allows both actions to the source account."""


@dataclass(frozen=True)
class DoesNotAccept:
    """Certainly refused: `missing` the actions not allowed; `denied` when an explicit Deny
    refuses at least one (an added Allow does not help then)."""

    missing: tuple[str, ...]
    denied: bool = False


@dataclass(frozen=True)
class Unverified:
    """The gateway cannot tell; `why` is one of the module's fixed sentences."""

    why: str


Verdict = Accepts | DoesNotAccept | Unverified


class _Tri(Enum):
    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"


def _and(*values: _Tri) -> _Tri:
    if _Tri.NO in values:
        return _Tri.NO
    if _Tri.UNKNOWN in values:
        return _Tri.UNKNOWN
    return _Tri.YES


def partition_of(region: str) -> str:
    """The ARN partition of a region (its name's prefix, as AWS names them)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def repositories_arn(dest_account: str, region: str) -> str:
    """The ARN pattern of every repository of the destination registry in `region`."""
    return f"arn:{partition_of(region)}:ecr:{region}:{dest_account}:repository/*"


def statement_to_add(
    source_account: str, dest_account: str, region: str, actions: Iterable[str] = ACTIONS
) -> str:
    """The statement that lets the source account replicate into the destination: one JSON
    object (bounded: ids, a region and at most two actions) a user can paste into the
    destination registry's policy's `Statement` list."""
    wanted = [a for a in ACTIONS if a in set(actions)] or list(ACTIONS)
    statement = {
        # Sids are alphanumeric (IAM grammar): the account id keeps it unique per source.
        "Sid": f"ReplicationFrom{source_account}",
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:{partition_of(region)}:iam::{source_account}:root"},
        "Action": wanted,
        "Resource": repositories_arn(dest_account, region),
    }
    return json.dumps(statement, separators=(",", ":"))


# --- IAM wildcards, matched exactly and in bounded work ----------------------------------------


def _closure(pattern: str, states: set[int]) -> set[int]:
    """Positions reachable without consuming a character (`*` matches nothing)."""
    out = set(states)
    todo = list(states)
    while todo:
        pos = todo.pop()
        if pos < len(pattern) and pattern[pos] == "*" and pos + 1 not in out:
            out.add(pos + 1)
            todo.append(pos + 1)
    return out


def _run(pattern: str, text: str) -> set[int]:
    """The positions of `pattern` (IAM's `*` and `?`, nothing else special) reachable after
    consuming all of `text`: an NFA, O(len(pattern) * len(text)), no backtracking."""
    states = _closure(pattern, {0})
    for char in text:
        following: set[int] = set()
        for pos in states:
            if pos >= len(pattern):
                continue
            wildcard = pattern[pos]
            if wildcard == "*":
                following.add(pos)
            elif wildcard == "?" or wildcard == char:
                following.add(pos + 1)
        states = _closure(pattern, following)
        if not states:
            break
    return states


def _matches(pattern: str, text: str) -> bool:
    return len(pattern) in _run(pattern, text)


def _covers_prefix(pattern: str, prefix: str) -> _Tri:
    """Does `pattern` match every string that starts with `prefix` (YES), some of them
    (UNKNOWN: which ones matters), or none (NO)?"""
    states = _run(pattern, prefix)
    if not states:
        return _Tri.NO
    if any(set(pattern[pos:]) <= {"*"} for pos in states):
        return _Tri.YES
    return _Tri.UNKNOWN


# --- one statement -------------------------------------------------------------------------------


def _strings(value: Any) -> list[str] | None:
    """A policy element's values: a string or a list of strings (bounded), else None."""
    if isinstance(value, str):
        return [value]
    if (
        isinstance(value, list)
        and len(value) <= _MAX_VALUES
        and all(isinstance(v, str) for v in value)
    ):
        return list(value)
    return None


def _action(statement: Mapping[str, Any], action: str) -> _Tri:
    values = _strings(statement.get("Action"))
    if values is None:
        return _Tri.UNKNOWN
    # Action names are case-insensitive in IAM.
    return _Tri.YES if any(_matches(v.lower(), action.lower()) for v in values) else _Tri.NO


def _resource(statement: Mapping[str, Any], dest_account: str, region: str) -> _Tri:
    values = _strings(statement.get("Resource"))
    if values is None:
        return _Tri.UNKNOWN
    prefix = repositories_arn(dest_account, region)[:-1]  # every repository's ARN starts so
    found = [_covers_prefix(v, prefix) for v in values]
    if _Tri.YES in found:
        return _Tri.YES
    return _Tri.UNKNOWN if _Tri.UNKNOWN in found else _Tri.NO


def _principal(statement: Mapping[str, Any], source_account: str) -> _Tri:
    """Does the statement's Principal name the source account (`*` names everyone: what
    narrows it is the condition)?"""
    principal = statement.get("Principal")
    if principal == "*":
        return _Tri.YES
    if not isinstance(principal, dict):
        return _Tri.UNKNOWN
    values = _strings(principal["AWS"]) if "AWS" in principal else []
    if values is None:
        return _Tri.UNKNOWN
    root = re.compile(rf"arn:aws(-[a-z]+)*:iam::{re.escape(source_account)}:root")
    seen = _Tri.NO
    for value in values:
        if value == "*":
            return _Tri.YES
        if value == source_account or root.fullmatch(value):
            return _Tri.YES
        if f":{source_account}:" in value:
            # A role or user of the source account: whether ECR's replication acts as it is
            # not something the gateway can know.
            seen = _Tri.UNKNOWN
    return seen


def _condition(statement: Mapping[str, Any], source_account: str) -> _Tri:
    condition = statement.get("Condition")
    if condition is None:
        return _Tri.YES
    if not isinstance(condition, dict) or len(condition) > _MAX_VALUES:
        return _Tri.UNKNOWN
    results: list[_Tri] = []
    for operator, tests in condition.items():
        if operator not in _CONDITION_OPERATORS or not isinstance(tests, dict):
            return _Tri.UNKNOWN
        for key, value in tests.items():
            values = _strings(value)
            if not isinstance(key, str) or key.lower() not in _CONDITION_KEYS or values is None:
                return _Tri.UNKNOWN
            if operator == "StringEquals":
                held = source_account in values
            else:
                held = any(_matches(v, source_account) for v in values)
            results.append(_Tri.YES if held else _Tri.NO)
    return _and(*results)


@dataclass(frozen=True)
class _Applies:
    tri: _Tri
    why: str = ""


def _applies(
    statement: Mapping[str, Any],
    action: str,
    source_account: str,
    dest_account: str,
    region: str,
) -> _Applies:
    if any(k in statement for k in ("NotPrincipal", "NotAction", "NotResource")):
        return _Applies(_Tri.UNKNOWN, WHY_NOT_ELEMENTS)
    action_tri = _action(statement, action)
    resource_tri = _resource(statement, dest_account, region)
    principal_tri = _principal(statement, source_account)
    condition_tri = _condition(statement, source_account)
    tri = _and(action_tri, resource_tri, principal_tri, condition_tri)
    why = ""
    if tri is _Tri.UNKNOWN:
        if condition_tri is _Tri.UNKNOWN:
            why = WHY_CONDITION
        elif principal_tri is _Tri.UNKNOWN:
            why = WHY_PRINCIPAL
        elif resource_tri is _Tri.UNKNOWN:
            why = WHY_SOME_REPOSITORIES
        else:
            why = WHY_UNREADABLE
    return _Applies(tri, why)


def _statements(policy_text: str) -> list[Mapping[str, Any]] | None:
    if len(policy_text) > _MAX_POLICY_CHARS:
        return None
    try:
        document = json.loads(policy_text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    statements = document.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or len(statements) > _MAX_STATEMENTS:
        return None
    if not all(isinstance(s, dict) for s in statements):
        return None
    return statements


def judge(policy_text: str | None, source_account: str, dest_account: str, region: str) -> Verdict:
    """Whether the destination registry (`dest_account` in `region`), whose policy is
    `policy_text` (None: it has none), lets `source_account` replicate into it."""
    if source_account == dest_account:
        return Accepts()  # same account: no registry policy is needed
    if policy_text is None:
        return DoesNotAccept(ACTIONS)
    statements = _statements(policy_text)
    if statements is None:
        return Unverified(WHY_UNREADABLE)
    missing: list[str] = []
    denied = False
    unknown_why = ""
    for action in ACTIONS:
        deny, allow = _Applies(_Tri.NO), _Applies(_Tri.NO)
        for statement in statements:
            effect = statement.get("Effect")
            if effect not in ("Allow", "Deny"):
                return Unverified(WHY_UNREADABLE)
            found = _applies(statement, action, source_account, dest_account, region)
            if effect == "Deny" and _rank(found.tri) > _rank(deny.tri):
                deny = found
            elif effect == "Allow" and _rank(found.tri) > _rank(allow.tri):
                allow = found
        if deny.tri is _Tri.YES:
            missing.append(action)
            denied = True
        elif allow.tri is _Tri.NO:
            missing.append(action)  # nothing might allow it: refused, whatever a Deny says
        elif deny.tri is _Tri.UNKNOWN:
            unknown_why = unknown_why or deny.why
        elif allow.tri is _Tri.UNKNOWN:
            unknown_why = unknown_why or allow.why
    if missing:
        # Certain: a Deny that applies, or no Allow that might.
        return DoesNotAccept(tuple(missing), denied)
    if unknown_why:
        return Unverified(unknown_why)
    return Accepts()


def _rank(tri: _Tri) -> int:
    return {_Tri.NO: 0, _Tri.UNKNOWN: 1, _Tri.YES: 2}[tri]
