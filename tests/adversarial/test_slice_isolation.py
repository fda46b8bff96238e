"""Slices of a shared registry against a hostile or unlucky neighbour: payments' writes are
judged on payments' statements and rules alone, stay inside payments' repositories and share
of ECR's limits, and never see, change or depend on billing's slice.

Each refusal is checked to leave AWS as it was (no write reached moto), and every answer
payments gets (message, ErrorInfo metadata, BadRequest, QuotaFailure, plan, response) and
every log line of its calls is checked for billing's data (tests/support/slices_support.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from moto.ecr.exceptions import InvalidParameterException
from moto.ecr.models import ECRBackend

from service.app.embedded import demo_config
from service.app.server import Gateway
from service.auth.api_keys import hash_key
from service.auth.targets import TargetAuthorizer
from service.config import ConfigError, from_mapping
from service.ecr import limits as ecr_limits
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.helpers import ACCOUNT, KEY, PARTNER_ACCOUNT, config_dict, metadata, rich_error
from tests.support.moto_writes import MotoWrites, behave_like_ecr, count_writes
from tests.support.slices_support import (
    BILLING_FAR,
    BILLING_FILTERS,
    BILLING_KEY,
    BILLING_PARTNER,
    BILLING_SECRETS,
    BILLING_SID,
    EU,
    PARTNER,
    aws_rule,
    billing_rules,
    billing_slice,
    billing_statement,
    isolation_config,
    leaked,
    quota_failure,
    repositories,
    rule,
    seed_billing,
    seed_policy,
    seed_rules,
    shared_config,
    statement,
    stored_rules,
    stored_sids,
)

OWN = repositories("payments/")  # arn:aws:ecr:us-east-1:<ACCOUNT>:repository/payments/*
ARN = f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/"


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> MotoWrites:
    """moto takes ECR's 10 rules and every ECR action; its write requests are counted."""
    behave_like_ecr(monkeypatch)
    return count_writes(monkeypatch)


async def stub_on(gateway: Gateway) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        yield pb_grpc.RegistryConfigServiceStub(channel)


@pytest.fixture
async def stub(gateway_factory: GatewayFactory, aws: str, writes: MotoWrites) -> AsyncIterator[Any]:
    """payments, billing (telling apart by guardrails and destinations) and platform."""
    async for s in stub_on(await gateway_factory(isolation_config(aws))):
        yield s


@pytest.fixture
def gateway_logs(caplog: pytest.LogCaptureFixture) -> Callable[[], str]:
    """Everything the gateway logged since the last call of the returned function."""
    caplog.set_level(logging.DEBUG, logger="registry_gateway")

    def text() -> str:
        lines = [f"{r.getMessage()} {r.__dict__}" for r in caplog.records]
        caplog.clear()
        return "\n".join(lines)

    return text


def put(statements: list[Any], **fields: Any) -> pb.PutPolicyStatementsRequest:
    return pb.PutPolicyStatementsRequest(statements_json=json.dumps(statements), **fields)


def own(sid: str = "PaymentsPull", **changes: Any) -> dict[str, Any]:
    """A statement of payments, granting its partner its own repositories, then `changes`."""
    found = statement(sid)
    assert found["Resource"] == OWN
    for key, value in changes.items():
        if value is None:
            del found[key]
        else:
            found[key] = value
    return found


async def billing_writes_its_slice(stub: Any) -> None:
    """Billing grants its partner and replicates far away, through the gateway."""
    await stub.PutPolicyStatements(put([billing_statement()]), metadata=metadata(BILLING_KEY))
    await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(rules=billing_rules()), metadata=metadata(BILLING_KEY)
    )


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# --- finding 3: the merged policy judged against the caller's guardrails ----------------


