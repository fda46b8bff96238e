"""The registry's resources, each described once: how it is read from AWS and put, its etag,
its cache entry, how a read-back is judged, how the history stores it and how a change to
it is told. The read-modify-write (operations.py `RegistryOperations.update`), its settlement
(settlement.py) and drift detection (drift.py) are written once, against `ResourceKind`;
adding a third resource is one more description here (plus its `Resource` name in
service/state/cache/base.py and what the cache and the history store per resource:
service/state/cache/redis_store.py `_MESSAGES`, service/state/history.py `_split`).

Names. Inside the code a resource has one name, `ResourceKind.name` (`replication`,
`policy`): the name audit lines and metrics already give it. What is stored keeps the names
it has always had, `ResourceKind.stored_as` (`registry`, `policy`): the cache key
(`CacheKey.resource`), hence the Redis keys of the cache, the history and the write-in-flight
markers. This is the one place the two are mapped: renaming a stored name would orphan every
key already written (cache entries, histories) on a rolling upgrade.

Every description is a value without state: the ECR port is passed in to its reads and puts.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from google.protobuf.message import DecodeError, Message

from service.auth.targets import Target
from service.aws.port import EcrPort, NoPolicy
from service.ecr import convert, etags
from service.errors import NotFound
from service.gen.v1 import registry_pb2 as pb
from service.registry.model import plan, read_back
from service.registry.model.slices import Ownership
from service.state.cache import CacheKey
from service.state.cache.base import Resource
from service.state.history import Mine, PieceKind

V = TypeVar("V")  # a value as read from AWS
D = TypeVar("D")  # a document, as a write writes it

# A change a diff found, and which tenants' slices it concerns (from their Ownership).
Changed = tuple[pb.Change, Callable[[Ownership], bool]]


class ResourceKind(Protocol[V, D]):
    """What the generic read-modify-write, settlement and drift detection need of one
    resource. `V`: a value as read from AWS (what the cache and the history keep, what drift
    observes); `D`: the document a write writes, one part of `V` (for a policy the two are
    the same: its text, None for no policy)."""

    @property
    def name(self) -> str:
        """The resource's one name in the code, audit lines and metrics."""
        ...

    @property
    def stored_as(self) -> Resource:
        """Its name in what is stored (cache, history and write-marker keys)."""
        ...

    async def read(
        self, ecr: EcrPort, target: Target, *, shared: bool = False
    ) -> tuple[V, NotFound | None]:
        """The value AWS holds now; with the NotFound a caller asking for it hears when AWS
        holds none (None otherwise). `shared`: a cache load (service/aws/port.py)."""
        ...

    def entry(self, target: Target, value: V) -> Message | None:
        """What the cache keeps of a value (None: a negative entry, there is none)."""
        ...

    def etag(self, value: V) -> str:
        """The value's etag (service/ecr/etags.py)."""
        ...

    def document(self, value: V) -> D:
        """The document a value holds."""
        ...

    def with_document(self, like: V, document: D) -> V:
        """A value like `like` holding `document` (what the history records of a write)."""
        ...

    def operation(self, proposed: D) -> str:
        """The ECR operation that writes `proposed`, as logs and errors name it."""
        ...

    def nothing_to_send(self, current: V, proposed: D) -> bool:
        """Whether writing `proposed` over `current` needs no AWS call at all."""
        ...

    async def put(self, ecr: EcrPort, target: Target, proposed: D) -> D:
        """Write `proposed` (bounded by the caller's deadline only until sent); what AWS
        answered."""
        ...

    def taken(self, proposed: D, answered: D) -> D | None:
        """AWS's own form of what it now holds, from its answer to the write (None: the
        answer is not that, as a delete's, the document it deleted)."""
        ...

    def holds(self, written: D, after: D, answered: D | None) -> bool:
        """Whether a read-back (`after`) holds what was written, by meaning
        (service/registry/model/read_back.py)."""
        ...

    def serialized(self, document: D) -> bytes:
        """The document as the history stores it."""
        ...

    def parsed(self, stored: bytes) -> D:
        """A document the history stored; ValueError when the bytes are not one."""
        ...

    def changes(self, before: D, after: D) -> list[Changed]:
        """What changed, as a plan (service/registry/model/plan.py), each change with whose
        slices it concerns."""
        ...

    def value_bytes(self, value: V) -> bytes:
        """A value as another replica reads it back (`value_from`): a handed-over write's
        answer (handoff.py)."""
        ...

    def value_from(self, raw: bytes) -> V:
        """The value `value_bytes` made; ValueError when the bytes are not one."""
        ...

    def owned_pieces(self, owner: Ownership) -> Mine:
        """Which pieces of the history's split of a document (service/state/history.py
        `Mine`) are `owner`'s own part: what a slice write's history entry introduces as
        its writer's."""
        ...


