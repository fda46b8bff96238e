"""JWT bearer tokens: real tokens signed by PyJWT with real keys, checked by JwtVerifier."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from service.auth.identity import Identity
from service.auth.jwt_tokens import (
    JWT_EXPIRED,
    JWT_INVALID,
    JWT_NOT_YET_VALID,
    JWT_UNKNOWN_TENANT,
    JWT_WRONG_AUDIENCE,
    JWT_WRONG_ISSUER,
    JwtVerifier,
    looks_like_jwt,
)
from service.config import ConfigError, JwtConfig, TenantConfig, from_mapping
from service.errors import Unauthenticated, to_status
from tests.support.helpers import KEY, config_dict

ISSUER = "https://issuer.example"
AUDIENCE = "registry-gateway"
SECRET_ENV = "GATEWAY_JWT_SECRET"
SECRET = "hs256-test-secret-0b7e4c21d9a84f5e93c6a1d2e3f40516"
SUBJECT = "svc-deployer-83b1c"
RSA_KID = "rsa-1"
EC_KID = "ec-1"

Claims = dict[str, Any]


@dataclass(frozen=True)
class Keys:
    """Signing keys of the issuer, and one of an impostor."""

    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    impostor_rsa_key: rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    """Generated once per module: 2048-bit RSA generation is the slow part of these tests."""
    return Keys(
        rsa_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec_key=ec.generate_private_key(ec.SECP256R1()),
        impostor_rsa_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


@pytest.fixture
def tenants() -> tuple[TenantConfig, ...]:
    """Tenants `payments` and `readonly` of the test config."""
    return from_mapping(config_dict("http://127.0.0.1:1"), environ={}).tenants


def hs_config(**overrides: Any) -> JwtConfig:
    fields: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "hs256_secret_env": SECRET_ENV,
        "leeway_seconds": 30,
        **overrides,
    }
    return JwtConfig(**fields)


def jwks_config(path: Path, **overrides: Any) -> JwtConfig:
    fields: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_file": str(path),
        "leeway_seconds": 30,
        **overrides,
    }
    return JwtConfig(**fields)


def public_jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, **extra: Any) -> Claims:
    """The JWK of a key's public half, as an issuer publishes it."""
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, **extra}


def write_jwks(path: Path, *jwks: Claims) -> Path:
    path.write_text(json.dumps({"keys": list(jwks)}), encoding="utf-8")
    return path


@pytest.fixture
def jwks_file(tmp_path: Path, keys: Keys) -> Path:
    """A JWKS of an RSA key (with `alg`) and an EC key (alg left to kty/crv)."""
    return write_jwks(
        tmp_path / "jwks.json",
        public_jwk(keys.rsa_key, kid=RSA_KID, alg="RS256", use="sig"),
        public_jwk(keys.ec_key, kid=EC_KID),
    )


@pytest.fixture
def hs_verifier(tenants: tuple[TenantConfig, ...]) -> JwtVerifier:
    return JwtVerifier(hs_config(), tenants, {SECRET_ENV: SECRET})


@pytest.fixture
def jwks_verifier(tenants: tuple[TenantConfig, ...], jwks_file: Path) -> JwtVerifier:
    return JwtVerifier(jwks_config(jwks_file), tenants, {})


def claims(**overrides: Any) -> Claims:
    """Valid claims for tenant `payments`; an override of None drops the claim."""
    now = int(time.time())
    base: Claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": SUBJECT,
        "tenant": "payments",
        "iat": now,
        "exp": now + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs_token(payload: Claims | None = None, secret: str = SECRET) -> str:
    return jwt.encode(claims() if payload is None else payload, secret, algorithm="HS256")