async def test_billings_grant_to_its_partner_never_locks_payments_out(
    stub: Any, writes: MotoWrites, gateway_logs: Callable[[], str]
) -> None:
    await billing_writes_its_slice(stub)
    before = billing_slice()
    gateway_logs()
    answers = [
        await stub.PutPolicyStatements(put([]), metadata=metadata(KEY)),
        await stub.PutPolicyStatements(put([own()]), metadata=metadata(KEY)),
        await stub.PutPolicyStatements(
            put([own("PaymentsOther")], validate_only=True), metadata=metadata(KEY)
        ),
        await stub.PutPolicyStatements(put([]), metadata=metadata(KEY)),
    ]
    assert [leaked(a) for a in answers] == [[], [], [], []]
    assert BILLING_PARTNER not in gateway_logs()
    assert stored_sids() == [BILLING_SID]
    assert billing_slice() == before


async def test_payments_own_grant_is_judged_at_its_own_position(stub: Any) -> None:
    await billing_writes_its_slice(stub)
    stranger = own("PaymentsStranger", Principal={"AWS": "arn:aws:iam::777788889999:root"})
    error = rich_error(
        await refused(stub.PutPolicyStatements(put([own(), stranger]), metadata=metadata(KEY)))
    )
    assert (error.code, error.info.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PRINCIPAL_NOT_ALLOWED",
    )
    # The path into what payments sent, not into the merged policy.
    assert error.info.metadata["field"] == "statements_json[1]"
    assert "777788889999" in error.message
    assert BILLING_PARTNER not in error.message


# --- finding 4: slice statements confined to the owner's repositories -------------------


@pytest.mark.parametrize("effect", ["Allow", "Deny"])
@pytest.mark.parametrize(
    ("resource", "field"),
    [
        (f"{ARN}billing/*", "Resource"),  # another tenant's repositories
        ("*", "Resource"),  # every resource
        (f"{ARN}*", "Resource"),  # every repository of the registry
        (f"{ARN}payments*", "Resource"),  # also paymentsx, payments-archive
        (f"{ARN}pay?ents/*", "Resource"),  # IAM's ? matches any one character
        (f"{ARN}payments?/*", "Resource"),  # ... such as paymentsx/
        (f"{ARN}payment*/x", "Resource"),
        (f"arn:aws:ecr:us-east-1:{ACCOUNT}:*", "Resource"),
        (f"arn:aws:ecr:*:{ACCOUNT}:repository/payments/*", "Resource"),  # every region
        (f"arn:aws:ecr:eu-west-1:{ACCOUNT}:repository/payments/*", "Resource"),  # another
        ("arn:aws:ecr:us-east-1:111111111111:repository/payments/*", "Resource"),  # account
        (f"arn:aws-cn:ecr:us-east-1:{ACCOUNT}:repository/payments/*", "Resource"),
        (f"{ARN}Payments/*", "Resource"),  # another name: ARNs match case-sensitively
        ([OWN, f"{ARN}billing/x"], "Resource[1]"),  # one of a list
        ([f"{ARN}invoices/*", OWN], "Resource[0]"),
    ],
    ids=[
        "billing",
        "star",
        "registry",
        "payments-star",
        "question-mark",
        "question-mark-before-slash",
        "star-before-slash",
        "registry-star",
        "any-region",
        "other-region",
        "other-account",
        "other-partition",
        "other-case",
        "list-second",
        "list-first",
    ],
)
async def test_statements_outside_the_owners_repositories_are_refused(
    stub: Any,
    writes: MotoWrites,
    aws_state: Callable[[], dict[str, Any]],
    resource: Any,
    field: str,
    effect: str,
) -> None:
    seed_billing()
    before = aws_state()
    error = await refused(
        stub.PutPolicyStatements(
            put([own(Effect=effect, Resource=resource)]), metadata=metadata(KEY)
        )
    )
    details = rich_error(error)
    assert (details.code, details.info.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "RESOURCE_NOT_OWNED",
    )
    assert details.info.metadata["field"] == f"statements_json[0].{field}"
    assert f"{ARN}payments/*" in details.message  # what payments may name instead
    assert leaked(error) == []
    assert aws_state() == before
    assert writes.total == 0