class _Replication:
    """The registry's replication configuration: DescribeRegistry's answer, written as a
    ReplicationConfiguration by PutReplicationConfiguration."""

    name = "replication"
    stored_as: Resource = "registry"

    async def read(
        self, ecr: EcrPort, target: Target, *, shared: bool = False
    ) -> tuple[pb.DescribeRegistryResponse, NotFound | None]:
        return await ecr.describe_registry(target, shared=shared), None

    def entry(self, target: Target, value: pb.DescribeRegistryResponse) -> Message | None:
        return value

    def etag(self, value: pb.DescribeRegistryResponse) -> str:
        return value.etag

    def document(self, value: pb.DescribeRegistryResponse) -> pb.ReplicationConfiguration:
        return value.replication_configuration

    def with_document(
        self, like: pb.DescribeRegistryResponse, document: pb.ReplicationConfiguration
    ) -> pb.DescribeRegistryResponse:
        # Through AWS's JSON, so that the etag is the one AWS's answer would have, and the
        # message the one `convert.describe_response` would parse from it. Built from that
        # JSON directly rather than through protobuf's json_format, which costs ~10 ms for a
        # packed configuration of hundreds of filters: a group write builds one per writer.
        aws = convert.replication_to_aws(document)
        return pb.DescribeRegistryResponse(
            registry_id=like.registry_id,
            replication_configuration=pb.ReplicationConfiguration(
                rules=[
                    pb.ReplicationRule(
                        destinations=[
                            pb.ReplicationDestination(
                                region=d["region"], registry_id=d["registryId"]
                            )
                            for d in rule["destinations"]
                        ],
                        repository_filters=[
                            pb.RepositoryFilter(filter=f["filter"], filter_type=f["filterType"])
                            for f in rule.get("repositoryFilters", ())
                        ],
                    )
                    for rule in aws["rules"]
                ]
            ),
            etag=etags.of_json(aws),
        )

    def operation(self, proposed: pb.ReplicationConfiguration) -> str:
        return "put_replication_configuration"

    def nothing_to_send(
        self, current: pb.DescribeRegistryResponse, proposed: pb.ReplicationConfiguration
    ) -> bool:
        return False  # a configuration is always put, even one equal to the current

    async def put(
        self, ecr: EcrPort, target: Target, proposed: pb.ReplicationConfiguration
    ) -> pb.ReplicationConfiguration:
        return await ecr.put_replication_configuration(target, proposed, finish_once_sent=True)

    def taken(
        self, proposed: pb.ReplicationConfiguration, answered: pb.ReplicationConfiguration
    ) -> pb.ReplicationConfiguration | None:
        return answered

    def holds(
        self,
        written: pb.ReplicationConfiguration,
        after: pb.ReplicationConfiguration,
        answered: pb.ReplicationConfiguration | None,
    ) -> bool:
        return read_back.replication_holds(written, after, answered)

    def serialized(self, document: pb.ReplicationConfiguration) -> bytes:
        return document.SerializeToString(deterministic=True)

    def parsed(self, stored: bytes) -> pb.ReplicationConfiguration:
        try:
            return pb.ReplicationConfiguration.FromString(stored)
        except DecodeError as exc:
            raise ValueError("not a replication configuration") from exc

    def changes(
        self, before: pb.ReplicationConfiguration, after: pb.ReplicationConfiguration
    ) -> list[Changed]:
        found: list[Changed] = []
        for change in plan.replication_changes(before, after):
            rules = before.rules if change.action == "remove" else after.rules
            index = _index(change.path)
            rule = rules[index] if index is not None and index < len(rules) else None
            found.append((change, _rule_owned(rule)))
        return found

    def value_bytes(self, value: pb.DescribeRegistryResponse) -> bytes:
        return value.SerializeToString(deterministic=True)

    def value_from(self, raw: bytes) -> pb.DescribeRegistryResponse:
        try:
            return pb.DescribeRegistryResponse.FromString(raw)
        except DecodeError as exc:
            raise ValueError("not a DescribeRegistry answer") from exc

    def owned_pieces(self, owner: Ownership) -> Mine:
        def mine(kind: PieceKind, data: bytes) -> bool:
            # A filter part is the field entry of one repository filter: a ReplicationRule
            # holding only it. A rule stored whole is never one tenant's (rules are packed).
            if kind != "filter":
                return False
            try:
                filters = pb.ReplicationRule.FromString(data).repository_filters
            except DecodeError:
                return False
            return bool(filters) and all(owner.owns_filter(f.filter) for f in filters)

        return mine


