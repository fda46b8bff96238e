"""validate_only: the plan of what a write would change, every check of the real call, no write.

Each test sets the registry up with real writes, then counts the writes moto receives from
the dry run on: there must be none, and moto's state must be as it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeAlias

import grpc
import pytest

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.support.helpers import ACCOUNT, PARTNER_ACCOUNT, metadata, rich_error
from tests.support.moto_writes import MotoWrites, behave_like_ecr, configured, count_writes

EU = pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)
PARTNER = pb.ReplicationDestination(region="us-west-2", registry_id=PARTNER_ACCOUNT)
RULES = "replication_configuration.rules"
Stub: TypeAlias = "pb_grpc.RegistryConfigServiceAsyncStub"  # the async stub exists in the .pyi only


@pytest.fixture
def ecr_like(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto with ECR's limits: several rules, every ECR action (see
    tests/support/moto_writes.py)."""
    behave_like_ecr(monkeypatch)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> MotoWrites:
    """The write requests moto receives during the test."""
    return count_writes(monkeypatch)


def prefix(value: str) -> pb.RepositoryFilter:
    return pb.RepositoryFilter(filter=value, filter_type="PREFIX_MATCH")


def config(*rules: pb.ReplicationRule) -> pb.ReplicationConfiguration:
    return pb.ReplicationConfiguration(rules=rules)


def changes(response: Any) -> list[tuple[str, str, str]]:
    return [(c.action, c.path, c.description) for c in response.changes]


async def dry_run_replication(
    stub: Stub, configuration: pb.ReplicationConfiguration, **kw: Any
) -> pb.PutReplicationConfigurationResponse:
    response: pb.PutReplicationConfigurationResponse = await stub.PutReplicationConfiguration(
        pb.PutReplicationConfigurationRequest(
            replication_configuration=configuration, validate_only=True, **kw
        ),
        metadata=metadata(),
    )
    return response


CURRENT = config(
    pb.ReplicationRule(destinations=[EU], repository_filters=[prefix("prod"), prefix("team")]),
    pb.ReplicationRule(destinations=[PARTNER]),
)


async def set_current(stub: Stub, writes: MotoWrites) -> pb.PutReplicationConfigurationResponse:
    response: pb.PutReplicationConfigurationResponse = await stub.PutReplicationConfiguration(
        pb.PutReplicationConfigurationRequest(replication_configuration=CURRENT),
        metadata=metadata(),
    )
    writes.calls.clear()  # the setup's own write is not the dry run's
    return response


async def test_replication_plan_lists_additions(
    stub: Stub, ecr_like: None, writes: MotoWrites, aws_state: Callable[[], dict[str, Any]]
) -> None:
    current = await set_current(stub, writes)
    before = configured(aws_state())
    proposed = config(
        pb.ReplicationRule(
            destinations=[EU, PARTNER],
            repository_filters=[prefix("prod"), prefix("team"), prefix("infra/")],
        ),
        pb.ReplicationRule(destinations=[PARTNER]),
        pb.ReplicationRule(destinations=[EU], repository_filters=[prefix("base")]),
    )
    response = await dry_run_replication(stub, proposed)
    # Rules are matched by what they are: the rule to PARTNER is kept; the first rule,
    # changed, is another rule (removed at its current index, added at the request's).
    assert changes(response) == [
        (
            "remove",
            f"{RULES}[0]",
            f"rule: destination {ACCOUNT} eu-west-1, filter prod (PREFIX_MATCH), "
            "filter team (PREFIX_MATCH)",
        ),
        (
            "add",
            f"{RULES}[0]",
            f"rule: destination {ACCOUNT} eu-west-1, destination {PARTNER_ACCOUNT} us-west-2, "
            "filter prod (PREFIX_MATCH), filter team (PREFIX_MATCH), filter infra/ (PREFIX_MATCH)",
        ),
        (
            "add",
            f"{RULES}[2]",
            f"rule: destination {ACCOUNT} eu-west-1, filter base (PREFIX_MATCH)",
        ),
    ]
    # What the write would return: the proposed configuration, at the current etag.
    assert response.replication_configuration == proposed
    assert response.etag == current.etag
    assert response.registry_id == ACCOUNT
    assert writes.total == 0
    assert configured(aws_state()) == before


