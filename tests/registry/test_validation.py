"""RequestValidator: the AWS model's constraints, the gateway's own rules, all problems at once."""

from __future__ import annotations

from typing import Any

import botocore.session
import pytest
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from service.auth.targets import Target
from service.config import ECR_OPERATIONS, RegistryConfig
from service.ecr import regions
from service.ecr.policy_grammar import show
from service.errors import InvalidArgument
from service.gen.v1 import registry_pb2 as pb
from service.registry.rpcs.validation import MAX_VIOLATIONS, REASON, RequestValidator
from tests.support.helpers import ACCOUNT, POLICY

PARTNER = "210987654321"
EU = pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)
RULES = "replication_configuration.rules"
# Valid JSON and grammar, one character over the model's 10,240 (padding inside a string).
LONG_POLICY = POLICY.replace("repository/*", "repository/*" + " " * (10241 - len(POLICY)))


@pytest.fixture(scope="module")
def validator() -> RequestValidator:
    return RequestValidator()


def target(scope: str = "V2", region: str = "us-east-1") -> Target:
    registry = RegistryConfig.model_validate({"registry_id": ACCOUNT, "policy_scope": scope})
    return Target(tenant="payments", registry=registry, region=region)


def problems(
    validator: RequestValidator, request: Message, on: Target | None = None
) -> list[tuple[str, str]]:
    """The (path, description) of each violation; [] when the request is valid."""
    try:
        validator.check(request, on or target())
    except InvalidArgument as exc:
        assert exc.reason == REASON
        return [(v.field, v.description) for v in exc.field_violations]
    return []


def paths(validator: RequestValidator, request: Message, on: Target | None = None) -> list[str]:
    return [path for path, _ in problems(validator, request, on)]


def replication(*rules: pb.ReplicationRule, **kw: Any) -> pb.PutReplicationConfigurationRequest:
    return pb.PutReplicationConfigurationRequest(
        replication_configuration=pb.ReplicationConfiguration(rules=rules), **kw
    )


def dest(region: str = "eu-west-1", registry_id: str = ACCOUNT) -> pb.ReplicationDestination:
    return pb.ReplicationDestination(region=region, registry_id=registry_id)


def prefix(value: str, filter_type: str = "PREFIX_MATCH") -> pb.RepositoryFilter:
    return pb.RepositoryFilter(filter=value, filter_type=filter_type)


@pytest.mark.parametrize(
    "request_",
    [
        pb.DescribeRegistryRequest(),
        pb.DescribeRegistryRequest(registry_id=ACCOUNT, region="eu-west-1"),
        pb.GetRegistryPolicyRequest(region="cn-north-1"),
        pb.PutRegistryPolicyRequest(policy_text=POLICY, etag="absent", validate_only=True),
        pb.DeleteRegistryPolicyRequest(etag="abc"),
        replication(),  # no rules: replication off
        replication(pb.ReplicationRule(destinations=[EU])),  # no filters: every repository
        replication(
            pb.ReplicationRule(
                destinations=[EU, dest("us-west-2", PARTNER)],
                repository_filters=[prefix("prod/"), prefix("team-a_b.c")],
            ),
            pb.ReplicationRule(destinations=[EU], repository_filters=[prefix("ab")]),
        ),
    ],
    ids=lambda r: type(r).__name__,
)
def test_valid_requests_pass(validator: RequestValidator, request_: Message) -> None:
    assert problems(validator, request_) == []


