"""Who may do what: every credential kind and every rule, against every RPC, on a real server.

For each case the exact status code is asserted, and where a call must be refused, that
AWS (moto) was left exactly as it was.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from moto.ecr.models import ecr_backends

from service.app.server import Gateway
from service.auth.api_keys import hash_key
from service.config import OPERATIONS
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.helpers import (
    ACCOUNT,
    KEY,
    OTHER_ACCOUNT,
    OTHER_KEY,
    POLICY,
    config_dict,
    rich_error,
)

ISSUER = "https://issuer.example"
AUDIENCE = "registry-gateway"
KID = "matrix-1"
PARTNER = "210987654321"
READONLY_KEY = OTHER_KEY
OTHER_TENANT_KEY = "test-key-other-tenant"

RPCS = list(OPERATIONS)


@dataclass(frozen=True)
class Signer:
    """The JWKS private key of the test issuer, and its public PEM (for the confusion attack)."""

    key: rsa.RSAPrivateKey
    public_pem: bytes

    def token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "svc-deployer",
            "tenant": "payments",
            "iat": now,
            "exp": now + 300,
            **overrides,
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": KID})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(alg: str) -> tuple[str, str]:
    """Header and payload segments of an otherwise valid token claiming `alg`."""
    claims = {"iss": ISSUER, "aud": AUDIENCE, "tenant": "payments", "exp": int(time.time()) + 300}
    header = _b64(json.dumps({"alg": alg, "typ": "JWT", "kid": KID}).encode())
    return header, _b64(json.dumps(claims).encode())


def alg_none_token() -> str:
    header, payload = _unsigned("none")
    return f"{header}.{payload}."


def confused_token(signer: Signer) -> str:
    """HS256 signed with the RS256 public key as the secret: the classic confusion attack."""
    header, payload = _unsigned("HS256")
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(signer.public_pem, signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Signer, Path]:
    # One issuer key for the module: an RSA key takes tens of milliseconds to make, and no
    # test changes it (each mints its own tokens).
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": KID, "alg": "RS256", "use": "sig"})
    path = tmp_path_factory.mktemp("issuer") / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return Signer(key, public_pem), path


@pytest.fixture
async def matrix_gateway(
    gateway_factory: GatewayFactory, aws: str, signer: tuple[Signer, Path]
) -> Gateway:
    raw = config_dict(aws)
    payments = raw["tenants"][0]
    payments["policy_guardrails"] = {"principal_accounts": [PARTNER]}
    raw["tenants"].append(
        {
            "name": "other",
            "api_keys": [hash_key(OTHER_TENANT_KEY)],
            "registries": [
                {
                    "registry_id": OTHER_ACCOUNT,
                    "role_arn": f"arn:aws:iam::{OTHER_ACCOUNT}:role/registry-gateway",
                    "regions": ["us-east-1"],
                    "operations": list(OPERATIONS),
                    # The slice writes need a slice: they may act on nothing else.
                    "owned_repository_prefixes": ["other/"],
                    "owned_statement_sid_prefix": "Other",
                }
            ],
        }
    )
    raw["auth"] = {"jwt": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(signer[1])}}
    return await gateway_factory(raw)


def valid_request(rpc: str, **target: Any) -> Any:
    """A request of `rpc` that succeeds for an allowed caller (a policy is seeded)."""
    if rpc == "PutRegistryPolicy":
        return pb.PutRegistryPolicyRequest(policy_text=POLICY, **target)
    if rpc == "PutReplicationConfiguration":
        rule = pb.ReplicationRule(
            destinations=[pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)]
        )
        return pb.PutReplicationConfigurationRequest(
            replication_configuration=pb.ReplicationConfiguration(rules=[rule]), **target
        )
    if rpc == "PutReplicationRules":
        rule = pb.ReplicationRule(
            destinations=[pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT)],
            repository_filters=[
                pb.RepositoryFilter(filter="payments/", filter_type="PREFIX_MATCH")
            ],
        )
        return pb.PutReplicationRulesRequest(rules=[rule], **target)
    if rpc == "PutPolicyStatements":
        statement = json.loads(POLICY)["Statement"][0]
        statement["Sid"] = "PaymentsReplication"  # payments owns the Sids starting "Payments"
        # ... and a slice statement acts only on its own repositories.
        statement["Resource"] = f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/payments/*"
        return pb.PutPolicyStatementsRequest(statements_json=json.dumps([statement]), **target)
    if rpc == "GetConfigurationHistory":
        return pb.GetConfigurationHistoryRequest(
            resource=pb.HISTORY_RESOURCE_REPLICATION, page_size=5, **target
        )
    return getattr(pb, f"{rpc}Request")(**target)


Caller = Callable[[str, Any, tuple[tuple[str, str], ...]], Awaitable[grpc.StatusCode]]


@pytest.fixture
async def call(matrix_gateway: Gateway) -> Caller:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{matrix_gateway.port}")
    stub = pb_grpc.RegistryConfigServiceStub(channel)
    # Seed a policy so that GetRegistryPolicy and DeleteRegistryPolicy can succeed.
    ecr_backends[ACCOUNT]["us-east-1"].registry_policy = POLICY

    async def invoke(rpc: str, request: Any, md: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
        try:
            await getattr(stub, rpc)(request, metadata=md, timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                # Every refusal is a rich status with exactly one ErrorInfo.
                assert rich_error(exc).info.domain == "registry-gateway"
            return exc.code()
        return grpc.StatusCode.OK

    return invoke


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


CREDENTIAL_CASES: dict[str, Callable[[Signer], tuple[tuple[str, str], ...]]] = {
    "no-credentials": lambda s: (),
    "garbage-token": lambda s: bearer("e30.garbage.%%%"),
    "wrong-key": lambda s: bearer("not-a-key-anyone-holds"),
    "expired-jwt": lambda s: bearer(s.token(exp=int(time.time()) - 3600)),
    "wrong-audience-jwt": lambda s: bearer(s.token(aud="someone-else")),
    "wrong-issuer-jwt": lambda s: bearer(s.token(iss="https://evil.example")),
    "alg-none-jwt": lambda s: bearer(alg_none_token()),
    "rs256-to-hs256-confusion": lambda s: bearer(confused_token(s)),
    "unknown-tenant-claim": lambda s: bearer(s.token(tenant="nobody")),
}


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize("case", list(CREDENTIAL_CASES))
async def test_bad_credentials_are_unauthenticated_and_change_nothing(
    call: Caller,
    signer: tuple[Signer, Path],
    aws_state: Callable[[], dict[str, Any]],
    rpc: str,
    case: str,
) -> None:
    before = aws_state()
    code = await call(rpc, valid_request(rpc), CREDENTIAL_CASES[case](signer[0]))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert aws_state() == before


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize("kind", ["api-key", "jwt"])
async def test_tenant_on_its_own_registry_is_allowed(
    call: Caller, signer: tuple[Signer, Path], rpc: str, kind: str
) -> None:
    md = bearer(KEY) if kind == "api-key" else bearer(signer[0].token())
    assert await call(rpc, valid_request(rpc), md) == grpc.StatusCode.OK


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize(
    ("case", "md", "target"),
    [
        ("other-tenants-registry", bearer(KEY), {"registry_id": OTHER_ACCOUNT}),
        ("region-not-listed", bearer(KEY), {"region": "ap-south-1"}),
        ("b-on-a-registry", bearer(OTHER_TENANT_KEY), {"registry_id": ACCOUNT}),
    ],
)
async def test_target_outside_the_tenant_is_denied(
    call: Caller,
    aws_state: Callable[[], dict[str, Any]],
    rpc: str,
    case: str,
    md: tuple[tuple[str, str], ...],
    target: dict[str, str],
) -> None:
    before = aws_state()
    assert await call(rpc, valid_request(rpc, **target), md) == grpc.StatusCode.PERMISSION_DENIED
    assert aws_state() == before


# The read-only tenant is granted DescribeRegistry and GetRegistryPolicy only.
@pytest.mark.parametrize(
    "rpc", [op for op in RPCS if op not in ("DescribeRegistry", "GetRegistryPolicy")]
)
async def test_operation_not_listed_is_denied(
    call: Caller, aws_state: Callable[[], dict[str, Any]], rpc: str
) -> None:
    before = aws_state()
    assert await call(rpc, valid_request(rpc), bearer(READONLY_KEY)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert aws_state() == before


def replication_to(registry_id: str, region: str) -> pb.PutReplicationConfigurationRequest:
    rule = pb.ReplicationRule(
        destinations=[
            pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT),
            pb.ReplicationDestination(region=region, registry_id=registry_id),
        ]
    )
    return pb.PutReplicationConfigurationRequest(
        replication_configuration=pb.ReplicationConfiguration(rules=[rule])
    )


def policy_granting(principal: Any) -> pb.PutRegistryPolicyRequest:
    policy = json.loads(POLICY)
    policy["Statement"][0]["Principal"] = principal
    return pb.PutRegistryPolicyRequest(policy_text=json.dumps(policy))


@pytest.mark.parametrize(
    ("case", "rpc", "request_", "field"),
    [
        (
            "destination-registry-not-allowed",
            "PutReplicationConfiguration",
            replication_to("999999999999", "eu-west-1"),
            "replication_configuration.rules[0].destinations[1]",
        ),
        (
            "destination-region-not-allowed",
            "PutReplicationConfiguration",
            replication_to(PARTNER, "eu-central-1"),
            "replication_configuration.rules[0].destinations[1]",
        ),
        ("wildcard-principal", "PutRegistryPolicy", policy_granting("*"), "Statement[0]"),
        (
            "wildcard-aws-principal",
            "PutRegistryPolicy",
            policy_granting({"AWS": "*"}),
            "Statement[0]",
        ),
        (
            "principal-account-outside-list",
            "PutRegistryPolicy",
            policy_granting({"AWS": "arn:aws:iam::999999999999:root"}),
            "Statement[0]",
        ),
    ],
)
async def test_content_rules_deny_and_change_nothing(
    matrix_gateway: Gateway,
    aws_state: Callable[[], dict[str, Any]],
    case: str,
    rpc: str,
    request_: Any,
    field: str,
) -> None:
    before = aws_state()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{matrix_gateway.port}") as channel:
        stub = pb_grpc.RegistryConfigServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await getattr(stub, rpc)(request_, metadata=bearer(KEY))
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert err.info.metadata["tenant"] == "payments"
    assert err.info.metadata["rpc"] == rpc
    assert err.info.metadata["registryId"] == ACCOUNT
    assert err.info.metadata["region"] == "us-east-1"
    assert field in err.info.metadata["field"] and field in err.message
    assert aws_state() == before


async def test_allowed_partner_destination_passes(call: Caller) -> None:
    code = await call(
        "PutReplicationConfiguration", replication_to(PARTNER, "us-west-2"), bearer(KEY)
    )
    assert code == grpc.StatusCode.OK
