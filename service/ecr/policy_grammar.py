"""The registry policy grammar: what a `policy_text` must be before AWS sees it.

A registry policy is an IAM resource policy (IAM JSON policy grammar:
https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_grammar.html) whose
actions are limited by the registry's policy scope. Per "Private registry permissions in
Amazon ECR" (https://docs.aws.amazon.com/AmazonECR/latest/userguide/registry-permissions.html):
V1 enforces only `ecr:ReplicateImage`, `ecr:BatchImportUpstreamImage` and
`ecr:CreateRepository` at the registry level, and ECR refuses a policy naming any other
action; V2 (the default since December 2024) accepts every ECR action.

The JSON is read strictly: duplicate keys (which JSON parsers resolve differently, so the
policy a reviewer reads may not be the one AWS applies), NaN/Infinity, text after the
object, and escaped lone surrogates (not Unicode, so not UTF-8) are all refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Literal

from service.errors import FieldViolation

PolicyScope = Literal["V1", "V2"]

VERSIONS = ("2012-10-17", "2008-10-17")
V1_ACTIONS = ("ecr:ReplicateImage", "ecr:BatchImportUpstreamImage", "ecr:CreateRepository")
_V1_LOWER = {a.lower(): a for a in V1_ACTIONS}
TOP_LEVEL_KEYS = ("Version", "Id", "Statement")
STATEMENT_KEYS = (
    "Sid",
    "Effect",
    "Principal",
    "NotPrincipal",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
)
PRINCIPAL_KINDS = ("AWS", "Service", "Federated", "CanonicalUser")
# IAM action names are case-insensitive and may hold the wildcards * and ?.
_ECR_ACTION = re.compile(r"ecr:[A-Za-z*?]+", re.IGNORECASE)
_ACCOUNT = re.compile(r"[0-9]{12}")
# The unique id IAM shows in place of a deleted user's (AIDA) or role's (AROA) ARN: "The
# principal ID appears because AWS can't map it back to a valid ARN"
# (https://repost.aws/knowledge-center/iam-resource-policy-format; prefixes:
# https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_identifiers.html#identifiers-prefixes).
_DELETED_PRINCIPAL = re.compile(r"A(ID|RO)A[A-Z0-9]{12,}")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Real policies nest four or five levels (Statement[].Condition.Operator.Key[]).
_MAX_DEPTH = 32
_ECHO = 40


def show(value: Any, limit: int = _ECHO) -> str:
    """A value as a person reads it in a message, clipped so no message carries a payload."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Object(dict[str, Any]):
    """A JSON object that remembers the keys it saw more than once."""

    duplicates: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        counts: dict[str, int] = {}
        for key, _ in pairs:
            counts[key] = counts.get(key, 0) + 1
        obj.duplicates = tuple(key for key, n in counts.items() if n > 1)
    return obj


def _no_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (RFC 8259) and AWS do not.
    raise ValueError(f"{name} is not JSON")


