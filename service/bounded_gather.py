"""Many awaitables run a few at a time, none holding the others back for long.

The start-up probes (service/app/server.py) and reads of ECR's REGISTRY_POLICY_SCOPE
(service/aws/upstream.py) run once per configured account and region: hundreds at once
would make hundreds of AWS clients and connections together, each waiting on the others
for the one core, until every probe times out together. Run `limit` at a time, in order,
they finish as their work allows. One that is still running after `patience` seconds is
waiting on the network, not working: it gives its slot to the next and goes on, so a
registry that does not answer delays the others by at most `patience`, not by its timeout
times the queue ahead of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


async def gather_bounded(
    calls: Sequence[Callable[[], Awaitable[T]]], *, limit: int, patience: float
) -> list[T]:
    """Each call's result, in order; at most `limit` running at once, except calls past
    their `patience` seconds, which no longer count. Exceptions propagate as gather's do."""
    slots = asyncio.Semaphore(max(1, limit))
    loop = asyncio.get_running_loop()

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        await slots.acquire()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                slots.release()

        timer = loop.call_later(patience, release)
        try:
            return await call()
        finally:
            timer.cancel()
            release()

    return list(await asyncio.gather(*(one(call) for call in calls)))
