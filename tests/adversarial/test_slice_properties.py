"""A property over pairs of slice writes through a live gateway: billing writes a slice of
its own, then payments sends whatever it likes to its slices, hostile or not. Billing's
rules and statements stay exactly as billing wrote them, nothing payments is answered
(responses, plans, errors and their details) names anything of billing's, and billing's
next write still goes through.

Billing's slices are drawn from strings only billing uses (tests/support/slices_support.py
BILLING_SECRETS); payments draws from a vocabulary of hostile and ordinary parts (other
tenants' prefixes, wildcards, negations, foreign principals and destinations, validate_only,
empty slices) that never holds them, so any of them in an answer came from billing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.helpers import ACCOUNT, KEY, PARTNER_ACCOUNT, metadata
from tests.support.moto_writes import behave_like_ecr
from tests.support.slices_support import (
    BILLING_FAR,
    BILLING_KEY,
    BILLING_PARTNER,
    EU,
    PARTNER,
    billing_slice,
    clear_registry,
    isolation_config,
    leaked,
    repositories,
    statement,
)

ARN = f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/"

PROPERTY = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    # One gateway serves every example; each example seeds moto whole before it starts.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

filters = st.sampled_from(
    ["payments/a", "payments/b/c", "payments", "paymentsx/", "billing/", "billing/x", "invoices/"]
).map(lambda f: pb.RepositoryFilter(filter=f, filter_type="PREFIX_MATCH"))
destinations = st.sampled_from(
    [
        EU,
        PARTNER,
        pb.ReplicationDestination(region="us-east-1", registry_id=ACCOUNT),  # the source
        pb.ReplicationDestination(region="ap-south-1", registry_id=ACCOUNT),  # not allowed
    ]
)
rules = st.builds(
    lambda ds, fs: pb.ReplicationRule(destinations=ds, repository_filters=fs),
    st.lists(destinations, min_size=1, max_size=2),
    st.lists(filters, max_size=2),
)
resources = st.sampled_from(
    [
        f"{ARN}payments/*",
        f"{ARN}payments/api",
        f"{ARN}payments*",
        f"{ARN}pay?ents/*",
        f"{ARN}billing/*",
        f"{ARN}*",
        "*",
        [f"{ARN}payments/a", f"{ARN}billing/x"],
    ]
)
principals = st.sampled_from(
    [
        {"AWS": f"arn:aws:iam::{PARTNER_ACCOUNT}:root"},
        {"AWS": "arn:aws:iam::777788889999:root"},
        "*",
        {"Service": "ecr.amazonaws.com"},
    ]
)


billing_rules = st.lists(
    st.builds(
        lambda ds, fs: pb.ReplicationRule(
            destinations=ds,
            repository_filters=[
                pb.RepositoryFilter(filter=f, filter_type="PREFIX_MATCH") for f in fs
            ],
        ),
        st.lists(
            st.sampled_from([EU, PARTNER, BILLING_FAR]),
            min_size=1,
            max_size=2,
            unique_by=lambda d: (d.registry_id, d.region),
        ),
        st.lists(
            st.sampled_from(
                ["billing/ledger", "billing/ledger/eu", "invoices/2024", "invoices/2024/q"]
            ),
            min_size=1,
            max_size=2,
            unique=True,
        ),
    ),
    max_size=4,
)
billing_statements = st.lists(
    st.builds(
        lambda n, prefix: (
            statement(f"BillingSecret{n}", account=BILLING_PARTNER)
            | {"Resource": repositories(prefix)}
        ),
        st.integers(0, 9),
        st.sampled_from(["billing/", "invoices/2024/"]),
    ),
    max_size=3,
    unique_by=lambda s: s["Sid"],
)


@st.composite
def statements(draw: st.DrawFn) -> dict[str, Any]:
    found: dict[str, Any] = {
        "Sid": draw(st.sampled_from(["PaymentsA", "PaymentsB", "PaymentsC", "Billing", "Other"])),
        "Effect": draw(st.sampled_from(["Allow", "Deny"])),
    }
    negate = draw(st.sampled_from([None, "Principal", "Action", "Resource"]))
    values = {
        "Principal": draw(principals),
        "Action": draw(st.sampled_from(["ecr:ReplicateImage", "ecr:*", ["ecr:CreateRepository"]])),
        "Resource": draw(resources),
    }
    for key, value in values.items():
        found[f"Not{key}" if key == negate else key] = value
    return found


def unique_sids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({s["Sid"]: s for s in items}.values())


writes_of_payments = st.lists(
    st.one_of(
        st.builds(
            lambda rs, dry: pb.PutReplicationRulesRequest(rules=rs, validate_only=dry),
            st.lists(rules, max_size=6),
            st.booleans(),
        ),
        st.builds(
            lambda ss, dry: pb.PutPolicyStatementsRequest(
                statements_json=json.dumps(unique_sids(ss)), validate_only=dry
            ),
            st.lists(statements(), max_size=3),
            st.booleans(),
        ),
    ),
    min_size=1,
    max_size=3,
)


@pytest.fixture
async def stub(
    gateway_factory: GatewayFactory, aws: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    behave_like_ecr(monkeypatch)
    gateway = await gateway_factory(isolation_config(aws))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        yield pb_grpc.RegistryConfigServiceStub(channel)


async def answer(stub: Any, request: Any) -> Any:
    method = getattr(stub, type(request).__name__.removesuffix("Request"))
    try:
        return await method(request, metadata=metadata(KEY))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), exc
        return exc


async def billing_writes(
    stub: Any, rules: list[pb.ReplicationRule], statements: list[dict[str, Any]]
) -> None:
    await stub.PutReplicationRules(
        pb.PutReplicationRulesRequest(rules=rules), metadata=metadata(BILLING_KEY)
    )
    await stub.PutPolicyStatements(
        pb.PutPolicyStatementsRequest(statements_json=json.dumps(statements)),
        metadata=metadata(BILLING_KEY),
    )


@PROPERTY
@given(billing_rules, billing_statements, writes_of_payments, billing_rules, billing_statements)
async def test_nothing_payments_sends_changes_or_shows_billings_slice(
    stub: Any,
    rules: list[pb.ReplicationRule],
    statements: list[dict[str, Any]],
    requests: list[Any],
    next_rules: list[pb.ReplicationRule],
    next_statements: list[dict[str, Any]],
) -> None:
    clear_registry()
    await billing_writes(stub, rules, statements)
    before = billing_slice()
    for request in requests:
        got = await answer(stub, request)
        assert leaked(got) == [], (request, got)
    assert billing_slice() == before
    # Whatever payments left behind, billing's next write of its slice goes through.
    await billing_writes(stub, next_rules, next_statements)