def parse(text: str, path: str) -> tuple[Any, list[FieldViolation]]:
    """Strictly parse JSON text: the value (None if unusable) and what is wrong with it."""
    try:
        value = json.loads(text, object_pairs_hook=_object, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        what = "has text after the JSON value" if exc.msg == "Extra data" else exc.msg
        return None, [
            FieldViolation(
                path, f"is not valid JSON: {what} at line {exc.lineno} column {exc.colno}"
            )
        ]
    except ValueError as exc:
        return None, [FieldViolation(path, f"is not valid JSON: {exc}")]
    except RecursionError:
        return None, [FieldViolation(path, "is not valid JSON: nested too deeply")]
    problems: list[FieldViolation] = []
    _strict_walk(value, path, problems, 0)
    return value, problems


def _strict_walk(value: Any, path: str, out: list[FieldViolation], depth: int) -> None:
    """Duplicate keys and lone surrogates anywhere in a parsed JSON value."""
    if depth > _MAX_DEPTH:
        out.append(FieldViolation(path, f"is nested deeper than {_MAX_DEPTH} levels"))
        return
    if isinstance(value, str):
        if _SURROGATE.search(value):
            out.append(FieldViolation(path, "holds an escaped lone surrogate: not Unicode text"))
    elif isinstance(value, dict):
        for key in getattr(value, "duplicates", ()):
            out.append(FieldViolation(path, f"has the key {show(key)} more than once; keep one"))
        for key, item in value.items():
            if _SURROGATE.search(key):
                out.append(FieldViolation(path, "has a key with an escaped lone surrogate"))
            _strict_walk(item, f"{path}.{key}", out, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _strict_walk(item, f"{path}[{i}]", out, depth + 1)


def check_policy(text: str, scope: PolicyScope, path: str = "policy_text") -> list[FieldViolation]:
    """Every way `text` breaks the registry policy grammar under `scope`; empty if none."""
    policy, problems = parse(text, path)
    if problems and policy is None:
        return problems
    if not isinstance(policy, dict):
        return [*problems, FieldViolation(path, f"must be a JSON object, got {_kind(policy)}")]
    out = _Out(problems)
    for key in policy:
        if key not in TOP_LEVEL_KEYS:
            out.add(f"{path}.{key}", f"is not a policy element; use {', '.join(TOP_LEVEL_KEYS)}")
    version = policy.get("Version")
    if version is None:
        out.add(f"{path}.Version", f"is required: {' or '.join(map(repr, VERSIONS))}")
    elif version not in VERSIONS:
        out.add(
            f"{path}.Version", f"must be {' or '.join(map(repr, VERSIONS))}, got {show(version)}"
        )
    if "Id" in policy and not isinstance(policy["Id"], str):
        out.add(f"{path}.Id", f"must be a string, got {_kind(policy['Id'])}")
    _check_statements(policy.get("Statement"), scope, f"{path}.Statement", out)
    return out.problems


class _Out:
    def __init__(self, problems: list[FieldViolation]) -> None:
        self.problems = problems

    def add(self, path: str, description: str) -> None:
        self.problems.append(FieldViolation(path, description))


def _check_statements(value: Any, scope: PolicyScope, path: str, out: _Out) -> None:
    if value is None:
        out.add(path, "is required: a statement object or a list of them")
        return
    # An object stands for a list of one; paths index it as [0], as the content rules do.
    statements = [value] if isinstance(value, dict) else value
    if not isinstance(statements, list):
        out.add(path, f"must be an object or a list of objects, got {_kind(value)}")
        return
    if not statements:
        out.add(path, "must hold at least one statement")
        return
    sids: dict[str, int] = {}
    for i, statement in enumerate(statements):
        here = f"{path}[{i}]"
        if not isinstance(statement, dict):
            out.add(here, f"must be an object, got {_kind(statement)}")
            continue
        sid = statement.get("Sid")
        if isinstance(sid, str) and sid:
            if sid in sids:
                out.add(f"{here}.Sid", f"{show(sid)} is also the Sid of Statement[{sids[sid]}]")
            else:
                sids[sid] = i
        _check_statement(statement, scope, here, out)


def _check_statement(statement: dict[str, Any], scope: PolicyScope, path: str, out: _Out) -> None:
    for key in statement:
        if key not in STATEMENT_KEYS:
            out.add(f"{path}.{key}", "is not a statement element")
    if "Sid" in statement and not isinstance(statement["Sid"], str):
        out.add(f"{path}.Sid", f"must be a string, got {_kind(statement['Sid'])}")
    effect = statement.get("Effect")
    if effect is None:
        out.add(f"{path}.Effect", "is required: 'Allow' or 'Deny'")
    elif effect not in ("Allow", "Deny"):
        out.add(f"{path}.Effect", f"must be 'Allow' or 'Deny', got {show(effect)}")

    principal = _exactly_one(statement, "Principal", "NotPrincipal", path, out)
    if principal is not None:
        _check_principal(statement[principal], f"{path}.{principal}", out)

    action = _exactly_one(statement, "Action", "NotAction", path, out)
    if action is not None:
        for item_path, item in _strings(statement[action], f"{path}.{action}", out):
            _check_action(item, scope, item_path, out)
        if action == "NotAction" and scope == "V1":
            out.add(
                f"{path}.NotAction",
                "is not allowed with policy scope V1, which enforces only "
                f"{', '.join(V1_ACTIONS)}; list them in Action",
            )

    resource = _exactly_one(statement, "Resource", "NotResource", path, out)
    if resource is not None:
        for item_path, item in _strings(statement[resource], f"{path}.{resource}", out):
            if item != "*" and not item.startswith("arn:"):
                out.add(item_path, f"must be '*' or an ARN, got {show(item)}")

    if "Condition" in statement:
        _check_condition(statement["Condition"], f"{path}.Condition", out)


def _exactly_one(statement: dict[str, Any], yes: str, no: str, path: str, out: _Out) -> str | None:
    if yes in statement and no in statement:
        out.add(f"{path}.{no}", f"cannot be given with {yes}; keep one of the two")
        return None
    if yes in statement:
        return yes
    if no in statement:
        return no
    out.add(f"{path}.{yes}", f"is required (or {no})")
    return None


def _strings(value: Any, path: str, out: _Out) -> Iterator[tuple[str, str]]:
    """The strings of a "string or non-empty list of strings" element, with their paths."""
    if isinstance(value, str):
        yield path, value
        return
    if not isinstance(value, list):
        out.add(path, f"must be a string or a list of strings, got {_kind(value)}")
        return
    if not value:
        out.add(path, "must not be an empty list")
    for i, item in enumerate(value):
        if isinstance(item, str):
            yield f"{path}[{i}]", item
        else:
            out.add(f"{path}[{i}]", f"must be a string, got {_kind(item)}")


def _check_action(action: str, scope: PolicyScope, path: str, out: _Out) -> None:
    if scope == "V1":
        if action.lower() not in _V1_LOWER:
            out.add(
                path,
                f"policy scope V1 allows only {', '.join(V1_ACTIONS)}; got {show(action)}",
            )
    elif not _ECR_ACTION.fullmatch(action):
        out.add(
            path,
            f"must be an ECR action such as 'ecr:ReplicateImage' or 'ecr:*', got {show(action)}",
        )


def _check_principal(value: Any, path: str, out: _Out) -> None:
    if value == "*":
        return
    if not isinstance(value, dict):
        out.add(
            path,
            f'must be "*" or an object such as {{"AWS": "<account id or ARN>"}}, got {show(value)}',
        )
        return
    if not value:
        out.add(path, "must name at least one principal")
    for kind, names in value.items():
        here = f"{path}.{kind}"
        if kind not in PRINCIPAL_KINDS:
            out.add(here, f"is not a principal type; use {', '.join(PRINCIPAL_KINDS)}")
            continue
        for item_path, name in _strings(names, here, out):
            if kind == "AWS" and _DELETED_PRINCIPAL.fullmatch(name):
                out.add(
                    item_path,
                    f"{show(name)} is the unique id IAM shows for a deleted user or role (it "
                    f"can no longer be mapped to an ARN); remove it or name an existing "
                    f"principal's ARN",
                )
            elif kind == "AWS" and not (
                name == "*" or _ACCOUNT.fullmatch(name) or name.startswith("arn:")
            ):
                out.add(
                    item_path, f"must be '*', a 12-digit account id or an ARN, got {show(name)}"
                )
            elif not name or name != name.strip():
                out.add(item_path, f"must be a name without surrounding spaces, got {show(name)}")


def stored_form(statement: Any, partition: str) -> Any:
    """A statement as ECR stores it and answers it back: a 12-digit account id in an `AWS`
    principal (of Principal or NotPrincipal) becomes the account's root ARN, which is longer.

    "When you save a resource-based policy that includes the shortened account ID, the
    service might convert it to the principal ARN" (IAM User Guide, AWS JSON policy elements:
    Principal, https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_principal.html#principal-accounts);
    ECR does. Every other part is kept as given (ECR's reformatting of whitespace does not
    survive the gateway's compact merge). `partition`: of the registry's region (`aws`,
    `aws-cn`, ...). Anything not shaped like a statement is returned as it is.
    """
    if not isinstance(statement, dict):
        return statement
    stored = dict(statement)
    for element in ("Principal", "NotPrincipal"):
        principal = stored.get(element)
        if isinstance(principal, dict) and "AWS" in principal:
            names = principal["AWS"]
            rewritten = (
                [_root_arn(name, partition) for name in names]
                if isinstance(names, list)
                else _root_arn(names, partition)
            )
            stored[element] = {**principal, "AWS": rewritten}
    return stored


def _root_arn(name: Any, partition: str) -> Any:
    if isinstance(name, str) and _ACCOUNT.fullmatch(name):
        return f"arn:{partition}:iam::{name}:root"
    return name


def _check_condition(value: Any, path: str, out: _Out) -> None:
    # Condition: {operator: {key: value or [values]}}; the operators and keys are AWS's to judge.
    if not isinstance(value, dict):
        out.add(path, f"must be an object of operators, got {_kind(value)}")
        return
    for operator, clause in value.items():
        if not isinstance(clause, dict):
            out.add(
                f"{path}.{operator}", f"must be an object of condition keys, got {_kind(clause)}"
            )
            continue
        for key, item in clause.items():
            items = item if isinstance(item, list) else [item]
            if not all(isinstance(v, str | bool | int | float) for v in items):
                out.add(
                    f"{path}.{operator}.{key}",
                    "must be a string, number, boolean or a list of them",
                )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return f"the string {show(value)}"
    if isinstance(value, list):
        return "a list"
    return "an object"
