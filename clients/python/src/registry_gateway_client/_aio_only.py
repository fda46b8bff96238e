"""What only the async client needs: its synchronous twin does each of these inline.

`_sync.py` (and each `_sync_*.py`) is generated from `_aio.py` (`_aio_*.py`) by
`scripts/unasync.py`, which rewrites every use of these helpers into the plain blocking code
(see its SUBS): `await maybe_await(f(x))` becomes `f(x)`, `await with_call(method, ...)`
becomes grpc's own `method.with_call(...)`, `Awaitable[T]` becomes `T`, and the line calling
`raise_if_cancelled` goes (a blocking call has no task to cancel).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable
from typing import TypeAlias, TypeVar

import grpc
from google.protobuf.message import Message

__all__ = ["Awaitable", "MaybeAwaitable", "maybe_await", "raise_if_cancelled", "with_call"]

T = TypeVar("T")
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

#: What a caller's callback returns when it may be a plain or a coroutine function.
MaybeAwaitable: TypeAlias = T | Awaitable[T]


async def maybe_await(value: MaybeAwaitable[T]) -> T:
    """`value`, awaited first if it is awaitable (a callback's coroutine)."""
    if inspect.isawaitable(value):
        return await value
    return value


async def with_call(
    method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
    request: Req,
    *,
    timeout: float | None,
    metadata: tuple[tuple[str, str], ...],
) -> tuple[Resp, grpc.aio.UnaryUnaryCall[Req, Resp]]:
    """grpc.aio's form of the blocking `method.with_call(...)`: the response, and the call
    (whose trailing metadata the client reads). A failure raises `grpc.aio.AioRpcError`."""
    call = method(request, timeout=timeout, metadata=metadata)
    return await call, call


def raise_if_cancelled(error: BaseException) -> None:
    """Raise the CancelledError `error` stands for, if it does.

    connectrpc's async client turns the cancellation of the task awaiting a call into
    `ConnectError(CANCELED)` (connectrpc 0.13, `_client_async.py`): re-raised as the
    CancelledError it was, so that a cancelled task (asyncio.timeout, TaskGroup) stops
    instead of seeing an error it would not expect (and the client never retries it).
    """
    if isinstance(error.__cause__, asyncio.CancelledError):
        raise error.__cause__
