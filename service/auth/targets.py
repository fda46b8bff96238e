"""Target authorization: may this tenant call this RPC on this registry in this region?

Deny by default: a tenant may act only where one of its `registries` entries names the
registry, lists the region and lists the RPC. An unknown registry and a forbidden one get
the same answer, so a caller cannot probe which registries exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.config import GatewayConfig, RegistryConfig, TenantConfig, registry_regions
from service.echo import echo
from service.ecr import limits as ecr_limits
from service.errors import FieldViolation, InvalidArgument, PermissionDenied


@dataclass(frozen=True)
class Target:
    """What one call acts on: the tenant, the registry entry and the region."""

    tenant: str
    registry: RegistryConfig
    region: str
    # The tenant's share of ECR's registry-wide limits for its slice (service/ecr/limits.py).
    share: ecr_limits.Share = ecr_limits.WHOLE_REGISTRY
    # The 12-digit account id of the registry: a field, not a property, read on every call
    # (a property is a Python call each time); derived from `registry`, so not compared.
    registry_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "registry_id", self.registry.registry_id)


def denied(target: Target, rpc: str, reason: str, message: str, field: str) -> PermissionDenied:
    """PermissionDenied for what a write holds (a destination, a principal, a rule), with
    the metadata of every denial and the proto field path of the refused part."""
    return PermissionDenied(
        message,
        reason=reason,
        metadata={
            "tenant": target.tenant,
            "rpc": rpc,
            "registryId": target.registry_id,
            "region": target.region,
            "field": field,
        },
    )


class TargetAuthorizer:
    """Resolves a request's (registry_id, region) defaults and checks the tenant may act there."""

    def __init__(self, config: GatewayConfig) -> None:
        self._config = config
        # Allowed targets, remembered: the answer depends only on this snapshot's config.
        # Bounded by the config (only allowed combinations are kept); a reload builds a new
        # authorizer, so nothing outlives the config it came from.
        self._allowed: dict[tuple[str, str, str, str], Target] = {}
        # The shares the config check computed when the config was loaded (share_plan keeps
        # its result for the same tenants): computed once per config, checked to fit.
        self._shares = ecr_limits.share_plan(config.tenants).shares

    def authorize(self, tenant: TenantConfig, rpc: str, registry_id: str, region: str) -> Target:
        """The target of the call, or PermissionDenied / InvalidArgument."""
        key = (tenant.name, rpc, registry_id, region)
        target = self._allowed.get(key)
        if target is None:
            target = self._allowed[key] = self._authorize(tenant, rpc, registry_id, region)
        return target

    def _authorize(self, tenant: TenantConfig, rpc: str, registry_id: str, region: str) -> Target:
        region = region or self._config.aws.region
        if not registry_id:
            if len(tenant.registries) != 1:
                choices = ", ".join(r.registry_id for r in tenant.registries)
                raise InvalidArgument(
                    f"registry_id is required: tenant {tenant.name} has several "
                    f"registries ({choices})",
                    reason="REGISTRY_ID_REQUIRED",
                    field_violations=[
                        FieldViolation(
                            "registry_id", "required when the tenant has several registries"
                        )
                    ],
                )
            registry_id = tenant.registries[0].registry_id
        for registry in tenant.registries:
            if (
                registry.registry_id == registry_id
                and region in registry_regions(self._config, registry)
                and rpc in registry.operations
            ):
                share = self._shares.get((tenant.name, registry_id), ecr_limits.NOTHING)
                return Target(tenant=tenant.name, registry=registry, region=region, share=share)
        # The registry and region are the caller's, unchecked: echoed bounded and escaped,
        # or a 20,000-character id makes the answer too large to send.
        shown_id, shown_region = echo(registry_id), echo(region)
        raise PermissionDenied(
            f"tenant {tenant.name} may not call {rpc} on registry {shown_id} in {shown_region}",
            reason="TARGET_NOT_ALLOWED",
            metadata={
                "tenant": tenant.name,
                "rpc": rpc,
                "registryId": shown_id,
                "region": shown_region,
            },
        )
