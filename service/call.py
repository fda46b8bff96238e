"""The call in flight, independent of the transport that carries it.

The pipeline builds one `Call` per request once the caller is admitted
(service/pipeline/pipeline.py `admit_call`, for either transport), and makes it current for
the task that serves the request (read only by `time_left`). The transport hands it to the
servicer with the request; the servicer reads it (who, which tenancy snapshot, `no-cache`)
and records what the domain returned for the caller and the reporters: trailers (`x-cache`),
the registry acted on, the audit fields of a write. Below the servicer nothing writes into it:
the domain returns results, and the AWS client sees only the deadline, through `time_left`,
passed in when the server is built.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from service.auth.identity import Identity
from service.auth.tenancy import Tenancy
from service.config import TenantConfig
from service.observability.audit import WriteRecord

CACHE_OUTCOME_KEY = "x-cache"
T = TypeVar("T")


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which doubles the
# cost of building one per call; nothing hashes or replaces it. Its `__init__` is written out:
# the generated one tests each default factory's sentinel (~25 more bytecodes a call).
@dataclass(slots=True, init=False)
class Call:
    """What the pipeline learned about the call in flight, and what the servicer records."""

    request_id: str
    identity: Identity
    rpc: str
    deadline: float  # loop.time() by which the call must be answered
    tenancy: Tenancy  # the snapshot this call runs under, even if a reload swaps it
    # The audit fields of a write, recorded by the servicer from what the domain returned.
    write: WriteRecord | None
    # `cache-control: no-cache` from the caller: read fresh from AWS.
    no_cache: bool
    # Per-call facts for the caller (x-cache, ...) go in trailers, which are nearly free,
    # unlike initial metadata; the pipeline sends them all at once with the request id.
    trailers: list[tuple[str, str]]
    # The registry and region acted on, once authorized (for the log line).
    where: dict[str, str]
    cache_result: list[str]

    def __init__(
        self,
        request_id: str,
        identity: Identity,
        rpc: str,
        deadline: float,
        tenancy: Tenancy,
        write: WriteRecord | None = None,
        no_cache: bool = False,
    ) -> None:
        self.request_id = request_id
        self.identity = identity
        self.rpc = rpc
        self.deadline = deadline
        self.tenancy = tenancy
        self.write = write
        self.no_cache = no_cache
        self.trailers = []
        self.where = {}
        self.cache_result = []

    def cache_outcome(self, outcome: str | None, *, told: str | None = None) -> None:
        """Tell the caller how its read was served: `x-cache: hit|miss|stale`; `told`
        instead when the caller may not learn `outcome` (a slice read: it follows other
        tenants' writes). The access log keeps `outcome` (None: not served by the cache)."""
        shown = told or outcome
        if shown is not None:
            self.trailers.append((CACHE_OUTCOME_KEY, shown))
        if outcome is not None:
            self.cache_result.append(outcome)

    @property
    def tenant(self) -> TenantConfig:
        """The calling tenant."""
        return self.identity.tenant


_current: contextvars.ContextVar[Call] = contextvars.ContextVar("registry_gateway_call")


# Make `call` the current one for this task (grpc.aio runs each RPC in its own task): the
# context variable's own `set`, called directly (no Python frame per call).
begin: Callable[[Call], contextvars.Token[Call]] = _current.set


def current_call() -> Call:
    """The call this task serves."""
    return _current.get()


def time_left() -> float:
    """Seconds left of the current call's deadline (unbounded outside a call: cache loads
    run in an empty context and are bounded by the AWS client's own timeouts)."""
    call = _current.get(None)
    if call is None:
        return float("inf")
    return call.deadline - asyncio.get_running_loop().time()


def outside_call(read: Callable[[], Coroutine[Any, Any, T]]) -> Awaitable[T]:
    """`read()` run as a task outside any call, so `time_left` (the AWS client's view of the
    deadline) is unbounded for it: a write already sent reads back past its caller's
    deadline (service/registry/writes/context.py `WriteContext.outlive`)."""
    return asyncio.create_task(read(), context=contextvars.Context())