# One row per rule: the request, then the exact (path, description) pairs it must give.
TABLE: list[tuple[str, Message, list[tuple[str, str]]]] = [
    (
        "registry id pattern",
        replication(pb.ReplicationRule(destinations=[EU, dest(registry_id="1234")])),
        [
            (
                f"{RULES}[0].destinations[1].registry_id",
                "must be 12 digits (an AWS account id), got '1234'",
            )
        ],
    ),
    (
        # The model's pattern is "[0-9]{12}", unanchored: a search would accept 13 digits.
        "registry id pattern is anchored",
        replication(pb.ReplicationRule(destinations=[dest(registry_id="1234567890123")])),
        [
            (
                f"{RULES}[0].destinations[0].registry_id",
                "must be 12 digits (an AWS account id), got '1234567890123'",
            )
        ],
    ),
    (
        "region pattern",
        replication(pb.ReplicationRule(destinations=[dest("EU-WEST-1")])),
        [
            (
                f"{RULES}[0].destinations[0].region",
                "must be a region name of lowercase letters, digits and '-', such as "
                "'eu-west-1', got 'EU-WEST-1'",
            )
        ],
    ),
    (
        "region length",
        replication(pb.ReplicationRule(destinations=[dest("x")])),
        [(f"{RULES}[0].destinations[0].region", "must be 2 to 25 characters, got 1 ('x')")],
    ),
    (
        "unknown region",
        replication(pb.ReplicationRule(destinations=[dest("mars-east-1")])),
        [
            (
                f"{RULES}[0].destinations[0].region",
                "is not an AWS region ECR serves, got 'mars-east-1'",
            )
        ],
    ),
    (
        "unknown request region",
        pb.DescribeRegistryRequest(region="mars-east-1"),
        [("region", "is not an AWS region ECR serves, got 'mars-east-1'")],
    ),
    (
        "destination fields required",
        replication(pb.ReplicationRule(destinations=[pb.ReplicationDestination()])),
        [
            (f"{RULES}[0].destinations[0].region", "is required"),
            (f"{RULES}[0].destinations[0].registry_id", "is required"),
        ],
    ),
    (
        "at most 10 rules",
        replication(*[pb.ReplicationRule(destinations=[EU]) for _ in range(11)]),
        [(RULES, "must hold at most 10 items, got 11")],
    ),
    (
        "at most 100 filters per rule",
        replication(
            pb.ReplicationRule(
                destinations=[EU], repository_filters=[prefix(f"p{i}") for i in range(101)]
            )
        ),
        [(f"{RULES}[0].repository_filters", "must hold at most 100 items, got 101")],
    ),
    (
        "filter length",
        replication(
            pb.ReplicationRule(
                destinations=[EU], repository_filters=[prefix("p"), prefix("a" * 257)]
            )
        ),
        [
            (
                f"{RULES}[0].repository_filters[0].filter",
                "must be 2 to 256 characters, got 1 ('p')",
            ),
            (
                f"{RULES}[0].repository_filters[1].filter",
                f"must be 2 to 256 characters, got 257 ({show('a' * 257)})",
            ),
        ],
    ),
    (
        "filter pattern",
        replication(pb.ReplicationRule(destinations=[EU], repository_filters=[prefix("Prod")])),
        [
            (
                f"{RULES}[0].repository_filters[0].filter",
                "must be a repository name prefix: lowercase letters and digits, separated by "
                "single '.', '_', '-' or '/', got 'Prod'",
            )
        ],
    ),
    (
        "filter type enum",
        replication(
            pb.ReplicationRule(
                destinations=[EU], repository_filters=[prefix("prod", "prefix"), prefix("ok", "")]
            )
        ),
        [
            (
                f"{RULES}[0].repository_filters[0].filter_type",
                "must be 'PREFIX_MATCH', got 'prefix'",
            ),
            (f"{RULES}[0].repository_filters[1].filter_type", "is required: 'PREFIX_MATCH'"),
        ],
    ),
    (
        "configuration required",
        pb.PutReplicationConfigurationRequest(),
        [("replication_configuration", "is required")],
    ),
    (
        "source registry as destination",
        replication(pb.ReplicationRule(destinations=[dest("us-east-1")])),
        [
            (
                f"{RULES}[0].destinations[0]",
                "is the source registry itself (123456789012 in us-east-1); replicate to "
                "another region or account",
            )
        ],
    ),
    (
        "duplicate destination in a rule",
        replication(pb.ReplicationRule(destinations=[EU, dest("us-west-2"), EU])),
        [(f"{RULES}[0].destinations[2]", "duplicates destinations[0] (123456789012 eu-west-1)")],
    ),
    (
        "policy required",
        pb.PutRegistryPolicyRequest(),
        [("policy_text", "is required")],
    ),
    (
        "policy length",
        pb.PutRegistryPolicyRequest(policy_text=LONG_POLICY),
        [("policy_text", f"must be at most 10240 characters, got 10241 ({show(LONG_POLICY)})")],
    ),
    (
        "policy grammar",
        pb.PutRegistryPolicyRequest(policy_text='{"Version": "2012-10-17"}'),
        [("policy_text.Statement", "is required: a statement object or a list of them")],
    ),
]


