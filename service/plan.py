"""What a write would change: the plan a validate_only call answers, like `terraform plan`."""

from __future__ import annotations

import json
from typing import Any

from ecr.registry.v1 import registry_pb2 as pb

RULES = "replication_configuration.rules"


def _destination(d: pb.ReplicationDestination) -> str:
    return f"destination {d.registry_id} {d.region}"


def _filter(f: pb.RepositoryFilter) -> str:
    return f"filter {f.filter} ({f.filter_type})"


def _rule(rule: pb.ReplicationRule) -> str:
    parts = [_destination(d) for d in rule.destinations]
    parts += [_filter(f) for f in rule.repository_filters] or ["all repositories"]
    return "rule: " + ", ".join(parts)


def replication_changes(
    current: pb.ReplicationConfiguration, proposed: pb.ReplicationConfiguration
) -> list[pb.Change]:
    """Rules added or removed, and within a rule kept at its index, destinations and filters."""
    changes: list[pb.Change] = []
    for i in range(max(len(current.rules), len(proposed.rules))):
        path = f"{RULES}[{i}]"
        if i >= len(current.rules):
            changes.append(pb.Change(action="add", path=path, description=_rule(proposed.rules[i])))
            continue
        if i >= len(proposed.rules):
            changes.append(
                pb.Change(action="remove", path=path, description=_rule(current.rules[i]))
            )
            continue
        old, new = current.rules[i], proposed.rules[i]
        changes += _list_changes(
            f"{path}.destinations", list(old.destinations), list(new.destinations), _destination
        )
        changes += _list_changes(
            f"{path}.repository_filters",
            list(old.repository_filters),
            list(new.repository_filters),
            _filter,
        )
    return changes


def _list_changes(path: str, old: list[Any], new: list[Any], describe: Any) -> list[pb.Change]:
    old_keys = [describe(x) for x in old]
    new_keys = [describe(x) for x in new]
    changes = [
        pb.Change(action="remove", path=f"{path}[{j}]", description=key)
        for j, key in enumerate(old_keys)
        if key not in new_keys
    ]
    changes += [
        pb.Change(action="add", path=f"{path}[{j}]", description=key)
        for j, key in enumerate(new_keys)
        if key not in old_keys
    ]
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