@pytest.mark.parametrize("effect", ["Allow", "Deny"])
@pytest.mark.parametrize(
    ("negated", "replaces"),
    [
        ("NotPrincipal", {"AWS": f"arn:aws:iam::{PARTNER_ACCOUNT}:root"}),
        ("NotResource", f"{ARN}payments/private/*"),
        ("NotAction", "ecr:DeleteRepository"),
    ],
)
async def test_negated_elements_are_refused_in_slices(
    stub: Any,
    writes: MotoWrites,
    aws_state: Callable[[], dict[str, Any]],
    negated: str,
    replaces: Any,
    effect: str,
) -> None:
    seed_billing()
    before = aws_state()
    positive = negated.removeprefix("Not")
    sent = own(Effect=effect, **{positive: None, negated: replaces})
    error = await refused(stub.PutPolicyStatements(put([sent]), metadata=metadata(KEY)))
    details = rich_error(error)
    assert (details.code, details.info.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "NEGATED_ELEMENT_NOT_ALLOWED",
    )
    assert details.info.metadata["field"] == f"statements_json[0].{negated}"
    assert leaked(error) == []
    assert aws_state() == before
    assert writes.total == 0


async def test_a_statement_without_resource_is_invalid(stub: Any, writes: MotoWrites) -> None:
    error = rich_error(
        await refused(stub.PutPolicyStatements(put([own(Resource=None)]), metadata=metadata(KEY)))
    )
    assert (error.code, error.info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert error.bad_request is not None
    assert [v.field for v in error.bad_request.field_violations] == ["statements_json[0].Resource"]
    assert writes.total == 0


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"Resource": f"{ARN}payments/api"},
        {"Resource": [f"{ARN}payments/a", f"{ARN}payments/b*"]},
        {"Resource": f"{ARN}payments/a?i"},
        {"Effect": "Deny", "Principal": "*", "Action": "ecr:*"},  # narrows its own only
    ],
    ids=["star-inside", "one", "list", "question-mark-inside", "deny-everyone"],
)
async def test_statements_inside_the_owners_repositories_are_written(
    stub: Any, writes: MotoWrites, changes: dict[str, Any]
) -> None:
    seed_billing()
    sent = own(**changes)
    response = await stub.PutPolicyStatements(put([sent]), metadata=metadata(KEY))
    assert json.loads(response.statements_json) == [sent]
    assert stored_sids() == [BILLING_SID, "PaymentsPull"]
    assert billing_slice()[1] == [billing_statement()]
    assert leaked(response) == []


# --- the merged document: others' parts never decide, and are never shown ---------------


async def test_out_of_band_statements_of_others_never_block_a_slice_write(
    stub: Any, writes: MotoWrites
) -> None:
    # What no slice may write, but an admin (or the console) left in billing's Sids.
    wide = [
        billing_statement() | {"Resource": "*", "Principal": "*"},
        {
            "Sid": "BillingSecretDeny",
            "Effect": "Deny",
            "NotPrincipal": {"AWS": f"arn:aws:iam::{BILLING_PARTNER}:root"},
            "NotAction": "ecr:ReplicateImage",
            "Resource": "*",
        },
    ]
    seed_policy(*wide)
    response = await stub.PutPolicyStatements(put([own()]), metadata=metadata(KEY))
    assert leaked(response) == []
    assert billing_slice()[1] == wide
    assert stored_sids() == [BILLING_SID, "BillingSecretDeny", "PaymentsPull"]


