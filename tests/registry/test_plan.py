"""Plans: rules matched by identity (filters and destinations), statements by Sid."""

from __future__ import annotations

import json
from typing import Any

from service.gen.v1 import registry_pb2 as pb
from service.registry.model import plan

ACCOUNT = "123456789012"


def rule(filters: list[str], regions: list[str]) -> pb.ReplicationRule:
    return pb.ReplicationRule(
        destinations=[pb.ReplicationDestination(region=r, registry_id=ACCOUNT) for r in regions],
        repository_filters=[
            pb.RepositoryFilter(filter=f, filter_type="PREFIX_MATCH") for f in filters
        ],
    )


def changes(found: list[pb.Change]) -> list[tuple[str, str]]:
    return [(c.action, c.path) for c in found]


A = rule(["a/"], ["eu-west-1"])
B = rule(["b/"], ["us-west-2"])
C = rule([], ["eu-west-1", "us-west-2"])


def test_the_same_rules_are_no_change() -> None:
    assert plan.rule_changes([A, B], [A, B], "rules") == []


def test_a_rule_is_its_filters_and_destinations_in_any_order() -> None:
    two = rule(["a/", "x/"], ["eu-west-1", "us-west-2"])
    reordered = rule(["x/", "a/"], ["us-west-2", "eu-west-1"])
    assert plan.rule_changes([two], [reordered], "rules") == []


def test_a_changed_rule_is_one_removed_and_one_added_by_their_own_indexes() -> None:
    changed = rule(["a/"], ["eu-west-1", "us-west-2"])
    assert changes(plan.rule_changes([B, A], [changed, B], "rules")) == [
        ("remove", "rules[1]"),  # its index in the current rules
        ("add", "rules[0]"),  # its index in the request
        # B stays, and no kept rule moved before another: no order change.
    ]


def test_rules_kept_in_another_order_are_one_change() -> None:
    found = plan.rule_changes([A, B, C], [C, A, B], "rules")
    assert changes(found) == [("change", "rules")]
    assert found[0].description == "rule order: [2] to [0], [0] to [1], [1] to [2]"


def test_duplicate_rules_are_matched_one_for_one() -> None:
    assert changes(plan.rule_changes([A, A], [A], "rules")) == [("remove", "rules[1]")]


def test_descriptions_say_what_a_rule_does() -> None:
    [added] = plan.rule_changes([], [C], plan.RULES)
    assert added.path == "replication_configuration.rules[0]"
    assert added.description == (
        f"rule: destination {ACCOUNT} eu-west-1, destination {ACCOUNT} us-west-2, all repositories"
    )
    many = rule([f"team{i}/" for i in range(50)], ["eu-west-1"])
    [long] = plan.rule_changes([], [many], "rules")
    assert len(long.description) == 300 and long.description.endswith("…")


def statement(sid: str | None, action: str = "ecr:ReplicateImage") -> dict[str, Any]:
    found: dict[str, Any] = {"Effect": "Allow", "Action": [action], "Resource": "*"}
    if sid is not None:
        found["Sid"] = sid
    return found


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def test_policy_statements_are_matched_by_sid() -> None:
    current = policy(statement("Keep"), statement("Edit"), statement("Drop"))
    proposed = policy(
        statement("Edit", "ecr:CreateRepository"), statement("New"), statement("Keep")
    )
    assert changes(plan.policy_changes(current, proposed)) == [
        ("remove", "policy_text.Statement[Sid=Drop]"),
        ("change", "policy_text.Statement[Sid=Edit]"),
        ("add", "policy_text.Statement[Sid=New]"),
    ]


def test_statements_without_sid_are_matched_by_position() -> None:
    assert changes(plan.policy_changes(policy(statement(None)), policy(statement(None)))) == []
    assert changes(
        plan.policy_changes(policy(statement(None)), policy(statement(None, "ecr:X")))
    ) == [("change", "policy_text.Statement[0]")]


def test_a_policy_created_or_deleted_is_every_statement_added_or_removed() -> None:
    text = policy(statement("A"), statement("B"))
    assert [c.action for c in plan.policy_changes(None, text)] == ["add", "add"]
    assert [c.action for c in plan.policy_changes(text, None)] == ["remove", "remove"]


def test_key_order_inside_a_statement_is_no_change() -> None:
    one = {"Sid": "A", "Effect": "Allow", "Action": "ecr:X", "Resource": "*"}
    other = {"Resource": "*", "Action": "ecr:X", "Effect": "Allow", "Sid": "A"}
    assert plan.policy_changes(policy(one), policy(other)) == []


def test_slice_statement_changes_name_sids_under_the_slice_field() -> None:
    found = plan.statement_changes(
        [statement("PayA")], [statement("PayA", "ecr:Y"), statement("PayB")]
    )
    assert changes(found) == [
        ("change", "statements_json[Sid=PayA]"),
        ("add", "statements_json[Sid=PayB]"),
    ]
    assert found[0].description == "Allow ecr:Y"
