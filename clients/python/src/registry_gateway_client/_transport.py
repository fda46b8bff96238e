"""What one attempt of a call is, whatever carries it (gRPC or Connect), and the interceptors
that see it.

The shape is temporalio's client interceptors (`temporalio/client/_interceptor.py`): one
frozen input per attempt passed down a chain explicitly (`proceed`), nothing read from a
global. An interceptor wraps every attempt of every call, retries included, on both
transports: it may add metadata (`dataclasses.replace(attempt, metadata=...)`), time, log or
trace the attempt, or refuse it by raising. The innermost link is the transport.

Both the async and the blocking shapes are here; `_aio.py` names the async ones
(`AsyncInterceptor`, `AsyncProceed`, `AsyncTransport`) and its generated twin the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.message import Message

#: Metadata as the client sends it: lowercase keys, text values.
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Attempt:
    """One attempt of a call, as it is about to be sent."""

    #: The RPC, e.g. "DescribeRegistry" (the service is ecr.registry.v1.RegistryConfigService).
    rpc: str
    request: Message
    #: The response message class the RPC answers.
    response_type: type[Message]
    #: Everything sent as metadata (gRPC) or headers (Connect): credentials, `cache-control`,
    #: the caller's per-call `metadata=`.
    metadata: Metadata
    #: Seconds left of the call's one deadline: this attempt's timeout.
    timeout: float
    #: 1 for the first attempt, 2 for the first retry, ...
    number: int


@dataclass(frozen=True)
class Reply:
    """What an attempt got back."""

    response: Message
    #: gRPC's trailing metadata, or Connect's response headers and trailers (`x-request-id`,
    #: `x-cache`, ...).
    metadata: tuple[tuple[str, Any], ...]


#: The rest of the chain, from an interceptor's point of view (async client).
AsyncProceed = Callable[[Attempt], Awaitable[Reply]]
#: The rest of the chain (blocking client).
Proceed = Callable[[Attempt], Reply]


class AsyncInterceptor(Protocol):
    """Sees each attempt of the async client's calls; calls `proceed` to send it on."""

    async def intercept(self, attempt: Attempt, proceed: AsyncProceed) -> Reply: ...


class Interceptor(Protocol):
    """Sees each attempt of the blocking client's calls; calls `proceed` to send it on."""

    def intercept(self, attempt: Attempt, proceed: Proceed) -> Reply: ...


class AsyncTransport(Protocol):
    """Sends one attempt (async); a failure raises a `RegistryGatewayError`."""

    async def unary(self, attempt: Attempt) -> Reply: ...

    async def close(self) -> None: ...


class Transport(Protocol):
    """Sends one attempt (blocking); a failure raises a `RegistryGatewayError`."""

    def unary(self, attempt: Attempt) -> Reply: ...

    def close(self) -> None: ...
