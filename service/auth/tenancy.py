"""Everything derived from the tenants and auth config, swapped whole on reload.

A call takes the snapshot current when it starts and keeps it to the end, so calls in
flight finish under the old config while new calls see the new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from service.auth.authenticator import Authenticator
from service.auth.jwt_tokens import JwtVerifier
from service.auth.targets import TargetAuthorizer
from service.config import GatewayConfig


@dataclass(frozen=True)
class Tenancy:
    """One consistent view of who may call and what each may do."""

    config: GatewayConfig
    authenticator: Authenticator
    authorizer: TargetAuthorizer


def build_tenancy(config: GatewayConfig, environ: Mapping[str, str]) -> Tenancy:
    """Build the snapshot; ConfigError when a secret or key file it needs is unusable."""
    jwt = config.auth.jwt
    verifier = JwtVerifier(jwt, config.tenants, environ) if jwt is not None else None
    return Tenancy(
        config=config,
        authenticator=Authenticator(config.tenants, verifier),
        authorizer=TargetAuthorizer(config),
    )


class TenancyHolder:
    """The current snapshot; replaced by one assignment, which is atomic for asyncio tasks."""

    def __init__(self, tenancy: Tenancy) -> None:
        self.current = tenancy

    def swap(self, tenancy: Tenancy) -> None:
        """Make `tenancy` the snapshot of every call that starts from now on."""
        self.current = tenancy
