"""A call's request messages, read by the gateway itself within a time-to-message limit.

The interceptor (service/rpc/interceptor.py) serves every unary method as stream-unary, so
that its behaviour runs at the call's headers rather than once grpc.aio has received the
message: it authenticates and takes a slot first, then reads the one message here. A
caller that sends headers and then nothing (or its message slowly) is cancelled after
`server.message_timeout_seconds` instead of holding its slot for as long as it likes.

One sweeping timer for every read, not a timer per call: this runs on every call, and a
dict entry costs less than a timer handle armed and cancelled per call (asyncio's timer
heap compares handles in Python; on a bare grpc.aio server a per-call `call_later` showed
up as a few to ~15 us more server CPU per call, on a noisy shared machine). Reads waiting
are kept in arrival order (all share one limit, so the oldest is always first); the sweep,
every tenth of the limit (at most 0.5 s), cancels the ones past it, so a read is
cancelled between the limit and a tenth of it later. The cancellation becomes the
gateway's own error only when the sweep caused it (the caller's own cancellation or
deadline passes through unchanged).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import grpc

from service.errors import Cancelled, FieldViolation, InvalidArgument

MAX_SWEEP_SECONDS = 0.5


def message_timeout(seconds: float) -> Cancelled:
    """The answer to a caller whose request message did not arrive in time."""
    return Cancelled(
        f"the request message did not arrive within {seconds:g}s of the call's headers; "
        "the call was cancelled",
        reason="REQUEST_MESSAGE_TIMEOUT",
        metadata={"limitSeconds": f"{seconds:g}"},
    )


class TimeToMessage:
    """Reads request messages, cancelling a read that waits longer than `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._every = min(seconds / 10, MAX_SWEEP_SECONDS)
        # Task -> when its wait ends (loop time); insertion-ordered, so oldest first.
        self._waiting: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeping: asyncio.TimerHandle | None = None

    async def read(
        self, context: Any, limited: bool = True, one: bool = False, now: float | None = None
    ) -> Any:
        """The call's next message (grpc.aio.EOF when the caller has closed its side),
        waited for at most `seconds` when `limited` (else as long as the call lasts).
        Raises Cancelled (REQUEST_MESSAGE_TIMEOUT) when the time runs out; with `one`, the
        one message of a unary call (see `read_one`; `one` may be passed by position, as the
        interceptor's hot path does, without `read_one`'s frame). `now`: the loop's time
        if the caller has just read it (the limit then counts from it), not read twice."""
        if not limited:
            message = await context.read()
            if one and message is grpc.aio.EOF:
                raise _no_message()
            return message
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)  # the loop passed: one lookup fewer a call
        assert task is not None
        self._waiting[task] = (loop.time() if now is None else now) + self.seconds
        if self._sweeping is None:
            self._sweeping = loop.call_later(self._every, self._sweep, loop)
        try:
            message = await context.read()
        except asyncio.CancelledError:
            # Ours alone: then the call goes on to answer why; anyone else's (the caller
            # left, its deadline passed, the server stops) is passed on.
            if task in self._expired and task.cancelling() == 1:
                task.uncancel()
                raise message_timeout(self.seconds) from None
            raise
        finally:
            self._waiting.pop(task, None)
            if self._expired:  # nearly always empty: no call to discard from it
                self._expired.discard(task)
        if one and message is grpc.aio.EOF:
            raise _no_message()
        return message

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeping = None
        now = loop.time()
        waiting = self._waiting
        while waiting:
            task, until = next(iter(waiting.items()))
            if until > now:
                break
            del waiting[task]
            self._expired.add(task)
            task.cancel()
        if waiting:
            self._sweeping = loop.call_later(self._every, self._sweep, loop)

    def read_one(self, context: Any, limited: bool = True) -> Coroutine[Any, Any, Any]:
        """The one request message of a unary call; a call that ends without one is
        INVALID_ARGUMENT (grpc would leave it unanswered). grpc's transport ends it so too
        when it refused the message (larger than `grpc.max_receive_message_length`: that
        caller has already heard RESOURCE_EXHAUSTED from grpc itself). `read`'s own
        coroutine, not one more around it (this runs on every call)."""
        return self.read(context, limited, one=True)


def _no_message() -> InvalidArgument:
    return InvalidArgument(
        "no request message was received: none was sent (a unary call carries "
        "exactly one), or the transport refused it",
        reason="REQUEST_NOT_RECEIVED",
        field_violations=[FieldViolation("", "no request message received")],
    )
