"""A slice write as the group commit carries it (service/registry/writes/group_commit.py,
operations.py `_commit`) and as a hand-over between replicas rebuilds it (handing.py), and
the update a read-modify-write answers: the data both modules share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from service.auth.targets import Target
from service.registry.writes.context import WriteContext
from service.registry.writes.handoff import Handed
from service.registry.writes.settlement import CallerSlice
from service.state.cache import CacheKey

V = TypeVar("V")  # a value as read from AWS (resources.py ResourceKind)
D = TypeVar("D")  # a document as written


@dataclass(frozen=True)
class Update(Generic[V, D]):
    """A read-modify-write of any resource (`RegistryOperations.update`): before, asked,
    after, and what AWS answered."""

    before: V  # read fresh from AWS inside the lock
    proposed: D
    after: V  # read back after the write; `before` when nothing was written
    done: bool  # False with validate_only
    sent: bool  # whether the write went to AWS (not with nothing to send)
    answered: D | None  # what AWS answered the write; None: not sent, or no answer
    etag_before: str  # of `before`
    etag_after: str | None  # of `after`; None with validate_only


@dataclass
class Attempt:
    """What a write has read so far, for its failure to say."""

    etag_before: str | None = None
    # Its change went into a document a batch sent (or was to send): it may be applied.
    proposed: bool = False


@dataclass(frozen=True)
class SliceWrite(Generic[V, D]):
    """A slice write waiting to be applied with others (`RegistryOperations._commit`)."""

    target: Target
    change: Callable[[V], D]
    caller_slice: CallerSlice[D]
    context: WriteContext
    attempt: Attempt
    # The caller's request, serialized, as another replica judges it again when the write
    # is handed over (handoff.py); None: it is applied here or not at all.
    request: bytes | None = None
    # When it queued (Unix time): no older write of its tenant handed over by another
    # replica is applied after it (handoff.py `HandOff.last_applied`).
    queued_at: float = 0.0


@dataclass(frozen=True)
class Rejudged(Generic[V, D]):
    """A handed-over slice request judged again by the replica that applies it, with its
    own tenant config: the caller's target there, its change and its slice."""

    target: Target
    change: Callable[[V], D]
    caller_slice: CallerSlice[D]


# Judges a handed-over request again (service/registry/rpcs/slice_operations.py
# `SliceOperations.rejudge`); raises the GatewayError its caller is answered.
Rejudge = Callable[[CacheKey, Handed], Rejudged[Any, Any]]
