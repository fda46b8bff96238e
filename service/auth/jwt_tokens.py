"""JWT bearer tokens: signature, lifetime, issuer and audience checked, tenant read from a claim.

The key source fixes the algorithms (RFC 8725 §2.1, §3.1): an HS256 secret verifies HS256
only, and each JWKS key verifies only its own RS256 or ES256. The token's `alg` header
never chooses the algorithm, so `alg: none` and RS256->HS256 confusion (a public key used
as an HMAC secret) are refused. Messages are written here from fixed text: they never hold
the token, the secret, or a claim value other than a tenant name.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt
from jwt.algorithms import HMACAlgorithm

from service.auth.identity import Identity
from service.config import ConfigError, JwtConfig, TenantConfig
from service.errors import Unauthenticated

# ErrorInfo reasons of a refused JWT (AIP-193: stable, UPPER_SNAKE_CASE).
JWT_INVALID = "JWT_INVALID"
JWT_EXPIRED = "JWT_EXPIRED"
JWT_NOT_YET_VALID = "JWT_NOT_YET_VALID"
JWT_WRONG_ISSUER = "JWT_WRONG_ISSUER"
JWT_WRONG_AUDIENCE = "JWT_WRONG_AUDIENCE"
JWT_UNKNOWN_TENANT = "JWT_UNKNOWN_TENANT"

HS256 = "HS256"
# The only algorithms a JWKS key may verify; anything else in the file is a config error.
JWKS_ALGORITHMS = frozenset({"RS256", "ES256"})

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*={0,2}")
# Only a tenant name of the config's own shape is echoed back; anything else stays unsaid.
_ECHOABLE_TENANT = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def looks_like_jwt(token: str) -> bool:
    """True when `token` has a JWT's shape: three base64url segments, the first a JSON object
    with `alg`. Routes a bearer token to the JWT verifier rather than the API-key check; it
    proves nothing about the token's validity."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return False
    if not all(_SEGMENT.fullmatch(part) for part in parts):
        return False
    header_segment = parts[0].rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(header_segment + "=" * (-len(header_segment) % 4))
        header = json.loads(raw)
    except (ValueError, RecursionError):  # binascii.Error and UnicodeDecodeError included
        return False
    return isinstance(header, dict) and "alg" in header


class JwtVerifier:
    """Turns a JWT into the Identity of the tenant its tenant claim names.

    Keys are read once, here: a missing secret or an unusable JWKS file is a ConfigError at
    startup (or reload), never a surprise on the first call.
    """

    def __init__(
        self, config: JwtConfig, tenants: Sequence[TenantConfig], environ: Mapping[str, str]
    ) -> None:
        self._config = config
        self._tenants = {tenant.name: tenant for tenant in tenants}
        self._secret: bytes | None = None
        self._jwks: dict[str | None, jwt.PyJWK] = {}
        if config.hs256_secret_env is not None:
            self._secret = _load_secret(config.hs256_secret_env, environ)
        elif config.jwks_file is not None:
            self._jwks = _load_jwks(config.jwks_file)
        else:  # JwtConfig's validator makes this unreachable; fail closed all the same
            raise ConfigError("config error: auth.jwt: give hs256_secret_env or jwks_file")

    def verify(self, token: str) -> Identity:
        """The identity the token proves; Unauthenticated (never echoing it) otherwise."""
        key: bytes | jwt.PyJWK
        if self._secret is not None:
            key, algorithms = self._secret, [HS256]
        else:
            jwk = self._key_for(token)
            key, algorithms = jwk, [jwk.algorithm_name]
        claims = self._decode(token, key, algorithms)
        tenant = self._tenant_of(claims)
        subject = claims.get("sub")
        # PyJWT has checked that a present `sub` is a string.
        return Identity(tenant=tenant, kind="jwt", subject=subject if subject else "-")

    def _key_for(self, token: str) -> jwt.PyJWK:
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise _invalid("the token is not a well-formed JWT") from None
        kid = header.get("kid")
        key = self._jwks.get(kid)
        if key is None and kid is None and len(self._jwks) == 1:
            # A set of one key is unambiguous: a token without `kid` may use it.
            key = next(iter(self._jwks.values()))
        if key is None:
            if kid is None:
                raise _invalid("the token has no key id (kid) and the key set holds several keys")
            raise _invalid("the token is signed with a key this gateway does not know (kid)")
        return key

    def _decode(self, token: str, key: bytes | jwt.PyJWK, algorithms: list[str]) -> dict[str, Any]:
        config = self._config
        try:
            return jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_seconds,
                options={"require": ["exp"], "enforce_minimum_key_length": True},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired", reason=JWT_EXPIRED) from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated(
                "the token is not valid yet (nbf or iat is in the future)",
                reason=JWT_NOT_YET_VALID,
            ) from None
        except jwt.InvalidIssuerError:
            raise _wrong_issuer() from None
        except jwt.InvalidAudienceError:
            raise _wrong_audience() from None
        except jwt.MissingRequiredClaimError as exc:
            if exc.claim == "iss":
                raise _wrong_issuer() from None
            if exc.claim == "aud":
                raise _wrong_audience() from None
            raise _invalid(f"the token has no '{exc.claim}' claim") from None
        except jwt.InvalidAlgorithmError:
            raise _invalid("the token's algorithm (alg) is not accepted for its key") from None
        except jwt.InvalidSignatureError:
            raise _invalid("the token's signature does not verify") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            # Untrusted input: whatever else the parser refuses is a malformed token, not a bug.
            raise _invalid("the token is not a well-formed JWT") from None

    def _tenant_of(self, claims: Mapping[str, Any]) -> TenantConfig:
        name = self._config.tenant_claim
        value = claims.get(name)
        if not isinstance(value, str) or not value:
            raise Unauthenticated(
                f"the token names no tenant (string claim '{name}')", reason=JWT_UNKNOWN_TENANT
            )
        tenant = self._tenants.get(value)
        if tenant is None:
            said = f" '{value}'" if _ECHOABLE_TENANT.fullmatch(value) else ""
            raise Unauthenticated(
                f"the token's tenant{said} is not a tenant of this gateway",
                reason=JWT_UNKNOWN_TENANT,
            )
        return tenant


