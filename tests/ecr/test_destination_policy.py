"""The judge of a destination registry's policy (service/ecr/destination_policy.py)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from service.ecr import destination_policy as dp
from service.ecr.destination_policy import Accepts, DoesNotAccept, Unverified, judge

SRC, DEST, REGION = "111111111111", "222222222222", "eu-west-1"
REPOS = f"arn:aws:ecr:{REGION}:{DEST}:repository/*"
BOTH = ["ecr:CreateRepository", "ecr:ReplicateImage"]


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(principal: Any = None, **extra: Any) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Sid": "Allow",
        "Effect": "Allow",
        "Principal": principal if principal is not None else {"AWS": f"arn:aws:iam::{SRC}:root"},
        "Action": BOTH,
        "Resource": REPOS,
    }
    statement.update(extra)
    return statement


def deny(**extra: Any) -> dict[str, Any]:
    return allow(**extra) | {"Sid": "Deny", "Effect": "Deny", **extra}


def test_no_policy_does_not_accept_either_action() -> None:
    assert judge(None, SRC, DEST, REGION) == DoesNotAccept(tuple(BOTH))


def test_same_account_needs_no_policy() -> None:
    assert judge(None, DEST, DEST, REGION) == Accepts()
    assert judge(policy(deny()), DEST, DEST, REGION) == Accepts()


def test_allow_of_the_root_arn_accepts() -> None:
    assert judge(policy(allow()), SRC, DEST, REGION) == Accepts()


def test_principal_as_account_id_and_list_accepts() -> None:
    assert judge(policy(allow({"AWS": SRC})), SRC, DEST, REGION) == Accepts()
    listed = {"AWS": ["333333333333", f"arn:aws:iam::{SRC}:root"]}
    assert judge(policy(allow(listed)), SRC, DEST, REGION) == Accepts()


def test_allow_of_another_account_does_not_accept() -> None:
    verdict = judge(policy(allow({"AWS": "333333333333"})), SRC, DEST, REGION)
    assert verdict == DoesNotAccept(tuple(BOTH))


def test_allow_of_only_one_action_misses_the_other() -> None:
    verdict = judge(policy(allow(Action="ecr:ReplicateImage")), SRC, DEST, REGION)
    assert verdict == DoesNotAccept(("ecr:CreateRepository",))


def test_wildcards_in_actions_and_resources() -> None:
    for action in ("ecr:*", "*", ["ecr:Create*", "ecr:Replicate?mage"], "ECR:replicateimage*"):
        for resource in ("*", f"arn:aws:ecr:*:{DEST}:*", f"arn:aws:ecr:{REGION}:*:repository/*"):
            statement = allow(Action=action, Resource=resource)
            expected = Accepts() if action != "ECR:replicateimage*" else None
            verdict = judge(policy(statement), SRC, DEST, REGION)
            if expected is None:
                assert verdict == DoesNotAccept(("ecr:CreateRepository",))
            else:
                assert verdict == expected, (action, resource)


def test_resource_of_another_region_or_account_does_not_count() -> None:
    for resource in (
        f"arn:aws:ecr:us-east-1:{DEST}:repository/*",
        f"arn:aws:ecr:{REGION}:333333333333:repository/*",
    ):
        verdict = judge(policy(allow(Resource=resource)), SRC, DEST, REGION)
        assert verdict == DoesNotAccept(tuple(BOTH))


def test_resource_of_some_repositories_is_unverified() -> None:
    resource = f"arn:aws:ecr:{REGION}:{DEST}:repository/prod/*"
    verdict = judge(policy(allow(Resource=resource)), SRC, DEST, REGION)
    assert verdict == Unverified(dp.WHY_SOME_REPOSITORIES)


def test_explicit_deny_wins_over_allow() -> None:
    verdict = judge(policy(allow(), deny()), SRC, DEST, REGION)
    assert verdict == DoesNotAccept(tuple(BOTH), denied=True)
    one = judge(policy(allow(), deny(Action="ecr:CreateRepository")), SRC, DEST, REGION)
    assert one == DoesNotAccept(("ecr:CreateRepository",), denied=True)


def test_deny_of_everyone_with_a_condition_on_another_account_does_not_apply() -> None:
    others = {"StringNotEquals": {"aws:PrincipalAccount": SRC}}
    assert judge(policy(allow(), deny(Principal="*", Condition=others)), SRC, DEST, REGION) == (
        Unverified(dp.WHY_CONDITION)
    )
    elsewhere = {"StringEquals": {"aws:PrincipalAccount": "333333333333"}}
    assert judge(policy(allow(), deny(Principal="*", Condition=elsewhere)), SRC, DEST, REGION) == (
        Accepts()
    )


def test_wildcard_principal_without_a_condition_accepts() -> None:
    assert judge(policy(allow("*")), SRC, DEST, REGION) == Accepts()
    assert judge(policy(allow({"AWS": "*"})), SRC, DEST, REGION) == Accepts()


def test_wildcard_principal_with_a_condition() -> None:
    for key in ("aws:PrincipalAccount", "aws:SourceAccount", "AWS:sourceaccount"):
        equals = {"StringEquals": {key: [SRC, "333333333333"]}}
        assert judge(policy(allow("*", Condition=equals)), SRC, DEST, REGION) == Accepts()
        like = {"StringLike": {key: "1111*"}}
        assert judge(policy(allow("*", Condition=like)), SRC, DEST, REGION) == Accepts()
        other = {"StringEquals": {key: "333333333333"}}
        verdict = judge(policy(allow("*", Condition=other)), SRC, DEST, REGION)
        assert verdict == DoesNotAccept(tuple(BOTH))


def test_unknown_condition_is_unverified_never_allowed() -> None:
    for condition in (
        {"StringEquals": {"aws:PrincipalOrgID": "o-abc"}},
        {"StringNotEquals": {"aws:PrincipalAccount": "333333333333"}},
        {"StringEqualsIfExists": {"aws:SourceAccount": SRC}},
        {"ArnLike": {"aws:SourceArn": "*"}},
    ):
        verdict = judge(policy(allow("*", Condition=condition)), SRC, DEST, REGION)
        assert verdict == Unverified(dp.WHY_CONDITION), condition


def test_not_elements_are_unverified() -> None:
    for statement in (
        {k: v for k, v in allow().items() if k != "Principal"} | {"NotPrincipal": {"AWS": "x"}},
        {k: v for k, v in allow().items() if k != "Action"} | {"NotAction": "ecr:Get*"},
        {k: v for k, v in allow().items() if k != "Resource"} | {"NotResource": "x"},
    ):
        assert judge(policy(statement), SRC, DEST, REGION) == Unverified(dp.WHY_NOT_ELEMENTS)


def test_a_role_of_the_source_account_is_unverified() -> None:
    role = {"AWS": f"arn:aws:iam::{SRC}:role/replicator"}
    assert judge(policy(allow(role)), SRC, DEST, REGION) == Unverified(dp.WHY_PRINCIPAL)


def test_unreadable_policy_is_unverified() -> None:
    for text in ("not json", "[]", '{"Statement": 3}', '{"Statement": [1]}', "{" * 100_000):
        assert judge(text, SRC, DEST, REGION) == Unverified(dp.WHY_UNREADABLE)


def test_a_missing_action_is_certain_even_beside_an_unknown_deny() -> None:
    unknown_deny = deny(Principal="*", Condition={"Bool": {"aws:SecureTransport": "false"}})
    verdict = judge(policy(allow(Action="ecr:ReplicateImage"), unknown_deny), SRC, DEST, REGION)
    assert verdict == DoesNotAccept(("ecr:CreateRepository",))


def test_statement_to_add_is_valid_json_that_the_judge_accepts() -> None:
    text = dp.statement_to_add(SRC, DEST, REGION)
    statement = json.loads(text)
    assert statement["Principal"] == {"AWS": f"arn:aws:iam::{SRC}:root"}
    assert statement["Resource"] == REPOS
    assert judge(policy(statement), SRC, DEST, REGION) == Accepts()
    only = json.loads(dp.statement_to_add(SRC, DEST, REGION, ["ecr:ReplicateImage"]))
    assert only["Action"] == ["ecr:ReplicateImage"]
    china = json.loads(dp.statement_to_add(SRC, DEST, "cn-north-1"))
    assert china["Resource"].startswith("arn:aws-cn:ecr:cn-north-1:")


# --- properties --------------------------------------------------------------------------------

_piece = st.text(alphabet="ab*?:/", max_size=12)


@settings(max_examples=300, deadline=None)
@given(pattern=_piece, text=st.text(alphabet="ab:/", max_size=12))
def test_wildcard_matching_agrees_with_a_regex(pattern: str, text: str) -> None:
    import re

    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    assert dp._matches(pattern, text) == bool(re.fullmatch(regex, text, re.DOTALL))


_statement = st.fixed_dictionaries(
    {
        "Effect": st.sampled_from(["Allow", "Deny"]),
        "Principal": st.sampled_from(
            ["*", {"AWS": SRC}, {"AWS": "333333333333"}, {"Service": "ecr.amazonaws.com"}]
        ),
        "Action": st.sampled_from(["ecr:*", "ecr:ReplicateImage", "ecr:CreateRepository", "*"]),
        "Resource": st.sampled_from(["*", REPOS, f"arn:aws:ecr:{REGION}:{DEST}:repository/p*"]),
    },
    optional={
        "Condition": st.sampled_from(
            [
                {"StringEquals": {"aws:SourceAccount": SRC}},
                {"StringEquals": {"aws:SourceAccount": "333333333333"}},
                {"StringEquals": {"aws:PrincipalOrgID": "o-1"}},
            ]
        )
    },
)


@settings(max_examples=300, deadline=None)
@given(statements=st.lists(_statement, max_size=5))
def test_a_deny_for_everything_always_wins(statements: list[dict[str, Any]]) -> None:
    text = policy(*statements, deny(Principal="*", Action="*", Resource="*"))
    verdict = judge(text, SRC, DEST, REGION)
    assert verdict == DoesNotAccept(tuple(BOTH), denied=True)


@settings(max_examples=300, deadline=None)
@given(statements=st.lists(_statement, max_size=5))
def test_accepts_only_with_an_allow_and_never_echoes_the_policy(
    statements: list[dict[str, Any]],
) -> None:
    verdict = judge(policy(*statements), SRC, DEST, REGION)
    if isinstance(verdict, Accepts):
        assert any(s["Effect"] == "Allow" for s in statements)
    if isinstance(verdict, Unverified):
        assert verdict.why in {
            dp.WHY_UNREADABLE,
            dp.WHY_NOT_ELEMENTS,
            dp.WHY_CONDITION,
            dp.WHY_PRINCIPAL,
            dp.WHY_SOME_REPOSITORIES,
        }
    if isinstance(verdict, DoesNotAccept):
        assert set(verdict.missing) <= set(BOTH)