@pytest.mark.parametrize(
    ("request_", "expected"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE]
)
def test_each_rule_names_its_field(
    validator: RequestValidator, request_: Message, expected: list[tuple[str, str]]
) -> None:
    assert problems(validator, request_) == expected


def test_the_same_destination_in_two_rules_is_allowed(validator: RequestValidator) -> None:
    # Duplicates are refused within a rule; across rules, "unique destinations" are counted.
    request = replication(
        pb.ReplicationRule(destinations=[EU], repository_filters=[prefix("prod")]),
        pb.ReplicationRule(destinations=[EU], repository_filters=[prefix("team")]),
    )
    assert problems(validator, request) == []


def _accounts(n: int) -> list[str]:
    return [f"{100000000000 + i}" for i in range(n)]


def test_at_most_25_unique_destinations_across_rules(validator: RequestValidator) -> None:
    first = [dest("eu-west-1", a) for a in _accounts(13)]
    second = [dest("us-west-2", a) for a in _accounts(12)]
    ok = replication(
        pb.ReplicationRule(destinations=first), pb.ReplicationRule(destinations=second)
    )
    assert problems(validator, ok) == []
    over = replication(
        pb.ReplicationRule(destinations=first),
        pb.ReplicationRule(destinations=[*second, dest("us-west-1", ACCOUNT)]),
        pb.ReplicationRule(destinations=[first[0]]),  # repeated across rules: not counted twice
    )
    assert problems(validator, over) == [
        (
            RULES,
            "must name at most 25 unique destinations across all rules (an ECR quota), got 26",
        )
    ]


def test_empty_filters_are_absent_not_below_the_minimum(validator: RequestValidator) -> None:
    # The model says repositoryFilters holds at least 1 item; proto3's empty list is "absent".
    request = replication(pb.ReplicationRule(destinations=[EU], repository_filters=[]))
    assert problems(validator, request) == []


def test_every_problem_is_reported_at_once(validator: RequestValidator) -> None:
    request = replication(
        pb.ReplicationRule(
            destinations=[EU, dest("eu-west-1", "1234"), dest("us-east-1")],
            repository_filters=[prefix("p", "SUFFIX")],
        ),
        region="eu-west-1",
    )
    assert paths(validator, request, target(region="eu-west-1")) == [
        f"{RULES}[0].destinations[1].registry_id",
        f"{RULES}[0].repository_filters[0].filter",
        f"{RULES}[0].repository_filters[0].filter_type",
        f"{RULES}[0].destinations[0]",
    ]


def test_the_message_names_the_first_problem_and_counts_the_rest(
    validator: RequestValidator,
) -> None:
    request = replication(pb.ReplicationRule(destinations=[dest("x", "1"), dest("y", "2")]))
    with pytest.raises(InvalidArgument) as caught:
        validator.check(request, target())
    assert caught.value.message == (
        "invalid PutReplicationConfiguration request: "
        "replication_configuration.rules[0].destinations[0].region: must be 2 to 25 "
        "characters, got 1 ('x'); and 3 more problems"
    )
    assert caught.value.metadata == {"rpc": "PutReplicationConfiguration", "violations": "4"}


