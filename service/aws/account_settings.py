"""ECR's REGISTRY_POLICY_SCOPE per (account, region): what AWS said, and the scope to use.

A registry policy is judged under the account's scope (V1: only ecr:CreateRepository,
ecr:ReplicateImage and ecr:BatchImportUpstreamImage; V2: every ECR action). `policy_scope:
auto` (the default) uses what ECR's GetAccountSetting answered, read when the account's
client is made (service/aws/upstream.py) and again on reload. While it could not be read
(access denied, AWS unavailable), policy writes of that registry fail closed with
FAILED_PRECONDITION (POLICY_SCOPE_UNKNOWN); reads go on. A pinned V1 or V2 is used as
pinned; when AWS answers otherwise, that is logged and counted
(registry_gateway_policy_scope_mismatch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from service.config import RegistryConfig
from service.errors import FailedPrecondition, GatewayError
from service.observability.metrics import Metrics

log = logging.getLogger("registry_gateway.account_settings")

SETTING = "REGISTRY_POLICY_SCOPE"
Scope = Literal["V1", "V2"]
SCOPES: tuple[Scope, ...] = ("V1", "V2")
NOT_READ = "it has not been read yet, it is being read now: try again"


@dataclass(frozen=True)
class Unreadable:
    """Why the setting could not be read; `refused`: the gateway's own refusal of the
    account (e.g. ACCOUNT_MISMATCH), answered as such rather than as an unknown scope."""

    why: str
    refused: GatewayError | None = None


class PolicyScopes:
    """The REGISTRY_POLICY_SCOPE AWS answered per (account, region), and the one to use."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        on_missing: Callable[[RegistryConfig, str], None] | None = None,
    ) -> None:
        self._metrics = metrics
        self._on_missing = on_missing
        self._read: dict[tuple[str, str], Scope | Unreadable] = {}

    def record(self, registry: RegistryConfig, region: str, value: str) -> None:
        """What GetAccountSetting answered for the registry's account in `region`."""
        key = (registry.registry_id, region)
        if value not in SCOPES:
            self.unreadable(registry, region, f"ECR answered the unknown scope {value!r}")
            return
        scope: Scope = "V1" if value == "V1" else "V2"
        self._read[key] = scope
        pinned = registry.policy_scope
        if pinned != "auto" and pinned != scope:
            log.warning(
                "registry %s pins policy scope %s, but ECR's %s in %s is %s",
                registry.registry_id,
                pinned,
                SETTING,
                region,
                scope,
                extra={"registry_id": registry.registry_id, "region": region},
            )
            if self._metrics is not None:
                self._metrics.policy_scope_mismatch.labels(registry.registry_id, region).inc()

    def unreadable(
        self,
        registry: RegistryConfig,
        region: str,
        why: str,
        refused: GatewayError | None = None,
    ) -> None:
        """GetAccountSetting failed for the registry's account in `region`."""
        self._read[(registry.registry_id, region)] = Unreadable(why, refused)
        log.warning(
            "cannot read ECR's %s of registry %s in %s: %s%s",
            SETTING,
            registry.registry_id,
            region,
            why,
            "; its policy writes are refused until it can"
            if registry.policy_scope == "auto"
            else f"; using the pinned {registry.policy_scope}",
            extra={"registry_id": registry.registry_id, "region": region},
        )

    def read(self, registry_id: str, region: str) -> Scope | Unreadable | None:
        """What was last read (None: never tried)."""
        return self._read.get((registry_id, region))

    def scope_for(self, registry: RegistryConfig, region: str) -> Scope:
        """The scope a policy write of this registry is judged under; FailedPrecondition
        (POLICY_SCOPE_UNKNOWN) when it is `auto` and AWS's could not be read."""
        if registry.policy_scope != "auto":
            return registry.policy_scope
        read = self._read.get((registry.registry_id, region))
        if isinstance(read, str):
            return read
        if read is None and self._on_missing is not None:
            self._on_missing(registry, region)
        if read is not None and read.refused is not None:
            # The account itself is refused (wrong credentials): that is the answer.
            raise read.refused
        why = read.why if read is not None else NOT_READ
        raise FailedPrecondition(
            f"the registry policy scope of registry {registry.registry_id} in {region} is "
            f"unknown ({SETTING}: {why}); policy writes are refused until the gateway can "
            f"read it (ecr:GetAccountSetting), or the config pins policy_scope V1 or V2",
            reason="POLICY_SCOPE_UNKNOWN",
            metadata={"registryId": registry.registry_id, "region": region},
        )
