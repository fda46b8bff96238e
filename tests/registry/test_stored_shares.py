"""A policy share counts statements as AWS stores them; others' statements are carried as AWS
stores them (issue 21, findings 5 and 6). Pure logic, and the domain on the in-memory ECR."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.config import PolicyGuardrails
from service.ecr import limits, policy_grammar
from service.errors import FailedPrecondition, InvalidArgument
from service.registry.model import slices
from tests.registry.conftest import ACCOUNT, REGION, Domain, target

PARTNER = "210987654321"
REPOSITORIES = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/payments/*"


def grant(sid: str, principal: Any) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": principal,
        "Action": "ecr:ReplicateImage",
        "Resource": REPOSITORIES,
    }


def test_account_ids_are_stored_as_root_arns_of_the_partition() -> None:
    sent = grant("PaymentsA", {"AWS": [PARTNER, "arn:aws:iam::111122223333:role/ci", "*"]})
    stored = policy_grammar.stored_form(sent, "aws")
    assert stored["Principal"] == {
        "AWS": [f"arn:aws:iam::{PARTNER}:root", "arn:aws:iam::111122223333:role/ci", "*"]
    }
    assert {k: v for k, v in stored.items() if k != "Principal"} == {
        k: v for k, v in sent.items() if k != "Principal"
    }
    assert sent["Principal"]["AWS"][0] == PARTNER  # the request itself is left as sent
    negated = {"NotPrincipal": {"AWS": PARTNER, "Service": "ecr.amazonaws.com"}}
    assert policy_grammar.stored_form(negated, "aws-cn")["NotPrincipal"] == {
        "AWS": f"arn:aws-cn:iam::{PARTNER}:root",
        "Service": "ecr.amazonaws.com",
    }


@pytest.mark.parametrize(
    "statement",
    [
        grant("PaymentsA", "*"),
        grant("PaymentsA", {"Service": "ecr.amazonaws.com"}),
        grant("PaymentsA", {"AWS": f"arn:aws:iam::{PARTNER}:root"}),
        grant("PaymentsA", {"AWS": "1234"}),  # no account id: the grammar's to refuse
        "not a statement",
    ],
)
def test_what_aws_keeps_as_it_is_is_unchanged(statement: Any) -> None:
    assert policy_grammar.stored_form(statement, "aws") == statement


def test_stored_chars_count_the_root_arns() -> None:
    ids = [f"{100000000000 + i}" for i in range(20)]
    mine = [grant("PaymentsA", {"AWS": ids})]
    added = (len("arn:aws:iam::") + len(":root")) * len(ids)
    assert slices.stored_chars(target(), mine) == limits.statement_chars(mine) + added
    # In China, the ARN names its partition.
    china = target(region="cn-north-1")
    assert slices.stored_chars(china, mine) == limits.statement_chars(mine) + added + 3 * 20


def test_a_share_refuses_what_fits_as_sent_but_not_as_stored() -> None:
    mine = [grant("PaymentsA", {"AWS": [f"{100000000000 + i}" for i in range(20)]})]
    sent = limits.statement_chars(mine)
    share = limits.Share(rules=1, destinations=1, policy_chars=sent)
    with pytest.raises(FailedPrecondition) as caught:
        slices.check_statement_share(target(share=share), mine)
    assert caught.value.reason == "POLICY_QUOTA_EXCEEDED"
    (violation,) = caught.value.quota_violations
    stored = slices.stored_chars(target(), mine)
    assert f"would take {stored} as AWS stores them" in violation.description
    assert f"{sent} as sent" in violation.description
    # Its stored size fits: written.
    enough = limits.Share(rules=1, destinations=1, policy_chars=stored)
    slices.check_statement_share(target(share=enough), mine)


def test_a_deleted_principal_in_ones_own_statement_says_what_it_is() -> None:
    mine = [grant("PaymentsA", {"AWS": ["AROAKSCDLFT9R5DQP782U", "AIDAJQABLZS4A3QDU576Q"]})]
    with pytest.raises(InvalidArgument) as caught:
        slices.check_statement_grammar(target(), json.dumps(mine), len(mine))
    fields = {v.field: v.description for v in caught.value.field_violations}
    assert set(fields) == {
        "statements_json[0].Principal.AWS[0]",
        "statements_json[0].Principal.AWS[1]",
    }
    assert all("deleted user or role" in d for d in fields.values())


async def test_a_write_stored_by_aws_holds_within_the_share_it_was_counted_in(
    domain: Domain,
) -> None:
    # The domain on an ECR that rewrites account ids as it stores them: what the share
    # counted is what AWS holds, and what the next merge carries.
    ids = [f"{100000000000 + i}" for i in range(10)]

    def root_arns(text: str) -> str:
        for account in ids:
            text = text.replace(f'"{account}"', f'"arn:aws:iam::{account}:root"')
        return text

    domain.ecr.rewrite_policy = root_arns
    mine = [grant("PaymentsA", {"AWS": ids})]
    stored = slices.stored_chars(target(), mine)
    payments = target(share=limits.Share(rules=1, destinations=1, policy_chars=stored))
    await domain.slices.put_statements(payments, PolicyGuardrails(), json.dumps(mine), "", False)
    text = domain.ecr.policy(ACCOUNT, REGION)
    assert text is not None
    held = [s for s in json.loads(text)["Statement"] if s["Sid"].startswith("Payments")]
    assert limits.statement_chars(held) == stored
