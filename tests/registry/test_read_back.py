"""What counts as "AWS holds what was written": by meaning, leaning towards yes."""

from __future__ import annotations

import json

from service.gen.v1 import registry_pb2 as pb
from service.registry.model.read_back import policy_holds, replication_holds

ACCOUNT = "123456789012"


def rule(prefix: str | None, *regions: str) -> pb.ReplicationRule:
    return pb.ReplicationRule(
        destinations=[pb.ReplicationDestination(region=r, registry_id=ACCOUNT) for r in regions],
        repository_filters=(
            [pb.RepositoryFilter(filter=prefix, filter_type="PREFIX_MATCH")] if prefix else []
        ),
    )


def test_rules_in_another_order_hold() -> None:
    written = pb.ReplicationConfiguration(
        rules=[rule("a/", "eu-west-1", "us-west-2"), rule(None, "eu-west-1")]
    )
    back = pb.ReplicationConfiguration(
        rules=[rule(None, "eu-west-1"), rule("a/", "us-west-2", "eu-west-1")]
    )
    assert replication_holds(written, back)


def test_a_rule_missing_or_changed_does_not_hold() -> None:
    written = pb.ReplicationConfiguration(rules=[rule("a/", "eu-west-1"), rule("b/", "eu-west-1")])
    assert not replication_holds(
        written, pb.ReplicationConfiguration(rules=[rule("a/", "eu-west-1")])
    )
    assert not replication_holds(
        written,
        pb.ReplicationConfiguration(rules=[rule("a/", "eu-west-1"), rule("b/", "us-west-2")]),
    )
    assert not replication_holds(written, pb.ReplicationConfiguration())


def test_what_aws_answered_the_write_holds() -> None:
    written = pb.ReplicationConfiguration(rules=[rule("a/", "eu-west-1")])
    answered = pb.ReplicationConfiguration(rules=[rule("a/", "eu-west-1"), rule(None, "x")])
    assert replication_holds(written, answered, answered)


POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "A",
            "Effect": "Allow",
            "Principal": {"AWS": "210987654321"},
            "Action": "ecr:ReplicateImage",
            "Resource": "*",
            "Condition": {"Bool": {"aws:SecureTransport": True}},
        }
    ],
}


def test_a_policy_as_iam_rewrites_it_holds() -> None:
    rewritten = {
        "Version": "2012-10-17",
        "Statement": {
            "Resource": ["*"],
            "Condition": {"Bool": {"aws:SecureTransport": "true"}},
            "Action": ["ecr:ReplicateImage", "ecr:ReplicateImage"],
            "Principal": {"AWS": ["arn:aws:iam::210987654321:root"]},
            "Effect": "Allow",
            "Sid": "A",
        },
    }
    assert policy_holds(json.dumps(POLICY), json.dumps(rewritten, indent=2))


def test_another_policy_does_not_hold() -> None:
    other = json.loads(json.dumps(POLICY))
    other["Statement"][0]["Principal"] = {"AWS": "111111111111"}
    assert not policy_holds(json.dumps(POLICY), json.dumps(other))
    other = json.loads(json.dumps(POLICY))
    other["Statement"][0]["Effect"] = "Deny"
    assert not policy_holds(json.dumps(POLICY), json.dumps(other))
    assert not policy_holds(json.dumps(POLICY), None)
    assert not policy_holds(None, json.dumps(POLICY))
    assert policy_holds(None, None)


def test_the_policy_aws_answered_holds() -> None:
    assert policy_holds("{}", "not json", "not json")
    assert not policy_holds("{}", "not json")
