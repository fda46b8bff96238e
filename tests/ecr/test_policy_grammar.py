"""The registry policy grammar: strict JSON, IAM policy elements, actions per policy scope."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.ecr.policy_grammar import PolicyScope, check_policy

P = "policy_text"
S0 = f"{P}.Statement[0]"


def statement(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "Sid": "Replicate",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::210987654321:root"},
        "Action": ["ecr:CreateRepository", "ecr:ReplicateImage"],
        "Resource": "arn:aws:ecr:us-east-1:123456789012:repository/*",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def policy(*statements: dict[str, Any], **top: Any) -> str:
    document: dict[str, Any] = {"Version": "2012-10-17", "Statement": list(statements)}
    document.update(top)
    return json.dumps({k: v for k, v in document.items() if v is not None})


def violations(text: str, scope: PolicyScope = "V2") -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in check_policy(text, scope)]


@pytest.mark.parametrize(
    ("text", "scope"),
    [
        (policy(statement()), "V1"),
        (policy(statement(Action="ecr:BatchImportUpstreamImage")), "V1"),
        (policy(statement(Action="ECR:replicateimage")), "V1"),  # IAM actions ignore case
        (policy(statement(Action=["ecr:*", "ecr:Describe*", "ecr:Get?ownloadUrlForLayer"])), "V2"),
        (policy(statement(NotAction="ecr:DeleteRepository", Action=None)), "V2"),
        (policy(statement(), Version="2008-10-17"), "V2"),
        (policy(statement(), Id="registry-policy"), "V2"),
        (json.dumps({"Version": "2012-10-17", "Statement": statement()}), "V2"),
        (policy(statement(Principal="*", Effect="Deny")), "V2"),
        (policy(statement(Principal={"AWS": ["210987654321", "*"]})), "V2"),
        (policy(statement(Principal={"Service": "ecr.amazonaws.com"})), "V2"),
        (policy(statement(NotPrincipal={"AWS": "210987654321"}, Principal=None)), "V2"),
        (policy(statement(NotResource=["arn:aws:ecr:*:*:repository/x"], Resource=None)), "V2"),
        (
            policy(
                statement(Condition={"StringEquals": {"aws:PrincipalOrgID": ["o-a", "o-b"]}}),
                statement(Sid="Second", Resource="*"),
            ),
            "V2",
        ),
        (policy(statement(Sid=None), statement(Sid=None)), "V2"),  # Sid is optional
        ("  " + policy(statement()) + "\n", "V2"),  # whitespace around JSON is JSON
    ],
)
def test_valid_policies_pass(text: str, scope: PolicyScope) -> None:
    assert violations(text, scope) == []


TABLE: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        "not JSON",
        "{",
        [
            (
                P,
                "is not valid JSON: Expecting property name enclosed in double quotes at line 1 "
                "column 2",
            )
        ],
    ),
    (
        "trailing garbage",
        policy(statement()) + " x",
        [
            (
                P,
                "is not valid JSON: has text after the JSON value at line 1 column "
                f"{len(policy(statement())) + 2}",
            )
        ],
    ),
    ("NaN", '{"Version": NaN}', [(P, "is not valid JSON: NaN is not JSON")]),
    ("not an object", "[]", [(P, "must be a JSON object, got a list")]),
    (
        "duplicate top-level key",
        '{"Version":"2012-10-17","Version":"2008-10-17","Statement":'
        + json.dumps([statement()])
        + "}",
        [(P, "has the key 'Version' more than once; keep one")],
    ),
    (
        "duplicate statement key",
        policy(statement()).replace('"Effect": "Allow"', '"Effect": "Deny", "Effect": "Allow"'),
        [(S0, "has the key 'Effect' more than once; keep one")],
    ),
    (
        "duplicate key deep inside",
        policy(statement(Condition={"Bool": {"aws:SecureTransport": "true"}})).replace(
            '"aws:SecureTransport": "true"',
            '"aws:SecureTransport": "true", "aws:SecureTransport": "false"',
        ),
        [(f"{S0}.Condition.Bool", "has the key 'aws:SecureTransport' more than once; keep one")],
    ),
    (
        "lone surrogate",
        policy(statement(Sid="x")).replace('"Sid": "x"', '"Sid": "\\ud800"'),
        [(f"{S0}.Sid", "holds an escaped lone surrogate: not Unicode text")],
    ),
    (
        "Version missing",
        policy(statement(), Version=None),
        [(f"{P}.Version", "is required: '2012-10-17' or '2008-10-17'")],
    ),
    (
        "Version wrong",
        policy(statement(), Version="2012-10-18"),
        [(f"{P}.Version", "must be '2012-10-17' or '2008-10-17', got '2012-10-18'")],
    ),
    (
        "unknown element",
        policy(statement(), Extra=1),
        [(f"{P}.Extra", "is not a policy element; use Version, Id, Statement")],
    ),
    (
        "Statement missing",
        json.dumps({"Version": "2012-10-17"}),
        [(f"{P}.Statement", "is required: a statement object or a list of them")],
    ),
    ("Statement empty", policy(), [(f"{P}.Statement", "must hold at least one statement")]),
    (
        "Statement not an object",
        json.dumps({"Version": "2012-10-17", "Statement": ["Allow"]}),
        [(S0, "must be an object, got the string 'Allow'")],
    ),
    (
        "Effect missing",
        policy(statement(Effect=None)),
        [(f"{S0}.Effect", "is required: 'Allow' or 'Deny'")],
    ),
    (
        "Effect wrong",
        policy(statement(Effect="allow")),
        [(f"{S0}.Effect", "must be 'Allow' or 'Deny', got 'allow'")],
    ),
    (
        "Principal missing",
        policy(statement(Principal=None)),
        [(f"{S0}.Principal", "is required (or NotPrincipal)")],
    ),
    (
        "Principal a bare ARN",
        policy(statement(Principal="arn:aws:iam::210987654321:root")),
        [
            (
                f"{S0}.Principal",
                'must be "*" or an object such as {"AWS": "<account id or ARN>"}, '
                "got 'arn:aws:iam::210987654321:root'",
            )
        ],
    ),
    (
        "Principal empty",
        policy(statement(Principal={})),
        [(f"{S0}.Principal", "must name at least one principal")],
    ),
    (
        "Principal kind",
        policy(statement(Principal={"Aws": "*"})),
        [
            (
                f"{S0}.Principal.Aws",
                "is not a principal type; use AWS, Service, Federated, CanonicalUser",
            )
        ],
    ),
    (
        "AWS principal",
        policy(statement(Principal={"AWS": ["210987654321", "bob"]})),
        [(f"{S0}.Principal.AWS[1]", "must be '*', a 12-digit account id or an ARN, got 'bob'")],
    ),
    (
        "Principal and NotPrincipal",
        policy(statement(NotPrincipal="*")),
        [(f"{S0}.NotPrincipal", "cannot be given with Principal; keep one of the two")],
    ),
    (
        "Action missing",
        policy(statement(Action=None)),
        [(f"{S0}.Action", "is required (or NotAction)")],
    ),
    ("Action empty", policy(statement(Action=[])), [(f"{S0}.Action", "must not be an empty list")]),
    (
        "Action not a string",
        policy(statement(Action=["ecr:CreateRepository", 7])),
        [(f"{S0}.Action[1]", "must be a string, got a number")],
    ),
    (
        "Action outside ECR",
        policy(statement(Action=["s3:GetObject", "*"])),
        [
            (
                f"{S0}.Action[0]",
                "must be an ECR action such as 'ecr:ReplicateImage' or 'ecr:*', got 's3:GetObject'",
            ),
            (
                f"{S0}.Action[1]",
                "must be an ECR action such as 'ecr:ReplicateImage' or 'ecr:*', got '*'",
            ),
        ],
    ),
    (
        "Resource missing and wrong",
        policy(statement(Resource=None), statement(Sid="B", Resource=["repo/x"])),
        [
            (f"{S0}.Resource", "is required (or NotResource)"),
            (f"{P}.Statement[1].Resource[0]", "must be '*' or an ARN, got 'repo/x'"),
        ],
    ),
    (
        "duplicate Sid",
        policy(statement(), statement(Effect="Deny")),
        [(f"{P}.Statement[1].Sid", "'Replicate' is also the Sid of Statement[0]")],
    ),
    (
        "unknown statement element",
        policy(statement(Actions="ecr:*")),
        [(f"{S0}.Actions", "is not a statement element")],
    ),
    (
        "Condition shape",
        policy(statement(Condition={"StringEquals": "x"})),
        [
            (
                f"{S0}.Condition.StringEquals",
                "must be an object of condition keys, got the string 'x'",
            )
        ],
    ),
    (
        "nested too deep",
        policy(statement(Condition={"Bool": {"k": "v"}}, Sid="x")).replace(
            '"v"', "[" * 40 + "1" + "]" * 40
        ),
        [
            (f"{S0}.Condition.Bool.k" + "[0]" * 28, "is nested deeper than 32 levels"),
            (f"{S0}.Condition.Bool.k", "must be a string, number, boolean or a list of them"),
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [r[1:] for r in TABLE], ids=[r[0] for r in TABLE])
def test_each_rule_names_its_element(text: str, expected: list[tuple[str, str]]) -> None:
    assert violations(text) == expected


def test_v1_scope_allows_only_the_three_actions() -> None:
    text = policy(statement(Action=["ecr:ReplicateImage", "ecr:*", "ecr:DescribeImages"]))
    assert violations(text, "V1") == [
        (
            f"{S0}.Action[1]",
            "policy scope V1 allows only ecr:ReplicateImage, ecr:BatchImportUpstreamImage, "
            "ecr:CreateRepository; got 'ecr:*'",
        ),
        (
            f"{S0}.Action[2]",
            "policy scope V1 allows only ecr:ReplicateImage, ecr:BatchImportUpstreamImage, "
            "ecr:CreateRepository; got 'ecr:DescribeImages'",
        ),
    ]
    assert violations(text, "V2") == []


def test_v1_scope_refuses_not_action() -> None:
    # "Every action but these" grants actions V1 does not enforce.
    text = policy(statement(Action=None, NotAction="ecr:CreateRepository"))
    assert [path for path, _ in violations(text, "V1")] == [f"{S0}.NotAction"]


def test_every_problem_of_a_policy_at_once() -> None:
    text = policy(
        statement(Effect="Permit", Action=["s3:*"], Resource="bucket"),
        statement(Principal=None),
        Version="2013-01-01",
    )
    assert [path for path, _ in violations(text)] == [
        f"{P}.Version",
        f"{S0}.Effect",
        f"{S0}.Action[0]",
        f"{S0}.Resource",
        f"{P}.Statement[1].Sid",
        f"{P}.Statement[1].Principal",
    ]


def test_deep_json_is_refused_not_crashed() -> None:
    # Deeper than Python's recursion limit: the parser's RecursionError is a refusal.
    assert violations("[" * 100_000 + "]" * 100_000) == [
        (P, "is not valid JSON: nested too deeply")
    ]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_text_gives_a_list_of_violations_never_an_exception(text: str) -> None:
    result = check_policy(text, "V2")
    assert all(v.field.startswith(P) and v.description for v in result)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.dictionaries(st.sampled_from(["Version", "Statement", "Id", "Other"]), json_values))
def test_any_json_object_gives_violations_with_paths(document: dict[str, Any]) -> None:
    for v in check_policy(json.dumps(document), "V1"):
        assert v.field.startswith(P) and v.description
