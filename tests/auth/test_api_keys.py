"""API-key authentication: `authorization: Bearer <key>` against the stored digests."""

from __future__ import annotations

import hashlib

import pytest

from service.auth.api_keys import ApiKeyAuthenticator, hash_key
from service.config import TenantConfig, from_mapping
from service.errors import Unauthenticated, to_status
from tests.support.helpers import KEY, OTHER_KEY, config_dict

Metadata = tuple[tuple[str, str | bytes], ...]


@pytest.fixture
def tenants() -> tuple[TenantConfig, ...]:
    """Tenants `payments` (KEY) and `readonly` (OTHER_KEY) of the test config."""
    return from_mapping(config_dict("http://127.0.0.1:1"), environ={}).tenants


@pytest.fixture
def authenticator(tenants: tuple[TenantConfig, ...]) -> ApiKeyAuthenticator:
    return ApiKeyAuthenticator(tenants)


def refused(authenticator: ApiKeyAuthenticator, metadata: Metadata | None) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as caught:
        authenticator.authenticate(metadata)
    return caught.value


def test_hash_key_is_the_config_form() -> None:
    assert hash_key("abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert hash_key("abc") != hash_key("abd")


@pytest.mark.parametrize(
    ("key", "tenant"), [(KEY, "payments"), (OTHER_KEY, "readonly")], ids=["payments", "readonly"]
)
def test_each_key_maps_to_its_tenant(
    authenticator: ApiKeyAuthenticator, key: str, tenant: str
) -> None:
    found = authenticator.authenticate((("x-request-id", "r1"), ("authorization", f"Bearer {key}")))
    assert found.tenant.name == tenant


def test_scheme_is_case_insensitive_and_bytes_are_accepted(
    authenticator: ApiKeyAuthenticator,
) -> None:
    assert (
        authenticator.authenticate((("authorization", f"bearer {KEY}"),)).tenant.name == "payments"
    )
    raw = f"Bearer {OTHER_KEY}".encode()
    assert authenticator.authenticate((("authorization", raw),)).tenant.name == "readonly"


def test_a_tenant_may_hold_several_keys() -> None:
    raw = config_dict("http://127.0.0.1:1")
    raw["tenants"][0]["api_keys"] = [hash_key("old-key"), hash_key("new-key")]
    auth = ApiKeyAuthenticator(from_mapping(raw, environ={}).tenants)
    assert auth.authenticate((("authorization", "Bearer old-key"),)).tenant.name == "payments"
    assert auth.authenticate((("authorization", "Bearer new-key"),)).tenant.name == "payments"
    assert refused(auth, (("authorization", f"Bearer {KEY}"),)).reason == "INVALID_CREDENTIALS"


@pytest.mark.parametrize(
    "metadata", [None, (), (("x-request-id", "r1"),)], ids=["none", "empty", "other-keys-only"]
)
def test_missing_header(authenticator: ApiKeyAuthenticator, metadata: Metadata | None) -> None:
    error = refused(authenticator, metadata)
    assert error.reason == "MISSING_CREDENTIALS"
    assert "authorization" in error.message


@pytest.mark.parametrize("value", [f"Basic {KEY}", KEY, "Bearer", "Bearer    ", f"Token {KEY}"])
def test_wrong_scheme_or_no_token(authenticator: ApiKeyAuthenticator, value: str) -> None:
    error = refused(authenticator, (("authorization", value),))
    assert error.reason == "MALFORMED_CREDENTIALS"


def test_unknown_key(authenticator: ApiKeyAuthenticator) -> None:
    error = refused(authenticator, (("authorization", "Bearer nobody-has-this-key"),))
    assert error.reason == "INVALID_CREDENTIALS"


def test_the_stored_digest_itself_is_not_a_key(
    authenticator: ApiKeyAuthenticator,
) -> None:
    """Someone who reads the config learns digests, and a digest does not authenticate."""
    error = refused(authenticator, (("authorization", f"Bearer {hash_key(KEY)}"),))
    assert error.reason == "INVALID_CREDENTIALS"


def test_no_tenants_means_no_key_is_valid() -> None:
    error = refused(ApiKeyAuthenticator(()), (("authorization", f"Bearer {KEY}"),))
    assert error.reason == "INVALID_CREDENTIALS"


@pytest.mark.parametrize(
    "value",
    [
        "Bearer sk-presented-7d3a91-token",
        "Basic sk-presented-7d3a91-token",
        "sk-presented-7d3a91-token",
        f"Bearer {KEY}x",
    ],
    ids=["unknown", "wrong-scheme", "no-scheme", "near-miss"],
)
def test_the_presented_token_is_never_echoed(
    authenticator: ApiKeyAuthenticator, value: str
) -> None:
    token = value.split()[-1]
    error = refused(authenticator, (("authorization", value),))
    status = to_status(error, "req-1")
    said = [str(error), error.message, status.message, *map(str, error.metadata.values())]
    said += [
        v.decode("latin-1") if isinstance(v, bytes) else v for _, v in status.trailing_metadata
    ]
    for text in said:
        assert token not in text
        assert "7d3a91" not in text
