"""Authentication: which tenant a call comes from, by client certificate, JWT or API key."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from service.auth.api_keys import ApiKeyAuthenticator, bearer_token
from service.auth.identity import Identity
from service.auth.jwt_tokens import JwtVerifier, looks_like_jwt
from service.config import TenantConfig
from service.echo import echo
from service.errors import Unauthenticated

AuthContext = Mapping[str, Iterable[bytes]]

# grpcio sets these on a TLS connection whose client presented a certificate (verified on a
# `client_auth: require` listener); peer_spiffe_id only when the cert has exactly one URI SAN.
PEER_CERT_KEY = "x509_pem_cert"
SPIFFE_KEY = "peer_spiffe_id"


class Authenticator:
    """Client certificate (SPIFFE ID) first, else the bearer token as a JWT or an API key."""

    def __init__(self, tenants: Sequence[TenantConfig], jwt: JwtVerifier | None) -> None:
        self._api_keys = ApiKeyAuthenticator(tenants)
        self._jwt = jwt
        self._by_spiffe = {s: t for t in tenants for s in t.spiffe_ids}

    def authenticate(
        self,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        auth_context: AuthContext | None = None,
    ) -> Identity:
        """The caller's identity, or Unauthenticated (the message never echoes a credential)."""
        if auth_context and auth_context.get(PEER_CERT_KEY):
            # On an mTLS listener the certificate is the identity; a token beside it is ignored
            # so that one connection cannot speak for two tenants.
            return self._from_certificate(auth_context)
        token = bearer_token(metadata)
        if self._jwt is not None and looks_like_jwt(token):
            return self._jwt.verify(token)
        return self._api_keys.identify(token)

    def _from_certificate(self, auth_context: AuthContext) -> Identity:
        ids = [v.decode("utf-8", "replace") for v in auth_context.get(SPIFFE_KEY) or ()]
        if len(ids) != 1:
            raise Unauthenticated(
                "the client certificate carries no single SPIFFE ID (one URI SAN)",
                reason="CERTIFICATE_WITHOUT_SPIFFE_ID",
            )
        tenant = self._by_spiffe.get(ids[0])
        if tenant is None:
            raise Unauthenticated(
                f"no tenant is mapped to the client certificate's SPIFFE ID {echo(ids[0])}",
                reason="UNKNOWN_SPIFFE_ID",
            )
        return Identity(tenant=tenant, kind="spiffe", subject=ids[0])