async def test_an_invalid_statement_of_another_tenant_is_aws_to_judge_and_never_quoted(
    stub: Any,
    writes: MotoWrites,
    monkeypatch: pytest.MonkeyPatch,
    aws_state: Callable[[], dict[str, Any]],
) -> None:
    # Others' statements are carried as AWS stores them, never judged again by the gateway
    # (issue 21, finding 6: a rule they cannot meet now must lock no one else out): AWS, which
    # took them, judges the merged whole, and its refusal never quotes it.
    theirs = billing_statement() | {"Action": "s3:GetObject"}  # not a registry action
    seed_policy(theirs)
    before = aws_state()
    takes = ECRBackend.put_registry_policy

    def refuse(self: ECRBackend, policy_text: str) -> None:
        raise InvalidParameterException(f"bad policy: {policy_text}")

    monkeypatch.setattr(ECRBackend, "put_registry_policy", refuse)
    error = await refused(stub.PutPolicyStatements(put([own()]), metadata=metadata(KEY)))
    details = rich_error(error)
    assert (details.code, details.info.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "AWS_INVALID_PARAMETER",
    )
    assert "s3:GetObject" not in details.message
    assert leaked(error) == []
    assert aws_state() == before
    # Where AWS takes it, payments' write goes through beside it, billing's part untouched.
    monkeypatch.setattr(ECRBackend, "put_registry_policy", takes)
    await stub.PutPolicyStatements(put([own()]), metadata=metadata(KEY))
    assert billing_slice()[1] == [theirs]
    assert stored_sids() == [BILLING_SID, "PaymentsPull"]


async def test_an_invalid_rule_of_another_tenant_fails_without_its_content(
    stub: Any, writes: MotoWrites, aws_state: Callable[[], dict[str, Any]]
) -> None:
    seed_rules(aws_rule("billing/Ledger-UPPER"))  # a filter ECR's model refuses
    before = aws_state()
    error = await refused(
        stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=[rule("payments/a")]), metadata=metadata(KEY)
        )
    )
    details = rich_error(error)
    assert (details.code, details.info.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "REPLICATION_NOT_MERGEABLE",
    )
    assert "Ledger" not in details.message + json.dumps(dict(details.info.metadata))
    assert details.bad_request is None
    assert aws_state() == before
    assert writes.total == 0


async def test_aws_refusing_the_merged_write_never_quotes_it(
    stub: Any,
    writes: MotoWrites,
    monkeypatch: pytest.MonkeyPatch,
    aws_state: Callable[[], dict[str, Any]],
) -> None:
    seed_billing()
    before = aws_state()

    def refuse(self: ECRBackend, replication_config: dict[str, Any]) -> None:
        # AWS's text may quote what it was sent: the merged whole, billing's part included.
        raise InvalidParameterException(f"bad rule: {json.dumps(replication_config)}")

    monkeypatch.setattr(ECRBackend, "put_replication_configuration", refuse)
    error = await refused(
        stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=[rule("payments/a")]), metadata=metadata(KEY)
        )
    )
    details = rich_error(error)
    assert (details.code, details.info.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "AWS_INVALID_PARAMETER",
    )
    assert details.info.metadata["awsErrorCode"] == "InvalidParameterException"
    assert details.info.metadata["awsRequestId"]
    assert leaked(error) == []
    assert aws_state() == before


# --- finding 5: plans of the caller's slice, by identity ---------------------------------


async def test_a_rules_plan_shows_only_the_callers_slice(
    stub: Any, writes: MotoWrites, gateway_logs: Callable[[], str]
) -> None:
    seed_rules(
        aws_rule(
            BILLING_FILTERS[0], registry_id=BILLING_FAR.registry_id, region=BILLING_FAR.region
        ),
        aws_rule("payments/a"),
        aws_rule(BILLING_FILTERS[1]),
    )
    gateway_logs()
    emptied = await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(validate_only=True), metadata=metadata(KEY)
    )
    assert [(c.action, c.path) for c in emptied.changes] == [("remove", "rules[0]")]
    assert "payments/a" in emptied.changes[0].description
    assert list(emptied.rules) == []
    assert leaked(emptied) == []
    # With no rules of its own, emptying its slice changes nothing, whatever billing holds.
    seed_rules(
        aws_rule(BILLING_FILTERS[0], registry_id=BILLING_FAR.registry_id, region=BILLING_FAR.region)
    )
    nothing = await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(validate_only=True), metadata=metadata(KEY)
    )
    assert list(nothing.changes) == []
    assert leaked(nothing) == []
    assert not [s for s in BILLING_SECRETS if s in gateway_logs()]
    assert writes.total == 0


