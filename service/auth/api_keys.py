"""API-key authentication: `authorization: Bearer <key>` against stored sha256 digests."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

from service.auth.identity import Identity
from service.config import TenantConfig
from service.errors import Unauthenticated

AUTHORIZATION_KEY = "authorization"
# How much of a key's digest the audit trail shows: enough to tell keys apart, no more.
SUBJECT_DIGEST_CHARS = 12


def hash_key(key: str) -> str:
    """The form a key is stored in config: `sha256:<hex>`."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token of `authorization: Bearer <token>`; Unauthenticated when absent or malformed."""
    header = None
    for key, value in metadata or ():
        if key == AUTHORIZATION_KEY:
            header = value if isinstance(value, str) else value.decode("latin-1")
            break
    if header is None:
        raise Unauthenticated(
            "missing credentials: send metadata 'authorization: Bearer <api key or JWT>'",
            reason="MISSING_CREDENTIALS",
        )
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated(
            "malformed authorization metadata: expected 'Bearer <api key or JWT>'",
            reason="MALFORMED_CREDENTIALS",
        )
    return token


class ApiKeyAuthenticator:
    """Maps a bearer API key to the tenant that holds its digest."""

    def __init__(self, tenants: Sequence[TenantConfig]) -> None:
        self._digests: list[tuple[bytes, TenantConfig]] = [
            (bytes.fromhex(digest.removeprefix("sha256:")), tenant)
            for tenant in tenants
            for digest in tenant.api_keys
        ]
        # Each key's Identity is built once, not per call.
        self._identities: list[tuple[bytes, Identity]] = [
            (
                digest,
                Identity(
                    tenant=tenant,
                    kind="api_key",
                    subject="sha256:" + digest.hex()[:SUBJECT_DIGEST_CHARS],
                ),
            )
            for digest, tenant in self._digests
        ]

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Identity:
        """The identity whose key the call carries; Unauthenticated otherwise."""
        return self.identify(bearer_token(metadata))

    def identify(self, token: str) -> Identity:
        """The identity holding this API key; Unauthenticated (token never echoed) otherwise."""
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found = None
        # Compare against every digest, in constant time each, so timing tells nothing.
        for digest, identity in self._identities:
            if hmac.compare_digest(presented, digest) and found is None:
                found = identity
        if found is None:
            raise Unauthenticated(
                "the credentials presented are not valid", reason="INVALID_CREDENTIALS"
            )
        return found