async def test_replication_plan_lists_removals(
    stub: Stub, ecr_like: None, writes: MotoWrites, aws_state: Callable[[], dict[str, Any]]
) -> None:
    await set_current(stub, writes)
    before = configured(aws_state())
    proposed = config(pb.ReplicationRule(destinations=[EU], repository_filters=[prefix("team")]))
    response = await dry_run_replication(stub, proposed)
    assert changes(response) == [
        (
            "remove",
            f"{RULES}[0]",
            f"rule: destination {ACCOUNT} eu-west-1, filter prod (PREFIX_MATCH), "
            "filter team (PREFIX_MATCH)",
        ),
        (
            "remove",
            f"{RULES}[1]",
            f"rule: destination {PARTNER_ACCOUNT} us-west-2, all repositories",
        ),
        (
            "add",
            f"{RULES}[0]",
            f"rule: destination {ACCOUNT} eu-west-1, filter team (PREFIX_MATCH)",
        ),
    ]
    cleared = await dry_run_replication(stub, config())
    assert [(a, p) for a, p, _ in changes(cleared)] == [
        ("remove", f"{RULES}[0]"),
        ("remove", f"{RULES}[1]"),
    ]
    assert writes.total == 0
    assert configured(aws_state()) == before


async def test_replication_plan_matches_rules_by_identity_not_position(
    stub: Stub, ecr_like: None, writes: MotoWrites, aws_state: Callable[[], dict[str, Any]]
) -> None:
    await set_current(stub, writes)
    before = configured(aws_state())
    first, second = CURRENT.rules
    # A rule inserted in front moves both: neither is removed, re-added or changed.
    new = pb.ReplicationRule(destinations=[EU], repository_filters=[prefix("base")])
    inserted = await dry_run_replication(stub, config(new, first, second))
    assert [(a, p) for a, p, _ in changes(inserted)] == [("add", f"{RULES}[0]")]
    # Filters and destinations in another order: the same rule.
    shuffled = pb.ReplicationRule(
        destinations=list(first.destinations), repository_filters=first.repository_filters[::-1]
    )
    assert changes(await dry_run_replication(stub, config(shuffled, second))) == []
    # The same rules in another order: one change, and nothing added or removed.
    swapped = await dry_run_replication(stub, config(second, first))
    assert changes(swapped) == [("change", RULES, "rule order: [1] to [0], [0] to [1]")]
    assert writes.total == 0
    assert configured(aws_state()) == before