async def test_a_rules_plan_compares_canonical_forms(stub: Any, writes: MotoWrites) -> None:
    seed_rules(
        aws_rule(BILLING_FILTERS[1]),
        aws_rule("payments/a"),
        aws_rule("payments/b", "payments/c", registry_id=PARTNER_ACCOUNT, region="us-west-2"),
    )

    async def plan(*rules: pb.ReplicationRule) -> list[tuple[str, str]]:
        response = await stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=rules, validate_only=True), metadata=metadata(KEY)
        )
        assert leaked(response) == []
        return [(c.action, c.path) for c in response.changes]

    # Its canonical rules: payments/a to EU, then payments/b and payments/c to PARTNER.
    # Dropping payments/a removes its rule; the other, moved up, is not "changed".
    assert await plan(rule("payments/b", "payments/c", to=PARTNER)) == [("remove", "rules[0]")]
    # Filters in another order, rules in another order: the same canonical form.
    assert await plan(rule("payments/a"), rule("payments/c", "payments/b", to=PARTNER)) == []
    assert await plan(rule("payments/c", "payments/b", to=PARTNER), rule("payments/a")) == []
    # payments/a to PARTNER as well: its destination set changes, so does its rule.
    assert await plan(
        rule("payments/a"), rule("payments/a", "payments/b", "payments/c", to=PARTNER)
    ) == [
        ("remove", "rules[0]"),
        ("add", "rules[1]"),
    ]
    assert writes.total == 0


async def test_a_statements_plan_shows_only_the_callers_slice(
    stub: Any, writes: MotoWrites
) -> None:
    seed_policy(billing_statement(), own("PaymentsOld"))
    response = await stub.PutPolicyStatements(put([], validate_only=True), metadata=metadata(KEY))
    assert [(c.action, c.path) for c in response.changes] == [
        ("remove", "statements_json[Sid=PaymentsOld]")
    ]
    assert leaked(response) == []
    assert writes.total == 0


# --- reads ----------------------------------------------------------------------------------


async def test_reads_show_only_the_callers_slice_and_share(stub: Any) -> None:
    await billing_writes_its_slice(stub)
    await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(rules=[rule("payments/a")]), metadata=metadata(KEY)
    )
    rules = await stub.GetReplicationRules(pb.GetReplicationRulesRequest(), metadata=metadata(KEY))
    statements = await stub.GetPolicyStatements(
        pb.GetPolicyStatementsRequest(), metadata=metadata(KEY)
    )
    assert list(rules.rules) == [rule("payments/a")]
    # Its own use of its own share: billing's two rules and two destinations are not counted.
    # Without a catalog, the two slices can reach more destination sets than ECR has rules
    # (every subset of their allow-lists): five canonical rules each, so ten sets at most,
    # over which 109 filters always fit ten rules: 54 each.
    assert (rules.rules_used, rules.rules_limit) == (1, 5)
    assert (rules.unique_destinations_used, rules.unique_destinations_limit) == (1, 3)
    assert (rules.filters_used, rules.filters_limit) == (1, 54)
    assert json.loads(statements.statements_json) == []
    assert leaked(rules) == leaked(statements) == []


# --- shares of ECR's limits ---------------------------------------------------------------


