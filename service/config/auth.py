"""The `auth:` and `rate_limit:` sections: token kinds, failed-authentication and call rates."""

from __future__ import annotations

from pydantic import Field, model_validator

from service.config.base import Strict


class JwtConfig(Strict):
    """JWT bearer tokens: who signs them, for whom, and which claim names the tenant."""

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    hs256_secret_env: str | None = None
    jwks_file: str | None = None
    tenant_claim: str = "tenant"
    leeway_seconds: float = Field(30.0, ge=0, le=300)

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtConfig:
        if (self.hs256_secret_env is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of hs256_secret_env and jwks_file")
        return self


class AuthConfig(Strict):
    """The `auth:` section: token kinds beyond API keys, and failed-authentication limits."""

    jwt: JwtConfig | None = None
    # Failed authentications per peer address (service/auth/failures.py): past this rate
    # the answer is RESOURCE_EXHAUSTED and only a sample is logged. Valid credentials are
    # never refused because of it.
    failures_per_second: float = Field(1.0, gt=0)
    failures_burst: int = Field(20, ge=1)


class RateLimitConfig(Strict):
    """Token buckets per tenant, one for reads and one for writes."""

    reads_per_second: float = Field(gt=0)
    writes_per_second: float = Field(gt=0)
    burst: int = Field(ge=1)
