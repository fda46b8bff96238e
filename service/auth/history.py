"""Which view of a resource's history a tenant gets: the whole documents, its slice, or none.

GetConfigurationHistory must itself be listed in the registry entry's `operations` (target
authorization, service/auth/targets.py, as for every RPC). The history shows what the
resource's read RPCs show, no more: a tenant that may call the full read RPC of the resource
(DescribeRegistry, GetRegistryPolicy) sees every version whole; one that may call its slice
read RPC (GetReplicationRules, GetPolicyStatements) and owns a slice of that resource sees
its slice of the versions where that slice changed (service/registry/rpcs/history_view.py); any
other is refused, naming the resource and what would allow it, never anything of another
tenant's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.auth.targets import Target
from service.errors import PermissionDenied

HistoryResource = Literal["registry", "policy"]
View = Literal["full", "slice"]
RPC = "GetConfigurationHistory"
REASON = "HISTORY_VIEW_NOT_ALLOWED"


@dataclass(frozen=True)
class _Reads:
    what: str  # the resource, as a person names it
    full: str  # the read RPC answering the whole document
    slice: str  # the read RPC answering the caller's slice
    owned_by: str  # the registry entry's key that gives the slice
    named: str  # the request's `resource` value naming it


_READS: dict[HistoryResource, _Reads] = {
    "registry": _Reads(
        "replication configuration",
        "DescribeRegistry",
        "GetReplicationRules",
        "owned_repository_prefixes",
        "HISTORY_RESOURCE_REPLICATION",
    ),
    "policy": _Reads(
        "registry policy",
        "GetRegistryPolicy",
        "GetPolicyStatements",
        "owned_statement_sid_prefix",
        "HISTORY_RESOURCE_POLICY",
    ),
}


def _owns_slice(target: Target, resource: HistoryResource) -> bool:
    if resource == "registry":
        return bool(target.registry.owned_repository_prefixes)
    return bool(target.registry.owned_statement_sid_prefix)


def history_view(target: Target, resource: HistoryResource) -> View:
    """The view the target's tenant gets of `resource`'s history, or PermissionDenied.

    Judged on the registry entry the target was authorized by (the one listing
    GetConfigurationHistory for this registry and region).
    """
    reads = _READS[resource]
    operations = target.registry.operations
    if reads.full in operations:
        return "full"
    if reads.slice in operations and _owns_slice(target, resource):
        return "slice"
    raise PermissionDenied(
        f"tenant {target.tenant} may not read the history of the {reads.what} of registry "
        f"{target.registry_id} in {target.region}: its registry entry must list {reads.full} "
        f"(every version whole), or {reads.slice} with {reads.owned_by} (its slice of each "
        f"version)",
        reason=REASON,
        metadata={
            "tenant": target.tenant,
            "rpc": RPC,
            "registryId": target.registry_id,
            "region": target.region,
            "resource": reads.named,
        },
    )