async def test_payments_filling_its_share_is_refused_and_billing_still_writes(
    stub: Any, writes: MotoWrites
) -> None:
    # 54 filters each (service/ecr/limits.py: ten destination sets reachable, so 109
    # filters in all always fit ten rules once packed).
    five = [rule(*(f"payments/r{i}" for i in range(54)))]
    await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(rules=five), metadata=metadata(KEY)
    )
    writes.calls.clear()
    error = await refused(
        stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=[*five, rule("payments/r54")]),
            metadata=metadata(KEY),
        )
    )
    details = rich_error(error)
    assert (details.code, details.info.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "REPLICATION_QUOTA_EXCEEDED",
    )
    (violation,) = quota_failure(error).violations
    assert violation.subject.startswith("tenant payments on registry")
    assert "share of tenant payments is 54 repository filters" in violation.description
    assert writes.total == 0
    # Billing's share is its own: payments filling its part leaves billing's free, in five
    # destination sets (five canonical rules, its whole share of rules too).
    far = pb.ReplicationDestination(region=BILLING_FAR.region, registry_id=BILLING_FAR.registry_id)
    billing_five = [
        rule("billing/r0"),
        rule("billing/r1", to=PARTNER),
        rule("billing/r2", to=far),
        pb.ReplicationRule(
            destinations=[EU, PARTNER], repository_filters=rule("billing/r3").repository_filters
        ),
        pb.ReplicationRule(
            destinations=[EU, far], repository_filters=rule(BILLING_FILTERS[1]).repository_filters
        ),
    ]
    await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(rules=billing_five), metadata=metadata(BILLING_KEY)
    )
    assert len(stored_rules()) == 5  # packed: payments' filters share billing's EU rule
    # And billing's full share never refuses payments' rewrite of its own five.
    await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(rules=five[::-1]), metadata=metadata(KEY)
    )


def with_shares(aws: str, **shares: dict[str, int]) -> dict[str, Any]:
    raw = isolation_config(aws)
    for tenant in raw["tenants"]:
        tenant["registries"][0].update(shares.get(tenant["name"], {}))
    return raw


async def test_a_destination_share_is_the_callers_own(
    gateway_factory: GatewayFactory, aws: str, writes: MotoWrites
) -> None:
    raw = with_shares(aws, payments={"max_destinations": 1})
    async for stub in stub_on(await gateway_factory(raw)):
        two = pb.ReplicationRule(
            destinations=[EU, PARTNER],
            repository_filters=rule("payments/a").repository_filters,
        )
        error = await refused(
            stub.PutReplicationRules(
                pb.PutReplicationRulesRequest(rules=[two]), metadata=metadata(KEY)
            )
        )
        (violation,) = quota_failure(error).violations
        assert violation.subject == (
            f"tenant payments on registry {ACCOUNT} in us-east-1: unique replication destinations"
        )
        assert "share of tenant payments is 1 of the 25" in violation.description
        # Billing, with the 24 left, writes two of its own.
        await stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=billing_rules()), metadata=metadata(BILLING_KEY)
        )
        assert writes.calls["put_replication_configuration"] == 1


async def test_a_policy_share_is_the_callers_own(
    gateway_factory: GatewayFactory, aws: str, writes: MotoWrites
) -> None:
    raw = with_shares(aws, payments={"max_policy_chars": 600})
    async for stub in stub_on(await gateway_factory(raw)):
        # Billing may take the rest (10,201 - 600) and uses a good part of it.
        big = [statement(f"Billing{i}", account=BILLING_PARTNER) for i in range(20)]
        await stub.PutPolicyStatements(put(big), metadata=metadata(BILLING_KEY))
        error = await refused(
            stub.PutPolicyStatements(
                put([own(f"Payments{i}") for i in range(3)]), metadata=metadata(KEY)
            )
        )
        details = rich_error(error)
        assert (details.code, details.info.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "POLICY_QUOTA_EXCEEDED",
        )
        (violation,) = quota_failure(error).violations
        assert "share of tenant payments is 600 of the 10240 characters" in violation.description
        assert leaked(error) == []
        # Within its share, payments writes beside billing's 20 statements.
        await stub.PutPolicyStatements(put([own()]), metadata=metadata(KEY))
        assert len(stored_sids() or []) == 21


async def test_a_policy_full_of_unowned_statements_refuses_with_counts_only(
    stub: Any, writes: MotoWrites, aws_state: Callable[[], dict[str, Any]]
) -> None:
    # An admin's full policy, with Sids no slice owns, took nearly all 10,240 characters.
    unowned = [statement(f"Admin{i}") | {"Resource": f"{ARN}admin-secret-{i}/*"} for i in range(46)]
    seed_policy(*unowned)
    before = aws_state()
    error = await refused(stub.PutPolicyStatements(put([own()]), metadata=metadata(KEY)))
    details = rich_error(error)
    assert (details.code, details.info.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "POLICY_QUOTA_EXCEEDED",
    )
    (violation,) = quota_failure(error).violations
    assert violation.subject == f"registry {ACCOUNT} in us-east-1: registry policy characters"
    assert "admin-secret" not in details.message + violation.description
    assert "Admin" not in details.message + violation.description
    assert aws_state() == before
    assert writes.total == 0


