"""The checks across tenants, run when the config is validated (`GatewayConfig.tenants`):
names, keys and SPIFFE IDs prove one tenant each, owned slices of a registry do not
overlap, one policy scope per registry, slice writers own slices, a catalog of destination
sets lies inside its allow-list, and the shares of each registry fit ECR's limits
(service/ecr/limits.py). Each raises ValueError, which pydantic
reports under the key `tenants`."""

from __future__ import annotations

from service.config.tenants import TenantConfig
from service.ecr import limits as ecr_limits


def check_tenants(tenants: tuple[TenantConfig, ...]) -> None:
    """Refuse tenants that would be ambiguous or would not fit together on a registry."""
    names: set[str] = set()
    owners: dict[str, str] = {}
    for tenant in tenants:
        if tenant.name in names:
            raise ValueError(f"tenant names must be unique: {tenant.name} appears twice")
        names.add(tenant.name)
        for digest in tenant.api_keys:
            other = owners.setdefault(digest, tenant.name)
            if other != tenant.name:
                # One key must prove one tenant; otherwise whoever is listed first wins.
                raise ValueError(f"tenants {other} and {tenant.name} share an API key")
        for spiffe_id in tenant.spiffe_ids:
            other = owners.setdefault(spiffe_id, tenant.name)
            if other != tenant.name:
                raise ValueError(f"tenants {other} and {tenant.name} share {spiffe_id}")
    _unambiguous_ownership(tenants)
    _one_policy_scope_per_registry(tenants)
    _slice_writers_own_slices(tenants)
    _catalogs_inside_allow_lists(tenants)
    ecr_limits.share_plan(tenants)  # the shares of each registry fit ECR's limits


def _unambiguous_ownership(tenants: tuple[TenantConfig, ...]) -> None:
    """Refuse two tenants owning overlapping slices of one registry.

    Overlap is one prefix starting with the other ("payments/" and "payments/eu/"): a rule
    or statement could then belong to both, and either could replace the other's.
    """
    claims: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for tenant in tenants:
        for registry in tenant.registries:
            for prefix in registry.owned_repository_prefixes:
                claims.setdefault(("repository", registry.registry_id), []).append(
                    (tenant.name, prefix)
                )
            if registry.owned_statement_sid_prefix:
                claims.setdefault(("statement Sid", registry.registry_id), []).append(
                    (tenant.name, registry.owned_statement_sid_prefix)
                )
    for (kind, registry_id), owned in claims.items():
        for i, (tenant_a, prefix_a) in enumerate(owned):
            for tenant_b, prefix_b in owned[i + 1 :]:
                if tenant_a != tenant_b and (
                    prefix_a.startswith(prefix_b) or prefix_b.startswith(prefix_a)
                ):
                    raise ValueError(
                        f"tenants {tenant_a} and {tenant_b} own overlapping {kind} prefixes "
                        f"{prefix_a!r} and {prefix_b!r} on registry {registry_id}"
                    )


def _one_policy_scope_per_registry(tenants: tuple[TenantConfig, ...]) -> None:
    """Refuse two entries of one registry naming different policy scopes.

    ECR's registry policy scope is one setting of the account (GetAccountSetting
    REGISTRY_POLICY_SCOPE); a merged policy is checked under it, so entries that disagree
    would let one tenant's statements, valid under its scope, refuse another's writes.
    `auto` counts as one value: all entries of a registry read it, or all pin the same one.
    """
    scopes: dict[str, tuple[str, str]] = {}
    for tenant in tenants:
        for registry in tenant.registries:
            seen = scopes.setdefault(registry.registry_id, (registry.policy_scope, tenant.name))
            if seen[0] != registry.policy_scope:
                raise ValueError(
                    f"registry {registry.registry_id} has one policy scope, but tenant "
                    f"{seen[1]} names {seen[0]} and tenant {tenant.name} names "
                    f"{registry.policy_scope}"
                )


def _slice_writers_own_slices(tenants: tuple[TenantConfig, ...]) -> None:
    """Refuse a slice write granted to a tenant owning nothing it could write to.

    A slice statement may act only on the tenant's own repositories (its Resource lies
    under an owned repository prefix), so PutPolicyStatements needs repository prefixes as
    well as a Sid prefix; a rule is the tenant's only inside its repository prefixes.
    """
    needs = {
        "PutReplicationRules": ("owned_repository_prefixes",),
        "PutPolicyStatements": ("owned_repository_prefixes", "owned_statement_sid_prefix"),
    }
    for tenant in tenants:
        for registry in tenant.registries:
            for rpc, keys in needs.items():
                missing = [key for key in keys if not getattr(registry, key)]
                if rpc in registry.operations and missing:
                    raise ValueError(
                        f"tenant {tenant.name} may call {rpc} on registry "
                        f"{registry.registry_id} but has no {' and no '.join(missing)}: "
                        f"it would own nothing to write"
                    )


def _catalogs_inside_allow_lists(tenants: tuple[TenantConfig, ...]) -> None:
    """Refuse a destination set of a catalog (`destination_sets`) naming a destination its
    entry's `replication_destinations` does not allow: no write could ever use it, and the
    registry's worst case would count a set nobody can reach as if one could."""
    for tenant in tenants:
        for registry in tenant.registries:
            allowed = {
                (d.registry_id, region)
                for d in registry.replication_destinations
                for region in d.regions
            }
            for i, destination_set in enumerate(registry.destination_sets or ()):
                for d in destination_set:
                    for region in d.regions:
                        if (d.registry_id, region) not in allowed:
                            raise ValueError(
                                f"tenant {tenant.name}: destination_sets[{i}] on registry "
                                f"{registry.registry_id} names registry {d.registry_id} in "
                                f"{region}, which its replication_destinations do not allow"
                            )