def rs_token(keys: Keys, payload: Claims | None = None, kid: str | None = RSA_KID) -> str:
    headers = {"kid": kid} if kid is not None else None
    body = claims() if payload is None else payload
    return jwt.encode(body, keys.rsa_key, algorithm="RS256", headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def json_segment(value: Claims) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def unsigned_token(payload: Claims, header: Claims | None = None) -> str:
    """An `alg: none` token, crafted by hand: PyJWT will not make one."""
    head = {"alg": "none", "typ": "JWT"} if header is None else header
    return f"{json_segment(head)}.{json_segment(payload)}."


def hs256_by_hand(payload: Claims, key: bytes, kid: str | None = None) -> str:
    """An HS256 token with any bytes as the HMAC key, even the ones PyJWT refuses (a PEM)."""
    header: Claims = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{json_segment(header)}.{json_segment(payload)}"
    mac = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def refused(verifier: JwtVerifier, token: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    return caught.value


def everything_said(error: Unauthenticated) -> list[str]:
    """Every text the caller could see: message, str(), status message, trailing metadata."""
    status = to_status(error, "req-1")
    said = [str(error), error.message, status.message, *map(str, error.metadata.values())]
    said += [
        v.decode("latin-1") if isinstance(v, bytes) else v for _, v in status.trailing_metadata
    ]
    return said


# --- valid tokens -------------------------------------------------------------------------


def test_valid_hs256_token(hs_verifier: JwtVerifier) -> None:
    identity = hs_verifier.verify(hs_token())
    assert isinstance(identity, Identity)
    assert (identity.tenant.name, identity.kind, identity.subject) == ("payments", "jwt", SUBJECT)


def test_tenant_claim_picks_the_tenant(hs_verifier: JwtVerifier) -> None:
    assert hs_verifier.verify(hs_token(claims(tenant="readonly"))).tenant.name == "readonly"


def test_subject_is_a_dash_without_sub(hs_verifier: JwtVerifier) -> None:
    assert hs_verifier.verify(hs_token(claims(sub=None))).subject == "-"


def test_audience_list_containing_ours_is_accepted(hs_verifier: JwtVerifier) -> None:
    token = hs_token(claims(aud=["another-service", AUDIENCE]))
    assert hs_verifier.verify(token).tenant.name == "payments"


def test_configured_tenant_claim_name(tenants: tuple[TenantConfig, ...]) -> None:
    claim = "https://corp.example/tenant"
    verifier = JwtVerifier(hs_config(tenant_claim=claim), tenants, {SECRET_ENV: SECRET})
    token = hs_token(claims(tenant="readonly", **{claim: "payments"}))
    assert verifier.verify(token).tenant.name == "payments"


def test_valid_rs256_token(jwks_verifier: JwtVerifier, keys: Keys) -> None:
    identity = jwks_verifier.verify(rs_token(keys))
    assert (identity.tenant.name, identity.kind, identity.subject) == ("payments", "jwt", SUBJECT)


def test_valid_es256_token(jwks_verifier: JwtVerifier, keys: Keys) -> None:
    token = jwt.encode(
        claims(tenant="readonly"), keys.ec_key, algorithm="ES256", headers={"kid": EC_KID}
    )
    assert jwks_verifier.verify(token).tenant.name == "readonly"


def test_single_key_set_matches_a_token_without_kid(
    tmp_path: Path, keys: Keys, tenants: tuple[TenantConfig, ...]
) -> None:
    path = write_jwks(tmp_path / "one.json", public_jwk(keys.rsa_key, kid=RSA_KID))
    verifier = JwtVerifier(jwks_config(path), tenants, {})
    assert verifier.verify(rs_token(keys, kid=None)).tenant.name == "payments"


def test_single_key_set_refuses_a_token_with_another_kid(
    tmp_path: Path, keys: Keys, tenants: tuple[TenantConfig, ...]
) -> None:
    """Only a token without `kid` falls back to the one key; a kid that names another is refused."""
    path = write_jwks(tmp_path / "one.json", public_jwk(keys.rsa_key, kid=RSA_KID))
    verifier = JwtVerifier(jwks_config(path), tenants, {})
    assert refused(verifier, rs_token(keys, kid="rotated-away")).reason == JWT_INVALID


def test_several_keys_need_a_kid(jwks_verifier: JwtVerifier, keys: Keys) -> None:
    error = refused(jwks_verifier, rs_token(keys, kid=None))
    assert error.reason == JWT_INVALID
    assert "kid" in error.message


# --- lifetime -----------------------------------------------------------------------------


def test_expired(hs_verifier: JwtVerifier) -> None:
    now = int(time.time())
    error = refused(hs_verifier, hs_token(claims(iat=now - 600, exp=now - 120)))
    assert error.reason == JWT_EXPIRED
    assert "expired" in error.message


def test_exp_is_required(hs_verifier: JwtVerifier) -> None:
    error = refused(hs_verifier, hs_token(claims(exp=None)))
    assert error.reason == JWT_INVALID
    assert "'exp'" in error.message


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_yet_valid(hs_verifier: JwtVerifier, claim: str) -> None:
    error = refused(hs_verifier, hs_token(claims(**{claim: int(time.time()) + 120})))
    assert error.reason == JWT_NOT_YET_VALID


def test_leeway_is_honoured(tenants: tuple[TenantConfig, ...]) -> None:
    """10 s past exp and 10 s before nbf: inside a 30 s leeway, outside a zero one."""
    now = int(time.time())
    late = hs_token(claims(iat=now - 300, exp=now - 10))
    early = hs_token(claims(nbf=now + 10))
    lenient = JwtVerifier(hs_config(leeway_seconds=30), tenants, {SECRET_ENV: SECRET})
    strict = JwtVerifier(hs_config(leeway_seconds=0), tenants, {SECRET_ENV: SECRET})
    assert lenient.verify(late).tenant.name == "payments"
    assert lenient.verify(early).tenant.name == "payments"
    assert refused(strict, late).reason == JWT_EXPIRED
    assert refused(strict, early).reason == JWT_NOT_YET_VALID


# --- issuer and audience ------------------------------------------------------------------


@pytest.mark.parametrize(
    "aud", ["someone-else", ["someone-else", "other"], None], ids=["other", "list", "absent"]
)
def test_wrong_audience(hs_verifier: JwtVerifier, aud: str | list[str] | None) -> None:
    assert refused(hs_verifier, hs_token(claims(aud=aud))).reason == JWT_WRONG_AUDIENCE


@pytest.mark.parametrize(
    "iss", ["https://evil.example", ISSUER + "/", None], ids=["other", "near-miss", "absent"]
)
def test_wrong_issuer(hs_verifier: JwtVerifier, iss: str | None) -> None:
    assert refused(hs_verifier, hs_token(claims(iss=iss))).reason == JWT_WRONG_ISSUER


def test_wrong_issuer_on_jwks_too(jwks_verifier: JwtVerifier, keys: Keys) -> None:
    token = rs_token(keys, claims(iss="https://evil.example"))
    assert refused(jwks_verifier, token).reason == JWT_WRONG_ISSUER


# --- signatures and algorithms ------------------------------------------------------------


def test_other_secret_is_refused(hs_verifier: JwtVerifier) -> None:
    token = hs_token(secret="another-secret-of-the-same-length-xxxxxxxxxxxxxx")
    error = refused(hs_verifier, token)
    assert error.reason == JWT_INVALID
    assert "signature" in error.message


def test_tampered_payload_is_refused(hs_verifier: JwtVerifier) -> None:
    header, _, signature = hs_token().split(".")
    forged = f"{header}.{json_segment(claims(tenant='readonly'))}.{signature}"
    assert refused(hs_verifier, forged).reason == JWT_INVALID


def test_other_rsa_key_with_a_known_kid_is_refused(jwks_verifier: JwtVerifier, keys: Keys) -> None:
    token = jwt.encode(claims(), keys.impostor_rsa_key, algorithm="RS256", headers={"kid": RSA_KID})
    assert refused(jwks_verifier, token).reason == JWT_INVALID


@pytest.mark.parametrize("which", ["hs256", "jwks"])
def test_alg_none_is_refused(
    hs_verifier: JwtVerifier, jwks_verifier: JwtVerifier, which: str
) -> None:
    token = unsigned_token(claims())
    assert looks_like_jwt(token)  # so the caller routes it here, not to the API keys
    verifier = hs_verifier if which == "hs256" else jwks_verifier
    assert refused(verifier, token).reason == JWT_INVALID


def test_alg_none_with_a_kid_is_refused(jwks_verifier: JwtVerifier) -> None:
    token = unsigned_token(claims(), {"alg": "none", "typ": "JWT", "kid": RSA_KID})
    assert refused(jwks_verifier, token).reason == JWT_INVALID


@pytest.mark.parametrize(("which", "kid"), [("rsa", RSA_KID), ("ec", EC_KID)])
def test_public_key_as_hmac_secret_is_refused(
    jwks_verifier: JwtVerifier, keys: Keys, which: str, kid: str
) -> None:
    """Algorithm confusion: HS256 signed with the PEM of the key the gateway verifies with."""
    pem = public_pem(keys.rsa_key if which == "rsa" else keys.ec_key)
    for pem_variant in (pem, pem.strip()):
        error = refused(jwks_verifier, hs256_by_hand(claims(), pem_variant, kid=kid))
        assert error.reason == JWT_INVALID
        assert "algorithm" in error.message


def test_public_key_as_hmac_secret_without_kid_is_refused(
    tmp_path: Path, keys: Keys, tenants: tuple[TenantConfig, ...]
) -> None:
    path = write_jwks(tmp_path / "one.json", public_jwk(keys.rsa_key, kid=RSA_KID))
    verifier = JwtVerifier(jwks_config(path), tenants, {})
    token = hs256_by_hand(claims(), public_pem(keys.rsa_key))
    assert refused(verifier, token).reason == JWT_INVALID


def test_rs256_token_is_refused_by_an_hs256_verifier(hs_verifier: JwtVerifier, keys: Keys) -> None:
    assert refused(hs_verifier, rs_token(keys)).reason == JWT_INVALID


def test_hs256_token_is_refused_by_a_jwks_verifier(jwks_verifier: JwtVerifier) -> None:
    assert refused(jwks_verifier, hs_token()).reason == JWT_INVALID


def test_token_alg_must_match_the_keys_own(jwks_verifier: JwtVerifier, keys: Keys) -> None:
    """An ES256 token naming the RSA key's kid is refused before any signature check."""
    token = jwt.encode(claims(), keys.ec_key, algorithm="ES256", headers={"kid": RSA_KID})
    assert refused(jwks_verifier, token).reason == JWT_INVALID


def test_unknown_kid(jwks_verifier: JwtVerifier, keys: Keys) -> None:
    error = refused(jwks_verifier, rs_token(keys, kid="rotated-away"))
    assert error.reason == JWT_INVALID
    assert "rotated-away" not in error.message


# --- tenant -------------------------------------------------------------------------------


def test_unknown_tenant(hs_verifier: JwtVerifier) -> None:
    error = refused(hs_verifier, hs_token(claims(tenant="billing")))
    assert error.reason == JWT_UNKNOWN_TENANT
    assert "'billing'" in error.message


def test_unknown_tenant_of_an_odd_shape_is_not_echoed(hs_verifier: JwtVerifier) -> None:
    error = refused(hs_verifier, hs_token(claims(tenant="<script>x</script>")))
    assert error.reason == JWT_UNKNOWN_TENANT
    assert "script" not in error.message


@pytest.mark.parametrize(
    "value", [None, "", ["payments"], 7], ids=["absent", "empty", "list", "int"]
)
def test_missing_or_non_string_tenant(hs_verifier: JwtVerifier, value: object) -> None:
    error = refused(hs_verifier, hs_token(claims(tenant=value)))
    assert error.reason == JWT_UNKNOWN_TENANT
    assert "'tenant'" in error.message


def test_no_tenants_means_no_token_is_valid() -> None:
    verifier = JwtVerifier(hs_config(), (), {SECRET_ENV: SECRET})
    assert refused(verifier, hs_token()).reason == JWT_UNKNOWN_TENANT


# --- garbage ------------------------------------------------------------------------------

GARBAGE = [
    "",
    "garbage",
    "a.b.c",
    "a.b.c.d",
    f"{json_segment({'alg': 'HS256'})}.!!!.{b64url(b'x')}",
    f"{json_segment({'alg': 'HS256'})}.{b64url(b'not json')}.{b64url(b'x')}",
    f"{json_segment({'alg': 'HS256'})}.{json_segment({'a': 1})[:-2]}",
    f"{b64url(b'[1,2]')}.{json_segment(claims())}.{b64url(b'x')}",
    f"{json_segment({'alg': 'HS256', 'kid': 7})}.{json_segment(claims())}.{b64url(b'x')}",
    KEY,
]


@pytest.mark.parametrize("token", GARBAGE)
@pytest.mark.parametrize("which", ["hs256", "jwks"])
def test_garbage_is_invalid(
    hs_verifier: JwtVerifier, jwks_verifier: JwtVerifier, which: str, token: str
) -> None:
    verifier = hs_verifier if which == "hs256" else jwks_verifier
    assert refused(verifier, token).reason == JWT_INVALID


# --- nothing secret is ever said ----------------------------------------------------------


def test_token_secret_and_claims_never_appear_in_errors(
    tenants: tuple[TenantConfig, ...], keys: Keys, jwks_file: Path
) -> None:
    hs = JwtVerifier(hs_config(), tenants, {SECRET_ENV: SECRET})
    jwks = JwtVerifier(jwks_config(jwks_file), tenants, {})
    now = int(time.time())
    cases: list[tuple[JwtVerifier, str]] = [
        (hs, hs_token(claims(exp=now - 600))),
        (hs, hs_token(claims(nbf=now + 600))),
        (hs, hs_token(claims(aud="aud-7f3e9d"))),
        (hs, hs_token(claims(iss="https://iss-7f3e9d.example"))),
        (hs, hs_token(claims(tenant="tenant-7f3e9d-" + "x" * 80))),
        (hs, hs_token(claims(exp=None))),
        (hs, hs_token(secret=SECRET[::-1])),
        (hs, unsigned_token(claims())),
        (hs, rs_token(keys)),
        (jwks, rs_token(keys, kid="kid-7f3e9d")),
        (jwks, hs256_by_hand(claims(), public_pem(keys.rsa_key), kid=RSA_KID)),
        (jwks, "7f3e9d.garbage"),
    ]
    for verifier, token in cases:
        error = refused(verifier, token)
        for text in everything_said(error):
            for secret_part in (token, *token.split("."), SECRET, SUBJECT, "7f3e9d"):
                assert not secret_part or secret_part not in text, (error.reason, text)


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize("environ", [{}, {SECRET_ENV: ""}, {"OTHER": SECRET}])
def test_missing_secret_env_is_a_config_error(
    tenants: tuple[TenantConfig, ...], environ: dict[str, str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        JwtVerifier(hs_config(), tenants, environ)
    message = str(caught.value)
    assert SECRET_ENV in message
    assert SECRET not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "value", ["short-secret-5f1c", "pem"], ids=["shorter-than-32-bytes", "public-key-pem"]
)
def test_unsafe_secret_is_a_config_error(
    tenants: tuple[TenantConfig, ...], keys: Keys, value: str
) -> None:
    secret = public_pem(keys.rsa_key).decode("ascii") if value == "pem" else value
    with pytest.raises(ConfigError) as caught:
        JwtVerifier(hs_config(), tenants, {SECRET_ENV: secret})
    message = str(caught.value)
    assert SECRET_ENV in message
    assert secret.strip() not in message
    assert "5f1c" not in message and "BEGIN" not in message


JwksWriter = Callable[[Path, Keys], None]


def _raw(text: str) -> JwksWriter:
    def write(path: Path, keys: Keys) -> None:
        path.write_text(text, encoding="utf-8")

    return write


def _keys(*make: Callable[[Keys], Claims]) -> JwksWriter:
    def write(path: Path, keys: Keys) -> None:
        write_jwks(path, *(m(keys) for m in make))

    return write


def _private_rsa(keys: Keys) -> Claims:
    return {**RSAAlgorithm.to_jwk(keys.rsa_key, as_dict=True), "kid": "private"}


def _short_rsa(keys: Keys) -> Claims:
    # A weak key on purpose: the gateway must refuse to trust it.
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    return public_jwk(weak, kid="short")


BAD_JWKS: dict[str, JwksWriter] = {
    "not-json": _raw("{keys: nope"),
    "not-an-object": _raw("[1, 2]"),
    "no-keys-list": _raw('{"keys": {"kid": "x"}}'),
    "empty": _raw('{"keys": []}'),
    "only-encryption-keys": _keys(lambda k: public_jwk(k.rsa_key, kid="e", use="enc")),
    "not-a-jwk": _raw('{"keys": ["rsa"]}'),
    "private-key": _keys(_private_rsa),
    "hmac-secret": _keys(lambda k: {"kty": "oct", "k": b64url(SECRET.encode()), "kid": "oct"}),
    "rs512": _keys(lambda k: public_jwk(k.rsa_key, kid="r", alg="RS512")),
    "p384": _keys(lambda k: public_jwk(ec.generate_private_key(ec.SECP384R1()), kid="p")),
    "es256-on-p384": _keys(
        lambda k: public_jwk(ec.generate_private_key(ec.SECP384R1()), kid="p", alg="ES256")
    ),
    "alg-contradicts-kty": _keys(lambda k: public_jwk(k.ec_key, kid="e", alg="RS256")),
    "rsa-1024": _keys(_short_rsa),
    "duplicate-kid": _keys(
        lambda k: public_jwk(k.rsa_key, kid="same"), lambda k: public_jwk(k.ec_key, kid="same")
    ),
    "kid-missing-among-several": _keys(
        lambda k: public_jwk(k.rsa_key, kid=RSA_KID), lambda k: public_jwk(k.ec_key)
    ),
    "non-string-kid": _keys(lambda k: public_jwk(k.rsa_key, kid=1)),
}


@pytest.mark.parametrize("name", list(BAD_JWKS))
def test_bad_jwks_file_is_a_config_error(
    tmp_path: Path, keys: Keys, tenants: tuple[TenantConfig, ...], name: str
) -> None:
    path = tmp_path / "jwks.json"
    BAD_JWKS[name](path, keys)
    with pytest.raises(ConfigError) as caught:
        JwtVerifier(jwks_config(path), tenants, {})
    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message


def test_private_or_secret_key_material_is_not_printed(
    tmp_path: Path, keys: Keys, tenants: tuple[TenantConfig, ...]
) -> None:
    for make in (_private_rsa, lambda k: {"kty": "oct", "k": b64url(SECRET.encode())}):
        jwk = make(keys)
        path = write_jwks(tmp_path / "jwks.json", jwk)
        with pytest.raises(ConfigError) as caught:
            JwtVerifier(jwks_config(path), tenants, {})
        secret = jwk.get("d") or jwk["k"]
        assert secret[:16] not in str(caught.value)
        assert "secret key material" in str(caught.value)


@pytest.mark.parametrize("name", ["missing.json", "a-directory"])
def test_unreadable_jwks_file_is_a_config_error(
    tmp_path: Path, tenants: tuple[TenantConfig, ...], name: str
) -> None:
    path = tmp_path / name
    if name == "a-directory":
        path.mkdir()
    with pytest.raises(ConfigError) as caught:
        JwtVerifier(jwks_config(path), tenants, {})
    assert str(path) in str(caught.value)
    assert "cannot read" in str(caught.value)


def test_jwks_is_read_at_construction(
    tmp_path: Path, keys: Keys, tenants: tuple[TenantConfig, ...]
) -> None:
    """A later change to the file is seen on the next build (a reload), not mid-flight."""
    path = write_jwks(tmp_path / "jwks.json", public_jwk(keys.rsa_key, kid=RSA_KID))
    verifier = JwtVerifier(jwks_config(path), tenants, {})
    path.write_text("not json", encoding="utf-8")
    assert verifier.verify(rs_token(keys)).tenant.name == "payments"


# --- routing ------------------------------------------------------------------------------


def test_looks_like_jwt_for_real_tokens(keys: Keys) -> None:
    assert looks_like_jwt(hs_token())
    assert looks_like_jwt(rs_token(keys))
    assert looks_like_jwt(jwt.encode(claims(), keys.ec_key, algorithm="ES256"))


@pytest.mark.parametrize(
    "token",
    [
        KEY,
        "",
        "a.b.c",
        "x.y",
        "sha256:" + "0" * 64,
        f"{json_segment({'typ': 'JWT'})}.{json_segment(claims())}.sig",
        f"{b64url(b'[1]')}.{json_segment(claims())}.sig",
        f"{json_segment({'alg': 'HS256'})}..sig",
        f"{json_segment({'alg': 'HS256'})}.{json_segment(claims())}.si g",
        f"{json_segment({'alg': 'HS256'})}.{json_segment(claims())}.sig\n",
        f"{json_segment({'alg': 'HS256'})}.{json_segment(claims())}.sig.more",
    ],
    ids=[
        "api-key",
        "empty",
        "short-segments",
        "two-segments",
        "digest",
        "header-without-alg",
        "header-not-object",
        "empty-payload",
        "space",
        "newline",
        "four-segments",
    ],
)
def test_looks_like_jwt_refuses_other_shapes(token: str) -> None:
    assert not looks_like_jwt(token)
