"""SliceOperations on the in-memory ECR: merges keep the others' parts in place, quotas judge
the caller's own share, plans and answers show the caller's slice only."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.config import PolicyGuardrails
from service.ecr import etags, limits
from service.errors import (
    EtagMismatch,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)
from service.gen.v1 import registry_pb2 as pb
from service.registry.model import slices
from service.registry.writes.operations import etag_read_before
from tests.registry.conftest import ACCOUNT, PARTNER, REGION, Domain, target

PAYMENTS = target()
BILLING = target("billing", prefixes=("billing/",), sid_prefix="Billing")
GUARDRAILS = PolicyGuardrails()
ARN = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/"


def rule(*filters: str, region: str = "eu-west-1", account: str = ACCOUNT) -> pb.ReplicationRule:
    return pb.ReplicationRule(
        destinations=[pb.ReplicationDestination(region=region, registry_id=account)],
        repository_filters=[
            pb.RepositoryFilter(filter=f, filter_type="PREFIX_MATCH") for f in filters
        ],
    )


def statement(sid: str, prefix: str) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{PARTNER}:root"},
        "Action": ["ecr:ReplicateImage"],
        "Resource": f"{ARN}{prefix}*",
    }


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def stored_statements(domain: Domain) -> list[Any]:
    text = domain.ecr.policy(ACCOUNT, REGION)
    return [] if text is None else list(json.loads(text)["Statement"])


BILLING_RULE = rule("billing/invoices")
UNOWNED_RULE = pb.ReplicationRule(
    destinations=[pb.ReplicationDestination(region="us-west-2", registry_id=ACCOUNT)]
)
OLD_RULE = rule("payments/old")
NEW_RULES = [rule("payments/api"), rule("payments/web", region="us-west-2")]


def seed_rules(domain: Domain, *rules: pb.ReplicationRule) -> None:
    domain.ecr.set_replication(ACCOUNT, REGION, pb.ReplicationConfiguration(rules=rules))


# --- replication rules ---------------------------------------------------------------------


async def test_put_rules_packs_the_callers_filters_with_the_others(domain: Domain) -> None:
    seed_rules(domain, BILLING_RULE, OLD_RULE, UNOWNED_RULE)
    written = await domain.slices.put_rules(PAYMENTS, NEW_RULES, "", False)
    stored = list(domain.ecr.replication(ACCOUNT, REGION).rules)
    # Packed: one rule per destination set (billing's filter and payments/api both go to
    # eu-west-1), rules by destination set; the rule without filters carried after.
    assert stored == [
        rule("billing/invoices", "payments/api"),
        rule("payments/web", region="us-west-2"),
        UNOWNED_RULE,
    ]
    # The answer is the caller's slice in its canonical form: the others' filters are not
    # in it, though they share its rule.
    assert list(written.response.rules) == NEW_RULES
    assert written.response.etag == slices.rules_etag(NEW_RULES)
    # The audit trail gets the etags of the whole configuration around the write.
    read = await domain.ops.describe_registry(PAYMENTS)
    assert read.cache_outcome == "hit"  # the read-back, written through
    assert written.etag_after == read.answer().etag != written.etag_before


async def test_the_packed_document_does_not_depend_on_the_order_of_writes(
    domain: Domain,
) -> None:
    billing_rules = [rule("billing/b", "billing/a"), rule("billing/a", region="us-west-2")]
    documents = []
    for order in ((PAYMENTS, BILLING), (BILLING, PAYMENTS)):
        seed_rules(domain, UNOWNED_RULE)
        for writer in order:
            mine = NEW_RULES if writer is PAYMENTS else billing_rules
            await domain.slices.put_rules(writer, mine, "", False)
        documents.append(domain.ecr.replication(ACCOUNT, REGION).SerializeToString())
    assert documents[0] == documents[1]
    # billing/a goes to both regions (the union of billing's rules naming it): a set of its own.
    assert list(domain.ecr.replication(ACCOUNT, REGION).rules) == [
        rule("billing/b", "payments/api"),
        rule("payments/web", region="us-west-2"),
        pb.ReplicationRule(
            destinations=[
                pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT),
                pb.ReplicationDestination(region="us-west-2", registry_id=ACCOUNT),
            ],
            repository_filters=[
                pb.RepositoryFilter(filter="billing/a", filter_type="PREFIX_MATCH")
            ],
        ),
        UNOWNED_RULE,
    ]


async def test_empty_rules_remove_only_the_callers(domain: Domain) -> None:
    seed_rules(domain, rule("billing/invoices", "payments/old"), UNOWNED_RULE)
    await domain.slices.put_rules(PAYMENTS, [], "", False)
    assert list(domain.ecr.replication(ACCOUNT, REGION).rules) == [BILLING_RULE, UNOWNED_RULE]


async def test_rules_outside_the_slice_are_refused_before_ecr(domain: Domain) -> None:
    for rules, reason in (
        ([rule("billing/x")], "RULE_NOT_OWNED"),
        ([rule("payments/a", "paymentsx/")], "RULE_NOT_OWNED"),
        ([UNOWNED_RULE], "RULE_WITHOUT_FILTER"),
        ([rule("payments/a", region="ap-south-1")], "DESTINATION_NOT_ALLOWED"),
    ):
        with pytest.raises(PermissionDenied) as caught:
            await domain.slices.put_rules(PAYMENTS, rules, "", False)
        assert caught.value.reason == reason
    assert domain.ecr.calls == []  # nothing read, nothing written


def both(*filters: str) -> pb.ReplicationRule:
    """A rule replicating `filters` to eu-west-1 and us-west-2."""
    two = rule(*filters)
    two.destinations.append(pb.ReplicationDestination(region="us-west-2", registry_id=ACCOUNT))
    return two


async def test_rule_share_is_the_callers_own(domain: Domain) -> None:
    small = target(share=limits.Share(rules=2, destinations=2, policy_chars=1000, filters=3))
    # Billing holds six filters in six sets of its own: they do not count against payments'.
    seed_rules(domain, *[rule(f"billing/{i}", account=f"{i:012d}") for i in range(6)])
    await domain.slices.put_rules(
        small, [rule("payments/a"), rule("payments/b", region="us-west-2")], "", False
    )
    # A third destination set is a third canonical rule: past a share of two. Refused alone,
    # RESOURCE_EXHAUSTED, naming its share.
    with pytest.raises(ResourceExhausted) as caught:
        await domain.slices.put_rules(
            small,
            [rule("payments/a"), rule("payments/b", region="us-west-2"), both("payments/c")],
            "",
            False,
        )
    assert caught.value.reason == "REPLICATION_QUOTA_EXCEEDED"
    [violation] = caught.value.quota_violations
    assert "share of tenant payments is 2" in violation.description
    # Filters in one rule count one by one: four pass a share of three.
    with pytest.raises(ResourceExhausted) as caught:
        await domain.slices.put_rules(
            small, [rule("payments/a", "payments/b", "payments/c", "payments/d")], "", False
        )
    [violation] = caught.value.quota_violations
    assert "is 3 repository filters" in violation.description
    # Many rules of one destination set are one canonical rule: within the share.
    await domain.slices.put_rules(
        small, [rule("payments/a"), rule("payments/b"), rule("payments/c")], "", False
    )
    # Two destinations pass a share of one unique destination.
    one = target(share=limits.Share(rules=2, destinations=1, policy_chars=1000))
    with pytest.raises(ResourceExhausted):
        await domain.slices.put_rules(
            one, [rule("payments/a"), rule("payments/b", region="us-west-2")], "", False
        )
    assert len(domain.ecr.writes()) == 2


async def test_a_catalog_refuses_a_destination_set_outside_it_alone(domain: Domain) -> None:
    eu = frozenset({(ACCOUNT, "eu-west-1")})
    cataloged = target(
        share=limits.Share(
            rules=10, destinations=2, policy_chars=1000, destination_sets=frozenset({eu})
        )
    )
    await domain.slices.put_rules(cataloged, [rule("payments/a")], "", False)
    # payments/b goes to eu-west-1 and us-west-2 (the union of the rules naming it).
    with pytest.raises(PermissionDenied) as caught:
        await domain.slices.put_rules(
            cataloged,
            [rule("payments/a"), rule("payments/b"), rule("payments/b", region="us-west-2")],
            "",
            False,
        )
    assert caught.value.reason == "DESTINATION_SET_NOT_IN_CATALOG"
    assert caught.value.metadata["field"] == "rules[1].destinations"
    assert "destination_sets" in caught.value.message
    assert len(domain.ecr.writes()) == 1


async def test_the_registry_wide_limit_is_a_backstop_that_names_counts_only(
    domain: Domain,
) -> None:
    # Nine rules without filters (a full write put them there, to nine destinations) are
    # carried as they are and leave room for one rule: payments' two sets do not fit.
    outside = [
        pb.ReplicationRule(
            destinations=[pb.ReplicationDestination(region="us-west-2", registry_id=f"{i:012d}")]
        )
        for i in range(9)
    ]
    seed_rules(domain, *outside)
    with pytest.raises(FailedPrecondition) as caught:
        await domain.slices.put_rules(PAYMENTS, NEW_RULES, "", False)
    assert caught.value.reason == "REPLICATION_QUOTA_EXCEEDED"
    assert "000000000003" not in caught.value.message  # the others' rules are not its to see
    assert etag_read_before(caught.value) is not None  # it had read the configuration
    assert domain.ecr.writes() == []


async def test_the_rules_etag_is_of_the_slice_only(domain: Domain) -> None:
    seed_rules(domain, OLD_RULE)
    mine = (await domain.slices.get_rules(PAYMENTS)).answer()
    # Billing writing its own rules does not move payments' etag ...
    await domain.slices.put_rules(BILLING, [BILLING_RULE], "", False)
    await domain.slices.put_rules(PAYMENTS, NEW_RULES, mine.etag, False)
    # ... but payments' own write does: the etag it read is stale now.
    with pytest.raises(EtagMismatch) as caught:
        await domain.slices.put_rules(PAYMENTS, [OLD_RULE], mine.etag, False)
    assert caught.value.metadata["currentEtag"] == slices.rules_etag(NEW_RULES)
    assert "the rules of payments" in caught.value.message


async def test_validate_only_rules_plan_the_callers_slice_only(domain: Domain) -> None:
    seed_rules(domain, BILLING_RULE, OLD_RULE, UNOWNED_RULE)
    planned = await domain.slices.put_rules(PAYMENTS, NEW_RULES, "", True)
    assert domain.ecr.writes() == []
    assert planned.etag_after is None
    assert list(planned.response.rules) == NEW_RULES
    assert planned.response.etag == slices.rules_etag([OLD_RULE])
    assert [(c.action, c.path) for c in planned.response.changes] == [
        ("remove", "rules[0]"),  # index in the caller's current rules, not the registry's
        ("add", "rules[0]"),
        ("add", "rules[1]"),
    ]
    assert not any("billing" in c.description for c in planned.response.changes)


async def test_aws_refusing_the_merge_withholds_its_text(domain: Domain) -> None:
    seed_rules(domain, BILLING_RULE)
    domain.ecr.fail_next["put_replication_configuration"] = InvalidArgument(
        "AWS refused the request: bad filter billing/invoices",
        reason="AWS_INVALID_PARAMETER",
        metadata={"awsErrorCode": "InvalidParameterException", "awsRequestId": "r-1"},
    )
    with pytest.raises(InvalidArgument) as caught:
        await domain.slices.put_rules(PAYMENTS, NEW_RULES, "", False)
    assert "billing" not in caught.value.message
    assert caught.value.metadata["awsRequestId"] == "r-1"  # for the operators
    # Still audited with the etag it had read, though it is another exception now.
    assert etag_read_before(caught.value) == etags.of_json(
        {
            "rules": [
                {
                    "destinations": [{"region": "eu-west-1", "registryId": ACCOUNT}],
                    "repositoryFilters": [
                        {"filter": "billing/invoices", "filterType": "PREFIX_MATCH"}
                    ],
                }
            ]
        }
    )


async def test_get_rules_answers_the_callers_rules_and_share(domain: Domain) -> None:
    seed_rules(domain, BILLING_RULE, OLD_RULE, UNOWNED_RULE)
    read = await domain.slices.get_rules(PAYMENTS)
    again = await domain.slices.get_rules(PAYMENTS)
    assert (read.cache_outcome, again.cache_outcome) == ("miss", "hit")
    answer = read.answer()
    assert list(answer.rules) == [OLD_RULE]
    assert (answer.rules_used, answer.rules_limit) == (1, limits.MAX_RULES)
    assert answer.unique_destinations_used == 1
    assert (answer.filters_used, answer.filters_limit) == (1, limits.WHOLE_REGISTRY.filters)


# --- policy statements ---------------------------------------------------------------------


async def test_put_statements_keeps_the_others_statements_in_place(domain: Domain) -> None:
    domain.ecr.set_policy(
        ACCOUNT,
        REGION,
        policy(
            statement("BillingA", "billing/"),
            statement("PaymentsOld", "payments/"),
            statement("Admin", "shared/"),
        ),
    )
    mine = [statement("PaymentsNew", "payments/api/")]
    written = await domain.slices.put_statements(PAYMENTS, GUARDRAILS, json.dumps(mine), "", False)
    assert [s["Sid"] for s in stored_statements(domain)] == ["BillingA", "PaymentsNew", "Admin"]
    assert json.loads(written.response.statements_json) == mine
    assert written.response.etag == slices.statements_etag(mine)
    assert written.etag_before != written.etag_after


async def test_no_statement_left_deletes_the_policy(domain: Domain) -> None:
    domain.ecr.set_policy(ACCOUNT, REGION, policy(statement("PaymentsOld", "payments/")))
    written = await domain.slices.put_statements(PAYMENTS, GUARDRAILS, "[]", "", False)
    assert domain.ecr.policy(ACCOUNT, REGION) is None
    assert [c.operation for c in domain.ecr.writes()] == ["delete_registry_policy"]
    assert written.etag_after == etags.ABSENT
    # Nothing to delete: nothing is written, and the answer is the same.
    again = await domain.slices.put_statements(PAYMENTS, GUARDRAILS, "[]", "", False)
    assert len(domain.ecr.writes()) == 1
    assert (again.etag_before, again.etag_after) == (etags.ABSENT, etags.ABSENT)


async def test_statements_outside_the_slice_are_refused_before_ecr(domain: Domain) -> None:
    for statements, reason in (
        ([statement("BillingX", "payments/")], "STATEMENT_NOT_OWNED"),
        ([statement("PaymentsX", "billing/")], "RESOURCE_NOT_OWNED"),
    ):
        with pytest.raises(PermissionDenied) as caught:
            await domain.slices.put_statements(
                PAYMENTS, GUARDRAILS, json.dumps(statements), "", False
            )
        assert caught.value.reason == reason
    assert domain.ecr.calls == []


async def test_guardrails_judge_the_callers_statements_only(domain: Domain) -> None:
    strict = PolicyGuardrails(principal_accounts=(PARTNER,))
    # Billing granted another account, which payments' guardrails would refuse ...
    foreign = statement("BillingFar", "billing/")
    foreign["Principal"] = {"AWS": "arn:aws:iam::999999999999:root"}
    domain.ecr.set_policy(ACCOUNT, REGION, policy(foreign))
    # ... yet payments' own write goes through.
    mine = [statement("PaymentsA", "payments/")]
    await domain.slices.put_statements(PAYMENTS, strict, json.dumps(mine), "", False)
    assert [s["Sid"] for s in stored_statements(domain)] == ["BillingFar", "PaymentsA"]


async def test_statement_share_is_the_callers_own(domain: Domain) -> None:
    mine = [statement("PaymentsA", "payments/")]
    chars = limits.statement_chars(mine)
    small = target(share=limits.Share(rules=1, destinations=1, policy_chars=chars))
    # Billing's long statements take no part of payments' share.
    domain.ecr.set_policy(
        ACCOUNT, REGION, policy(*[statement(f"Billing{i}", "billing/") for i in range(10)])
    )
    await domain.slices.put_statements(small, GUARDRAILS, json.dumps(mine), "", False)
    more = [*mine, statement("PaymentsB", "payments/")]
    with pytest.raises(FailedPrecondition) as caught:
        await domain.slices.put_statements(small, GUARDRAILS, json.dumps(more), "", False)
    assert caught.value.reason == "POLICY_QUOTA_EXCEEDED"
    assert f"share of tenant payments is {chars}" in caught.value.quota_violations[0].description


async def test_validate_only_statements_plan_the_callers_slice_only(domain: Domain) -> None:
    domain.ecr.set_policy(
        ACCOUNT,
        REGION,
        policy(statement("BillingA", "billing/"), statement("PaymentsOld", "payments/")),
    )
    mine = [statement("PaymentsNew", "payments/")]
    planned = await domain.slices.put_statements(PAYMENTS, GUARDRAILS, json.dumps(mine), "", True)
    assert domain.ecr.writes() == []
    assert planned.etag_after is None
    assert planned.response.etag == slices.statements_etag([statement("PaymentsOld", "payments/")])
    assert [(c.action, c.path) for c in planned.response.changes] == [
        ("remove", "statements_json[Sid=PaymentsOld]"),
        ("add", "statements_json[Sid=PaymentsNew]"),
    ]


async def test_others_statements_are_carried_as_aws_stores_them_not_judged(
    domain: Domain,
) -> None:
    # Issue 21, finding 6: what AWS holds of others is theirs and AWS's to judge, never the
    # gateway's grammar again (a deleted role's unique id must lock no one else out).
    deleted = statement("BillingCi", "billing/") | {"Principal": {"AWS": "AROAKSCDLFT9R5DQP782U"}}
    broken = statement("AdminBroken", "shared/") | {"Effect": "Perhaps"}  # outside the gateway
    domain.ecr.set_policy(ACCOUNT, REGION, policy(deleted, broken))
    mine = [statement("PaymentsA", "payments/")]
    await domain.slices.put_statements(PAYMENTS, GUARDRAILS, json.dumps(mine), "", False)
    assert stored_statements(domain) == [deleted, broken, *mine]


async def test_a_policy_that_is_no_json_object_is_not_merged_into_and_not_shown(
    domain: Domain,
) -> None:
    domain.ecr.set_policy(ACCOUNT, REGION, '["AdminBroken"]')  # written outside the gateway
    mine = [statement("PaymentsA", "payments/")]
    with pytest.raises(FailedPrecondition) as caught:
        await domain.slices.put_statements(PAYMENTS, GUARDRAILS, json.dumps(mine), "", False)
    assert caught.value.reason == "POLICY_NOT_MERGEABLE"
    assert "Admin" not in caught.value.message
    assert domain.ecr.writes() == []


async def test_get_statements_of_no_policy_is_an_empty_slice(domain: Domain) -> None:
    read = await domain.slices.get_statements(PAYMENTS)
    assert read.cache_outcome == "miss"
    answer = read.answer()
    assert (answer.statements_json, answer.etag) == ("[]", slices.statements_etag([]))
    domain.ecr.set_policy(
        ACCOUNT,
        REGION,
        policy(statement("BillingA", "billing/"), statement("PaymentsA", "payments/")),
    )
    fresh = (await domain.slices.get_statements(PAYMENTS, fresh=True)).answer()
    assert [s["Sid"] for s in json.loads(fresh.statements_json)] == ["PaymentsA"]