# --- config: shares that fit, and slice writers that own a slice ---------------------------


def shares_of(raw: dict[str, Any]) -> dict[str, ecr_limits.Share]:
    authorizer = TargetAuthorizer(from_mapping(raw, environ={}))
    tenants = {t.name: t for t in from_mapping(raw, environ={}).tenants}
    return {
        name: authorizer.authorize(tenants[name], "GetReplicationRules", ACCOUNT, "").share
        for name in ("payments", "billing")
    }


def test_equal_and_explicit_shares(aws: str) -> None:
    # Every subset of their allow-lists (three and two destinations) makes eight destination
    # sets: few enough for ECR's rules, so no rule share is needed (each may hold ten), and
    # the filters that always pack into ten rules over eight sets (307) are split.
    assert shares_of(shared_config(aws)) == {
        "payments": ecr_limits.Share(rules=10, destinations=3, policy_chars=5100, filters=153),
        "billing": ecr_limits.Share(rules=10, destinations=2, policy_chars=5100, filters=153),
    }
    # isolation_config lets billing reach a third destination: ten sets and more, so the
    # rules are shared out (and then the filters: 109 over ten sets).
    explicit = with_shares(aws, payments={"max_rules": 6, "max_policy_chars": 1000})
    assert shares_of(explicit) == {
        "payments": ecr_limits.Share(rules=6, destinations=3, policy_chars=1000, filters=54),
        "billing": ecr_limits.Share(rules=4, destinations=3, policy_chars=9201, filters=54),
    }


def refusal(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        from_mapping(raw, environ={})
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("shares", "expected"),
    [
        (
            {"payments": {"max_rules": 6}, "billing": {"max_rules": 5}},
            f"registry {ACCOUNT}: the max_rules of tenants payments 6, billing 5 add up to 11",
        ),
        (
            {"payments": {"max_filters": 60}, "billing": {"max_filters": 50}},
            "the max_filters of tenants payments 60, billing 50 add up to 110, more than the "
            "109 repository filters that always pack into the 10 replication rules",
        ),
        (
            {"payments": {"max_policy_chars": 10000}, "billing": {"max_policy_chars": 202}},
            "the max_policy_chars of tenants payments 10000, billing 202 add up to 10202",
        ),
        (
            {"payments": {"max_rules": 10}},
            f"registry {ACCOUNT}: 0 of the 10 replication rules ECR allows per registry are "
            "left after the explicit max_rules, too few to split among tenants billing",
        ),
    ],
    ids=["rules", "filters", "policy-chars", "nothing-left"],
)
def test_shares_that_do_not_fit_are_refused(
    aws: str, shares: dict[str, dict[str, int]], expected: str
) -> None:
    assert expected in refusal(with_shares(aws, **shares))


def test_a_share_without_its_slice_is_refused(aws: str) -> None:
    raw = shared_config(aws)
    raw["tenants"][3]["registries"][0]["max_rules"] = 2  # platform holds no slice
    assert (
        f"tenant platform: max_rules on registry {ACCOUNT} limits a slice it does not hold"
        in refusal(raw)
    )


@pytest.mark.parametrize(
    ("rpc", "drop", "missing"),
    [
        ("PutPolicyStatements", "owned_repository_prefixes", "owned_repository_prefixes"),
        ("PutPolicyStatements", "owned_statement_sid_prefix", "owned_statement_sid_prefix"),
        ("PutReplicationRules", "owned_repository_prefixes", "owned_repository_prefixes"),
    ],
)
def test_a_slice_writer_without_a_slice_is_refused(
    aws: str, rpc: str, drop: str, missing: str
) -> None:
    raw = shared_config(aws)
    billing = raw["tenants"][2]["registries"][0]
    billing["operations"] = ["GetReplicationRules", "GetPolicyStatements", rpc]
    del billing[drop]
    message = refusal(raw)
    assert f"tenant billing may call {rpc} on registry {ACCOUNT} but has no {missing}" in message