def test_violations_are_capped_but_counted(validator: RequestValidator) -> None:
    bad = [dest("x", str(i)) for i in range(100)]
    with pytest.raises(InvalidArgument) as caught:
        validator.check(replication(pb.ReplicationRule(destinations=bad)), target())
    assert len(caught.value.field_violations) == MAX_VIOLATIONS
    # 100 bad regions, 100 bad registry ids, and 100 unique destinations (quota 25).
    assert caught.value.metadata["violations"] == "201"
    assert f"({MAX_VIOLATIONS - 1} more listed in BadRequest)" in caught.value.message


def test_a_huge_list_is_refused_for_its_length_without_walking_it(
    validator: RequestValidator,
) -> None:
    # 200,000 destinations: only the first 100 (the model's maximum) are looked at.
    many = [pb.ReplicationDestination()] * 200_000
    with pytest.raises(InvalidArgument) as caught:
        validator.check(replication(pb.ReplicationRule(destinations=many)), target())
    assert caught.value.field_violations[0].field == f"{RULES}[0].destinations"
    assert caught.value.field_violations[0].description == "must hold at most 100 items, got 200000"
    assert caught.value.metadata["violations"] == str(1 + 2 * 100)


def test_allow_unknown_regions_lifts_only_the_region_list() -> None:
    lenient = RequestValidator(allow_unknown_regions=True)
    assert problems(lenient, pb.DescribeRegistryRequest(region="us-isof-south-1")) == []
    request = replication(pb.ReplicationRule(destinations=[dest("us-isob-east-1")]))
    assert problems(lenient, request) == []
    # The model's pattern still holds.
    assert paths(lenient, pb.DescribeRegistryRequest(region="Not A Region")) == ["region"]


def test_known_regions_come_from_botocore_for_the_public_partitions() -> None:
    known = regions.known_regions()
    assert {"us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1"} <= known
    assert "mars-east-1" not in known
    session = botocore.session.get_session()
    assert set(session.get_available_regions("ecr")) <= known


def test_injected_regions_replace_botocore_s() -> None:
    only = RequestValidator(known_regions=frozenset({"eu-west-1"}))
    assert paths(only, pb.DescribeRegistryRequest(region="us-east-1")) == ["region"]
    assert paths(only, pb.DescribeRegistryRequest(region="eu-west-1")) == []


def test_unknown_fields_on_a_write_are_named(validator: RequestValidator) -> None:
    # Field 9 (varint) at the top, field 11 inside rules[0], and policy_text's number
    # (1) sent as a varint: a client built from another version of the proto.
    request = pb.PutReplicationConfigurationRequest.FromString(
        replication(pb.ReplicationRule(destinations=[EU])).SerializeToString() + b"\x48\x01"
    )
    request.replication_configuration.rules[0].MergeFromString(b"\x58\x07")
    got = problems(validator, request)
    assert [p for p, _ in got] == ["9", f"{RULES}[0].11"]
    assert got[0][1].startswith("unknown field 9 (varint): this gateway's contract has no such")
    wrong_wire = pb.PutRegistryPolicyRequest.FromString(b"\x08\x01")
    assert problems(validator, wrong_wire)[0] == (
        "policy_text",
        "was sent as a varint value, which is not how this field is encoded; is the "
        "client's proto the same as the server's?",
    )


def test_unknown_fields_on_a_read_are_ignored(validator: RequestValidator) -> None:
    request = pb.DescribeRegistryRequest.FromString(b"\x48\x01\x52\x03abc")
    assert problems(validator, request) == []


def _model_required(shape: Any, descriptor: Descriptor, path: str) -> list[str]:
    fields = {f.json_name: f for f in descriptor.fields}
    missing = []
    for name, member in shape.members.items():
        field = fields.get(name)
        if field is None:
            if name in shape.required_members:
                missing.append(f"{path}{name}")
            continue
        inner = member.member if member.type_name == "list" else member
        if inner.type_name == "structure" and field.message_type is not None:
            missing += _model_required(inner, field.message_type, f"{path}{name}.")
    return missing


def test_every_required_aws_member_has_a_proto_field() -> None:
    # Members AWS adds later are skipped by the walk; a *required* one would be a request
    # the gateway could never make valid, so the contract must grow first.
    model = botocore.session.get_session().get_service_model("ecr")
    for rpc in ECR_OPERATIONS:
        shape = model.operation_model(rpc).input_shape
        descriptor = pb.DESCRIPTOR.message_types_by_name[f"{rpc}Request"]
        assert _model_required(shape, descriptor, "") == [], rpc


def test_policy_scope_comes_from_the_registry(validator: RequestValidator) -> None:
    policy = POLICY.replace("ecr:ReplicateImage", "ecr:DescribeImages")
    request = pb.PutRegistryPolicyRequest(policy_text=policy)
    assert problems(validator, request, target("V2")) == []
    assert problems(validator, request, target("V1")) == [
        (
            "policy_text.Statement[0].Action[1]",
            "policy scope V1 allows only ecr:ReplicateImage, ecr:BatchImportUpstreamImage, "
            "ecr:CreateRepository; got 'ecr:DescribeImages'",
        )
    ]


# --- properties ---------------------------------------------------------------------------

_KNOWN = sorted(regions.known_regions() - {"us-east-1"})
_ACCOUNT_IDS = st.from_regex(r"[0-9]{12}", fullmatch=True)
_FILTERS = st.from_regex(r"[a-z0-9]{2,10}(/[a-z0-9]{1,10}){0,3}/?", fullmatch=True)

destinations = st.builds(dest, st.sampled_from(_KNOWN), _ACCOUNT_IDS)
rules = st.builds(
    lambda ds, fs: pb.ReplicationRule(destinations=ds, repository_filters=fs),
    st.lists(destinations, min_size=1, max_size=3, unique_by=lambda d: (d.region, d.registry_id)),
    st.lists(st.builds(prefix, _FILTERS), max_size=3),
)
valid_configs = st.lists(rules, max_size=5).map(lambda rs: replication(*rs))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(valid_configs)
def test_generated_valid_configurations_pass(
    validator: RequestValidator, request: pb.PutReplicationConfigurationRequest
) -> None:
    assert problems(validator, request) == []


@settings(max_examples=150, deadline=None, derandomize=True)
@given(valid_configs, st.data())
def test_generated_broken_configurations_fail_naming_a_field(
    validator: RequestValidator, request: pb.PutReplicationConfigurationRequest, data: st.DataObject
) -> None:
    rules_ = request.replication_configuration.rules
    mutation = data.draw(
        st.sampled_from(["region", "registry_id", "filter", "filter_type", "rules"])
    )
    if mutation == "rules" or not rules_:
        for _ in range(11):
            rules_.add().destinations.append(EU)
        expected = RULES
    else:
        i = data.draw(st.integers(0, len(rules_) - 1))
        rule = rules_[i]
        if mutation in ("filter", "filter_type"):
            if not rule.repository_filters:
                rule.repository_filters.append(prefix("prod"))
            target_filter = rule.repository_filters[0]
            if mutation == "filter":
                target_filter.filter = data.draw(st.sampled_from(["a", "x" * 257, "UPPER", "a//b"]))
            else:
                target_filter.filter_type = data.draw(st.sampled_from(["SUFFIX", "prefix_match"]))
            expected = f"{RULES}[{i}].repository_filters[0].{mutation}"
        else:
            bad = data.draw(
                st.sampled_from(["1234", "12345678901a", "1234567890123"])
                if mutation == "registry_id"
                else st.sampled_from(["x", "EU-WEST-1", "mars-east-1", "a" * 26])
            )
            setattr(rule.destinations[0], mutation, bad)
            expected = f"{RULES}[{i}].destinations[0].{mutation}"
    assert expected in paths(validator, request)