async def test_replication_plan_of_a_no_op_is_empty(
    stub: Stub, ecr_like: None, writes: MotoWrites, aws_state: Callable[[], dict[str, Any]]
) -> None:
    current = await set_current(stub, writes)
    before = configured(aws_state())
    response = await dry_run_replication(stub, CURRENT, etag=current.etag)
    assert changes(response) == []
    assert response.etag == current.etag
    assert writes.total == 0
    assert configured(aws_state()) == before


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def grant(sid: str, *actions: str) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{PARTNER_ACCOUNT}:root"},
        "Action": list(actions),
        "Resource": f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/*",
    }


CURRENT_POLICY = policy(
    grant("Replicate", "ecr:ReplicateImage", "ecr:CreateRepository"),
    grant("Pull", "ecr:BatchGetImage"),
)


async def set_policy(stub: Stub, writes: MotoWrites) -> pb.PutRegistryPolicyResponse:
    response: pb.PutRegistryPolicyResponse = await stub.PutRegistryPolicy(
        pb.PutRegistryPolicyRequest(policy_text=CURRENT_POLICY), metadata=metadata()
    )
    writes.calls.clear()
    return response


async def dry_run_policy(stub: Stub, text: str, **kw: Any) -> pb.PutRegistryPolicyResponse:
    response: pb.PutRegistryPolicyResponse = await stub.PutRegistryPolicy(
        pb.PutRegistryPolicyRequest(policy_text=text, validate_only=True, **kw), metadata=metadata()
    )
    return response


async def test_policy_plan_lists_added_removed_and_changed_statements(
    stub: Stub, ecr_like: None, writes: MotoWrites, aws_state: Callable[[], dict[str, Any]]
) -> None:
    current = await set_policy(stub, writes)
    before = configured(aws_state())
    proposed = policy(
        grant("Replicate", "ecr:ReplicateImage"),  # changed: one action fewer
        grant("Import", "ecr:BatchImportUpstreamImage"),  # added; "Pull" removed
    )
    response = await dry_run_policy(stub, proposed)
    assert changes(response) == [
        ("remove", "policy_text.Statement[Sid=Pull]", "Allow ecr:BatchGetImage"),
        ("change", "policy_text.Statement[Sid=Replicate]", "Allow ecr:ReplicateImage"),
        ("add", "policy_text.Statement[Sid=Import]", "Allow ecr:BatchImportUpstreamImage"),
    ]
    assert response.policy_text == proposed
    assert response.etag == current.etag
    assert writes.total == 0
    assert configured(aws_state()) == before


async def test_policy_plan_of_a_first_policy_adds_every_statement(
    stub: Stub, ecr_like: None, writes: MotoWrites
) -> None:
    response = await dry_run_policy(stub, CURRENT_POLICY, etag="absent")
    assert [(a, p) for a, p, _ in changes(response)] == [
        ("add", "policy_text.Statement[Sid=Replicate]"),
        ("add", "policy_text.Statement[Sid=Pull]"),
    ]
    assert response.etag == "absent"
    assert writes.total == 0


async def test_policy_plan_of_a_no_op_is_empty(
    stub: Stub, ecr_like: None, writes: MotoWrites
) -> None:
    await set_policy(stub, writes)
    # Key order and whitespace differ; the statements do not.
    same = json.dumps(json.loads(CURRENT_POLICY), indent=2, sort_keys=True)
    assert changes(await dry_run_policy(stub, same)) == []
    assert writes.total == 0


async def test_delete_plan_removes_every_statement(
    stub: Stub, ecr_like: None, writes: MotoWrites, aws_state: Callable[[], dict[str, Any]]
) -> None:
    current = await set_policy(stub, writes)
    before = configured(aws_state())
    response = await stub.DeleteRegistryPolicy(
        pb.DeleteRegistryPolicyRequest(validate_only=True, etag=current.etag), metadata=metadata()
    )
    assert [(a, p) for a, p, _ in changes(response)] == [
        ("remove", "policy_text.Statement[Sid=Replicate]"),
        ("remove", "policy_text.Statement[Sid=Pull]"),
    ]
    assert response.policy_text == CURRENT_POLICY
    assert writes.total == 0
    assert configured(aws_state()) == before


@pytest.mark.parametrize(
    ("request_", "code", "reason"),
    [
        (
            pb.PutReplicationConfigurationRequest(
                replication_configuration=config(pb.ReplicationRule(destinations=[EU])),
                etag="stale",
            ),
            grpc.StatusCode.ABORTED,
            "ETAG_MISMATCH",
        ),
        (
            pb.PutReplicationConfigurationRequest(
                replication_configuration=config(
                    pb.ReplicationRule(
                        destinations=[
                            pb.ReplicationDestination(region="ap-south-1", registry_id=ACCOUNT)
                        ]
                    )
                )
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "DESTINATION_NOT_ALLOWED",
        ),
        (
            pb.PutReplicationConfigurationRequest(
                replication_configuration=config(pb.ReplicationRule(destinations=[EU, EU]))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
        ),
        (
            pb.PutRegistryPolicyRequest(
                policy_text=policy(grant("Open", "ecr:*") | {"Principal": "*"})
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "WILDCARD_PRINCIPAL",
        ),
        (
            pb.PutRegistryPolicyRequest(policy_text="{}"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
        ),
        (
            pb.PutRegistryPolicyRequest(policy_text=CURRENT_POLICY, etag="stale"),
            grpc.StatusCode.ABORTED,
            "ETAG_MISMATCH",
        ),
        (pb.DeleteRegistryPolicyRequest(), grpc.StatusCode.NOT_FOUND, "REGISTRY_POLICY_NOT_FOUND"),
    ],
    ids=[
        "stale-etag",
        "destination",
        "invalid",
        "guardrail",
        "policy-invalid",
        "policy-etag",
        "nothing-to-delete",
    ],
)
async def test_a_dry_run_fails_whenever_the_real_call_would(
    stub: Stub,
    writes: MotoWrites,
    aws_state: Callable[[], dict[str, Any]],
    request_: Any,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    before = configured(aws_state())
    rpc = type(request_).__name__.removesuffix("Request")
    answers = []
    for validate_only in (True, False):
        request_.validate_only = validate_only
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await getattr(stub, rpc)(request_, metadata=metadata())
        err = rich_error(caught.value)
        answers.append((err.code, err.info.reason))
    # The dry run and the real call fail alike, and neither wrote.
    assert answers == [(code, reason), (code, reason)]
    assert writes.total == 0
    assert configured(aws_state()) == before
