"""What a write would change: the plan a validate_only call answers, like `terraform plan`.

Rules are matched by what they are (their filters and destinations), statements by Sid,
never by position: a list that only moved is not a list that changed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from service.gen.v1 import registry_pb2 as pb

RULES = "replication_configuration.rules"
_DESCRIPTION = 300


def _destination(d: pb.ReplicationDestination) -> str:
    return f"destination {d.registry_id} {d.region}"


def _filter(f: pb.RepositoryFilter) -> str:
    return f"filter {f.filter} ({f.filter_type})"


def _rule(rule: pb.ReplicationRule) -> str:
    parts = [_destination(d) for d in rule.destinations]
    parts += [_filter(f) for f in rule.repository_filters] or ["all repositories"]
    text = "rule: " + ", ".join(parts)
    # A rule may hold 200 filters and destinations: a plan line stays readable.
    return text if len(text) <= _DESCRIPTION else text[: _DESCRIPTION - 1] + "…"


def _identity(rule: pb.ReplicationRule) -> tuple[frozenset[tuple[str, str]], ...]:
    # What a rule does, whatever the order of its filters and destinations: the same rule
    # at another index is the same rule, and a changed rule is another one.
    return (
        frozenset((f.filter, f.filter_type) for f in rule.repository_filters),
        frozenset((d.registry_id, d.region) for d in rule.destinations),
    )


def replication_changes(
    current: pb.ReplicationConfiguration, proposed: pb.ReplicationConfiguration
) -> list[pb.Change]:
    """The rules a full PutReplicationConfiguration removes and adds, matched by identity."""
    return rule_changes(list(current.rules), list(proposed.rules), RULES)


def rule_changes(
    current: Sequence[pb.ReplicationRule], proposed: Sequence[pb.ReplicationRule], field: str
) -> list[pb.Change]:
    """Rules removed and added, matched by identity (filters and destinations), never by
    position: a removed rule's path is its index in `current`, an added rule's its index in
    `proposed`. When the rules both keep stand in another order, one "change" says so.
    """
    unmatched: dict[tuple[frozenset[tuple[str, str]], ...], list[int]] = {}
    for i, rule in enumerate(current):
        unmatched.setdefault(_identity(rule), []).append(i)
    kept: list[tuple[int, int]] = []
    added: list[int] = []
    for j, rule in enumerate(proposed):
        same = unmatched.get(_identity(rule))
        if same:
            kept.append((same.pop(0), j))
        else:
            added.append(j)
    removed = sorted(i for left in unmatched.values() for i in left)
    changes = [
        pb.Change(action="remove", path=f"{field}[{i}]", description=_rule(current[i]))
        for i in removed
    ]
    changes += [
        pb.Change(action="add", path=f"{field}[{j}]", description=_rule(proposed[j])) for j in added
    ]
    order = [i for i, _ in kept]
    if order != sorted(order):
        moves = ", ".join(f"[{i}] to [{j}]" for i, j in kept if i != j)
        changes.append(
            pb.Change(
                action="change", path=field, description=f"rule order: {moves}"[:_DESCRIPTION]
            )
        )
    return changes


def policy_changes(current: str | None, proposed: str | None) -> list[pb.Change]:
    """Statements added, removed or changed, matched by Sid (by position when they have none)."""
    old, new = _statements(current), _statements(proposed)
    changes = [
        pb.Change(action="remove", path=key, description=_summary(old[key]))
        for key in old
        if key not in new
    ]
    for key, statement in new.items():
        if key not in old:
            changes.append(pb.Change(action="add", path=key, description=_summary(statement)))
        elif _canonical(old[key]) != _canonical(statement):
            changes.append(pb.Change(action="change", path=key, description=_summary(statement)))
    return changes


def statement_changes(
    current: Sequence[Any], proposed: Sequence[Any], field: str = "statements_json"
) -> list[pb.Change]:
    """A slice's statements removed, added or changed, matched by Sid (every slice
    statement has one)."""
    old = {_sid(s): s for s in current}
    new = {_sid(s): s for s in proposed}
    changes = [
        pb.Change(action="remove", path=f"{field}[Sid={sid}]", description=_summary(s))
        for sid, s in old.items()
        if sid not in new
    ]
    for sid, statement in new.items():
        path = f"{field}[Sid={sid}]"
        if sid not in old:
            changes.append(pb.Change(action="add", path=path, description=_summary(statement)))
        elif _canonical(old[sid]) != _canonical(statement):
            changes.append(pb.Change(action="change", path=path, description=_summary(statement)))
    return changes


def _sid(statement: Any) -> str:
    sid = statement.get("Sid") if isinstance(statement, dict) else None
    return sid if isinstance(sid, str) else ""


def _statements(policy_text: str | None) -> dict[str, Any]:
    if policy_text is None:
        return {}
    try:
        statements = json.loads(policy_text).get("Statement", [])
    except (ValueError, AttributeError):
        return {}  # validation reports a broken policy; a plan has nothing to compare
    if isinstance(statements, dict):
        statements = [statements]
    keyed: dict[str, Any] = {}
    for i, statement in enumerate(statements if isinstance(statements, list) else []):
        sid = statement.get("Sid") if isinstance(statement, dict) else None
        key = f"policy_text.Statement[Sid={sid}]" if sid else f"policy_text.Statement[{i}]"
        keyed[key] = statement
    return keyed


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _summary(statement: Any) -> str:
    if not isinstance(statement, dict):
        return "statement"
    raw = statement.get("Action", statement.get("NotAction", []))
    actions: list[Any] = [raw] if isinstance(raw, str) else list(raw or [])
    return f"{statement.get('Effect', '?')} {', '.join(map(str, actions))}"[:300]