def test_many_slices_split_to_nothing_are_refused(aws: str) -> None:
    # Eleven teams, each allowed a destination of its own: twelve destination sets in all
    # (each destination alone, and none), more than ECR's rules, and no catalog to share.
    raw = config_dict(aws)
    raw["tenants"] = [
        {
            "name": f"team{i}",
            "api_keys": [hash_key(f"key-{i}")],
            "registries": [
                {
                    "registry_id": ACCOUNT,
                    "owned_repository_prefixes": [f"team{i}/"],
                    "replication_destinations": [
                        {"registry_id": f"{i + 1:012d}", "regions": ["eu-west-1"]}
                    ],
                }
            ],
        }
        for i in range(11)
    ]
    assert "too few to split among tenants team0, team1" in refusal(raw)


def test_todays_configs_still_load(aws: str) -> None:
    for raw in (config_dict(aws), shared_config(aws), isolation_config(aws)):
        from_mapping(raw, environ={})
    demo = demo_config(aws, "demo-key", environ={})
    (registry,) = demo.tenants[0].registries
    assert registry.owned_repository_prefixes == ("prod/",)


# --- reload: prefixes left without an owner are reported, never deleted -------------------


async def test_a_reload_reports_unowned_prefixes_and_deletes_nothing(
    gateway_factory: GatewayFactory,
    aws: str,
    tmp_path: Path,
    writes: MotoWrites,
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = shared_config(aws)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw))
    gateway = await gateway_factory(config_path=path)
    seed_rules(aws_rule("payments/a"), aws_rule("billing/b"))
    seed_policy(statement("PaymentsA"), statement("BillingB"))
    # payments narrows its slice, billing drops invoices/ and renames its Sids: payments/,
    # invoices/ and Billing are owned by nobody now.
    raw["tenants"][0]["registries"][0]["owned_repository_prefixes"] = ["payments/eu/"]
    raw["tenants"][2]["registries"][0]["owned_statement_sid_prefix"] = "BillingTeam"
    raw["tenants"][2]["registries"][0]["owned_repository_prefixes"] = ["billing/"]
    path.write_text(yaml.safe_dump(raw))
    caplog.set_level(logging.INFO, logger="registry_gateway")
    assert gateway.reloader is not None and gateway.reloader.reload()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings
    for prefix in ("'payments/'", "'invoices/'", "'Billing'"):
        assert any(prefix in w and ACCOUNT in w for w in warnings), (prefix, warnings)

    def counted(kind: str) -> float | None:
        value: float | None = gateway.metrics.registry.get_sample_value(
            "registry_gateway_unowned_slices_total", {"registry_id": ACCOUNT, "kind": kind}
        )
        return value

    assert (counted("repository"), counted("statement_sid")) == (2.0, 1.0)
    # Nothing was deleted: a slice write of billing keeps what nobody owns any more.
    async for stub in stub_on(gateway):
        await stub.PutReplicationRules(
            pb.PutReplicationRulesRequest(rules=[rule("billing/c")]), metadata=metadata(BILLING_KEY)
        )
        await stub.PutPolicyStatements(
            put([statement("BillingTeamC")]),
            metadata=metadata(BILLING_KEY),
        )
    # Packed: what nobody owns keeps its destinations, in the rule of that destination set.
    assert stored_rules() == [aws_rule("billing/c", "payments/a")]
    assert stored_sids() == ["PaymentsA", "BillingB", "BillingTeamC"]
    # Widening again leaves nothing unowned: no new warning.
    caplog.clear()
    raw["tenants"][0]["registries"][0]["owned_repository_prefixes"] = ["payments/"]
    path.write_text(yaml.safe_dump(raw))
    assert gateway.reloader.reload()
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []
