"""What a write is given about its caller, as data: who writes (for the history), the
caller's deadline, and how a read outlives that deadline.

The servicer builds one per write from the call in flight (service/rpc/servicer.py); the
domain reads nothing from the transport. Without one (unit tests, a write made outside any
call) a write has no author beyond its tenant and no deadline, as a write outside a call
had before.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Outlive(Protocol):
    """Runs a read so that the caller's deadline no longer bounds it (the AWS client's own
    timeouts still do): what the call module knows of how the AWS client sees a deadline
    (service/call.py `outside_call`)."""

    def __call__(self, read: Callable[[], Coroutine[Any, Any, T]]) -> Awaitable[T]:
        """The read, run outside the caller's deadline."""
        ...


def _as_is(read: Callable[[], Coroutine[Any, Any, T]]) -> Awaitable[T]:
    # Without a call there is no deadline to outlive.
    return read()


@dataclass(frozen=True)
class WriteContext:
    """A write's caller, given to `RegistryOperations`' writes and passed down to the
    settlement."""

    identity: str | None = None  # "kind:subject" of the caller, as the history names it
    rpc: str | None = None
    request_id: str | None = None
    # loop.time() by which the caller must be answered; inf: no deadline.
    deadline: float = math.inf
    # Past the deadline, a write already sent still reads back through this.
    outlive: Outlive = _as_is

    def time_left(self) -> float:
        """Seconds left before the deadline (inf without one)."""
        if math.isinf(self.deadline):
            return math.inf
        return self.deadline - asyncio.get_running_loop().time()


# A write outside any call (unit tests, tools).
UNATTRIBUTED = WriteContext()
