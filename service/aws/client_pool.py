"""The open AWS clients of a process, by key: held while used, closed once idle.

A client holds its connection pool and its share of botocore's per-client objects (~0.3 MB);
one per (account, region) for hundreds of accounts adds up, while most are used rarely.
A client unused for `idle_seconds` with no call in flight is closed; the next call on its
key makes it again (service/aws/upstream.py keeps what was learnt when it was first made:
the account check and ECR's REGISTRY_POLICY_SCOPE), so closing costs only a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger("registry_gateway.upstream")

K = TypeVar("K", bound=Hashable)


@dataclass
class _Held:
    client: Any
    stack: AsyncExitStack
    last_used: float
    in_flight: int = 0


class ClientPool(Generic[K]):
    """Open clients by key. `get` answers an open one (and counts it used now), `add` opens
    one, `using` marks a call in flight on it; `close_idle` closes those unused for
    `idle_seconds` with nothing in flight (0: never); `close` closes them all."""

    def __init__(self, idle_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._idle_seconds = idle_seconds
        self._clock = clock
        self._held: dict[K, _Held] = {}
        self._making: dict[K, asyncio.Lock] = {}
        self._reaper: asyncio.Task[None] | None = None
        self.closed_idle = 0  # clients closed for idleness so far

    def get(self, key: K) -> Any | None:
        """The open client of `key`, if any (now counted as used)."""
        held = self._held.get(key)
        if held is None:
            return None
        held.last_used = self._clock()
        return held.client

    async def add(self, key: K, client: AbstractAsyncContextManager[Any]) -> Any:
        """Open `client` (an async context manager, as aiobotocore's clients are) and hold
        it under `key`; it is closed by `close_idle` or `close`."""
        stack = AsyncExitStack()
        opened = await stack.enter_async_context(client)
        self._held[key] = _Held(opened, stack, self._clock())
        self._start_reaper()
        return opened

    @contextlib.contextmanager
    def using(self, key: K) -> Iterator[None]:
        """A call in flight on `key`'s client: it is not closed for idleness meanwhile."""
        held = self._held.get(key)
        if held is not None:
            held.in_flight += 1
        try:
            yield
        finally:
            if held is not None:
                held.in_flight -= 1
                held.last_used = self._clock()

    @contextlib.asynccontextmanager
    async def lent(
        self, key: K, make: Callable[[], AbstractAsyncContextManager[Any]]
    ) -> AsyncIterator[Any]:
        """The open client of `key`, made with `make` if there is none (one at a time), in
        use while the block runs; left open for the next (closed when idle)."""
        client = self.get(key)
        if client is None:
            async with self._making.setdefault(key, asyncio.Lock()):
                client = self.get(key)
                if client is None:
                    client = await self.add(key, make())
        # In use from here (no await between): not closed for idleness meanwhile.
        with self.using(key):
            yield client

    def __contains__(self, key: object) -> bool:
        return key in self._held

    def __len__(self) -> int:
        return len(self._held)

    async def close_idle(self) -> int:
        """Close every client unused for `idle_seconds` with no call in flight; how many."""
        if self._idle_seconds <= 0:
            return 0
        now = self._clock()
        idle = [
            key
            for key, held in self._held.items()
            if held.in_flight == 0 and now - held.last_used >= self._idle_seconds
        ]
        # Out of the table before the first await: a call arriving meanwhile makes a new one.
        closing = [self._held.pop(key) for key in idle]
        for held in closing:
            await self._close(held)
        self.closed_idle += len(closing)
        if closing:
            log.debug("closed %d idle AWS clients; %d open", len(closing), len(self._held))
        return len(closing)

    async def close(self) -> None:
        """Close every client (at shutdown) and stop watching for idle ones."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        closing = list(self._held.values())
        self._held.clear()
        for held in closing:
            await self._close(held)

    def _start_reaper(self) -> None:
        if self._reaper is None and self._idle_seconds > 0:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        # Checked a few times per idle period: a client is closed between idle_seconds and
        # 1.5 x idle_seconds after its last use.
        every = max(self._idle_seconds / 2, 0.05)
        while True:
            await asyncio.sleep(every)
            await self.close_idle()

    @staticmethod
    async def _close(held: _Held) -> None:
        try:
            await held.stack.aclose()
        except Exception as exc:  # a failing close leaks a socket, nothing more
            log.warning("closing an AWS client failed: %s", type(exc).__name__)
