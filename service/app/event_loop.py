"""The event loop the gateway serves on: uvloop when it is installed, else asyncio's own.

Why uvloop: every gRPC call crosses from grpc's poller thread to the event loop and back
several times (grpc.aio's `PollerCompletionQueue` wakes the loop through a socket pair the
loop watches with `add_reader`), and the loop's own work is a large part of a cached read's
CPU; on uvloop (libuv, in C) the gateway spends ~20-25 us less per cached read under load
(bench/findings.md, issue 25).

Why it is sound with grpc.aio: since grpc made the poller the AsyncIO stack's only I/O mode
(grpc/grpc#22453, custom IO managers removed in grpc/grpc#27090: "a poller thread strategy.
It's agnostic to Core's IO solution"), grpc.aio asks of the loop only `add_reader`,
`call_soon`, futures and tasks, which uvloop implements as asyncio's loop does. grpc
documents no loop of its own choosing, nor tests one: so the choice is the operator's
(`server.event_loop`: `asyncio` turns it off), and the gateway's suite runs on both (its
in-process tests on asyncio's loop, the served gateway of the end-to-end tests on this
one). uvloop's `loop.time()` is libuv's clock, read once per loop iteration (ms
resolution): deadlines and the time-to-message sweep need no finer.

uvloop is an optional dependency (`registry-config-gateway[uvloop]`, in the image and the
dev install); without it `auto` serves on asyncio's loop, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from service.config import ConfigError

T = TypeVar("T")
EventLoop = Literal["auto", "asyncio", "uvloop"]


class EventLoopUnavailable(ConfigError):
    """`server.event_loop: uvloop` on an install without it (the CLI answers it as it
    answers a config error: one line, exit status 2)."""


def loop_factory(choice: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the loop `choice` names (None: asyncio's default loop).

    `auto` falls back to asyncio's loop when uvloop cannot be imported; `uvloop` raises
    EventLoopUnavailable then."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "auto":
            return None
        raise EventLoopUnavailable(
            "config error: server.event_loop: uvloop is not installed (pip install "
            "'registry-config-gateway[uvloop]'); set it to auto or asyncio"
        ) from None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: EventLoop = "auto") -> T:
    """`asyncio.run(main)` on the loop `choice` names."""
    try:
        factory = loop_factory(choice)
    except EventLoopUnavailable:
        main.close()  # never started: no "never awaited" warning
        raise
    if factory is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def name(loop: asyncio.AbstractEventLoop) -> str:
    """What the running loop is, for the start-up log line: `uvloop` or `asyncio`."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
