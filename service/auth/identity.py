"""Who a call proved to be: the tenant, and how it proved it (for the audit trail)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.config import TenantConfig

IdentityKind = Literal["api_key", "jwt", "spiffe"]


@dataclass(frozen=True)
class Identity:
    """An authenticated caller. `subject` is safe to log: a key digest prefix, a JWT `sub`
    or a SPIFFE ID, never a secret."""

    tenant: TenantConfig
    kind: IdentityKind
    subject: str