def _invalid(message: str) -> Unauthenticated:
    return Unauthenticated(message, reason=JWT_INVALID)


def _wrong_issuer() -> Unauthenticated:
    return Unauthenticated("the token is not from the configured issuer", reason=JWT_WRONG_ISSUER)


def _wrong_audience() -> Unauthenticated:
    return Unauthenticated(
        "the token is not meant for this gateway (audience)", reason=JWT_WRONG_AUDIENCE
    )


def _load_secret(env_name: str, environ: Mapping[str, str]) -> bytes:
    where = f"config error: auth.jwt.hs256_secret_env: environment variable {env_name}"
    secret = environ.get(env_name, "")
    if not secret:
        raise ConfigError(f"{where} is not set or is empty")
    key = secret.encode("utf-8")
    algorithm = HMACAlgorithm(HMACAlgorithm.SHA256)
    try:
        # Refuses a PEM/SSH/DER key pasted as the secret: the confusion attack's precondition.
        algorithm.prepare_key(key)
    except jwt.InvalidKeyError:
        raise ConfigError(f"{where} holds an asymmetric key; use jwks_file for those") from None
    if algorithm.check_key_length(key) is not None:
        # RFC 7518 §3.2: an HS256 key must be at least 256 bits.
        raise ConfigError(f"{where} must hold at least 32 bytes")
    return key


def _load_jwks(path: str) -> dict[str | None, jwt.PyJWK]:
    where = f"config error: auth.jwt.jwks_file: {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: is not UTF-8 text") from None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise ConfigError(f"{where}: is not valid JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: is not a JWKS (a JSON object with a 'keys' list)")
    # Encryption keys may share a JWKS with signing keys; they verify nothing here.
    signing = [e for e in entries if not (isinstance(e, dict) and e.get("use") == "enc")]
    if not signing:
        raise ConfigError(f"{where}: holds no signing key")
    keys: dict[str | None, jwt.PyJWK] = {}
    for index, entry in enumerate(signing):
        key = _load_jwk(entry, f"{where}: key {index}")
        if key.key_id in keys:
            raise ConfigError(f"{where}: key {index}: the kid is used by another key too")
        if key.key_id is None and len(signing) > 1:
            raise ConfigError(f"{where}: key {index}: has no kid; with several keys each needs one")
        keys[key.key_id] = key
    return keys


def _load_jwk(entry: object, where: str) -> jwt.PyJWK:
    # Messages are ours: PyJWT's would print the JWK, which may hold private key material.
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: is not a JSON object")
    if "d" in entry or "k" in entry:
        raise ConfigError(f"{where}: holds secret key material; give public RSA or EC keys only")
    kid = entry.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ConfigError(f"{where}: kid must be a string")
    try:
        key = jwt.PyJWK(entry)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise ConfigError(f"{where}: is not a usable RS256 or ES256 public key") from None
    if key.algorithm_name not in JWKS_ALGORITHMS:
        raise ConfigError(f"{where}: only RS256 and ES256 keys are accepted")
    algorithm = key.Algorithm
    try:
        # The same preparation verify() does: ES256 also checks the key is on P-256 here.
        prepared = algorithm.prepare_key(key.key)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise ConfigError(f"{where}: does not fit its algorithm {key.algorithm_name}") from None
    if algorithm.check_key_length(prepared) is not None:
        raise ConfigError(f"{where}: the RSA key is shorter than 2048 bits")
    return key