class _Policy:
    """The registry policy: its text as ECR stores it, None when there is none."""

    name = "policy"
    stored_as: Resource = "policy"

    async def read(
        self, ecr: EcrPort, target: Target, *, shared: bool = False
    ) -> tuple[str | None, NotFound | None]:
        policy = await ecr.get_registry_policy(target, shared=shared)
        if isinstance(policy, NoPolicy):
            return None, policy.not_found()  # keeps AWS's request id for the NOT_FOUND
        return policy, None

    def entry(self, target: Target, value: str | None) -> Message | None:
        return None if value is None else convert.policy_response(target.registry_id, value)

    def etag(self, value: str | None) -> str:
        return etags.of_policy(value)

    def document(self, value: str | None) -> str | None:
        return value

    def with_document(self, like: str | None, document: str | None) -> str | None:
        return document

    def operation(self, proposed: str | None) -> str:
        return "put_registry_policy" if proposed is not None else "delete_registry_policy"

    def nothing_to_send(self, current: str | None, proposed: str | None) -> bool:
        # Nothing to delete: AWS would answer RegistryPolicyNotFoundException.
        return proposed is None and current is None

    async def put(self, ecr: EcrPort, target: Target, proposed: str | None) -> str | None:
        if proposed is None:
            return await ecr.delete_registry_policy(target, finish_once_sent=True)
        return await ecr.put_registry_policy(target, proposed, finish_once_sent=True)

    def taken(self, proposed: str | None, answered: str | None) -> str | None:
        # A delete answers the policy it deleted: no form of what now stands.
        return answered if proposed is not None else None

    def holds(self, written: str | None, after: str | None, answered: str | None) -> bool:
        return read_back.policy_holds(written, after, answered)

    def serialized(self, document: str | None) -> bytes:
        return b"" if document is None else document.encode("utf-8")

    def parsed(self, stored: bytes) -> str | None:
        return stored.decode("utf-8", "replace") if stored else None

    def changes(self, before: str | None, after: str | None) -> list[Changed]:
        return [(c, _statement_owned(_sid(c.path))) for c in plan.policy_changes(before, after)]

    def value_bytes(self, value: str | None) -> bytes:
        return json.dumps(value).encode("utf-8")  # null: no policy

    def value_from(self, raw: bytes) -> str | None:
        value = json.loads(raw)  # ValueError when not JSON
        if value is not None and not isinstance(value, str):
            raise ValueError("not a policy")
        return value

    def owned_pieces(self, owner: Ownership) -> Mine:
        def mine(kind: PieceKind, data: bytes) -> bool:
            if kind != "element":  # a statement; not the text between, nor a whole policy
                return False
            try:
                statement = json.loads(data)
            except ValueError:
                return False
            return owner.owns_statement(statement)

        return mine


REPLICATION: ResourceKind[pb.DescribeRegistryResponse, pb.ReplicationConfiguration] = _Replication()
POLICY: ResourceKind[str | None, str | None] = _Policy()

# Every kind by its stored name (`CacheKey.resource`): how drift detection, given a key,
# finds its resource.
KINDS: Mapping[Resource, ResourceKind[Any, Any]] = {
    kind.stored_as: kind for kind in (REPLICATION, POLICY)
}


def kind_of(key: CacheKey) -> ResourceKind[Any, Any]:
    """The resource a cache key is of."""
    return KINDS[key.resource]


def key_of(kind: ResourceKind[Any, Any], target: Target) -> CacheKey:
    """The cache key of a target's resource (also its history's and write marker's)."""
    return cache_key(target.registry_id, target.region, kind.stored_as)


@functools.lru_cache(maxsize=4096)
def cache_key(registry_id: str, region: str, resource: Resource) -> CacheKey:
    """`key_of` by its parts (the read path calls it without a frame of `key_of`'s): one
    key object per resource, not one per call."""
    return CacheKey(registry_id, region, resource)


# --- whose slice a change concerns -----------------------------------------------------------


def _rule_owned(rule: pb.ReplicationRule | None) -> Callable[[Ownership], bool]:
    if rule is None:
        return lambda owner: False  # an order change: of no one rule
    return lambda owner: owner.owns_rule(rule)


def _statement_owned(sid: str | None) -> Callable[[Ownership], bool]:
    if sid is None:
        return lambda owner: False  # a statement without a Sid: no slice holds it
    return lambda owner: owner.owns_statement({"Sid": sid})


def _index(path: str) -> int | None:
    # plan.rule_changes names a rule `replication_configuration.rules[i]`.
    prefix = plan.RULES + "["
    if path.startswith(prefix) and path.endswith("]"):
        digits = path[len(prefix) : -1]
        return int(digits) if digits.isdigit() else None
    return None


def _sid(path: str) -> str | None:
    # plan.policy_changes names a statement `policy_text.Statement[Sid=X]` (or by index).
    marker = "[Sid="
    at = path.find(marker)
    return path[at + len(marker) : -1] if at >= 0 and path.endswith("]") else None
