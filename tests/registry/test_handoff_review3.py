"""A third hostile review of the hand-over of slice writes between replicas (f4fdd4f: the
`_commit` loop, `_await_taken` / `_answer_taken` and `_awaiting`, `shared_now`). Reuses the
first review's in-memory lists and replicas (tests/registry/test_handoff_review.py). Each
test states an invariant that code broke (its docstring says how), held since the fix."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from service.app.compose import _shared_now
from service.aws.memory import MemoryEcr
from service.errors import GatewayError
from service.registry.writes.handing import HandedWrites
from service.state.cache import CacheKey
from service.state.clock import RedisClock
from tests.registry.conftest import ACCOUNT, REGION
from tests.registry.test_handoff_review import (
    WHO,
    ElsewhereLocks,
    Lists,
    ctx,
    handed,
    replica,
    rules,
    stored,
    task,
)

KEY = CacheKey(ACCOUNT, REGION, "registry")


def handed_of(rep: Any) -> HandedWrites:
    """The replica's hand-over state (service/registry/writes/handing.py)."""
    handed = rep.ops._handed
    assert isinstance(handed, HandedWrites)
    return handed


async def _until(check: Any, within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + within
    while not check():
        if loop.time() >= give_up_at:
            raise AssertionError("never happened")
        await asyncio.sleep(0.01)


# --- 1. a request put back in the list is awaited as if taken: tenant blocked, lock free -----


async def test_a_request_put_back_untaken_does_not_block_its_tenant_while_the_lock_is_free() -> (
    None
):
    """handoff.py / operations.py `_adopt`: the holder LPOPs the requests and LPUSHes back
    those it does not apply now (the tenant already in its batch, other credentials, Redis
    not answering `last_applied`). A's `_hand_one` withdraws (LREM) in that window: False,
    so the write counts as taken and `_await_taken` waits for an answer that never comes,
    until its caller's deadline, never looking at the list again, though the request sits
    there untaken and, past its take-by second, nobody will ever apply it. Meanwhile its
    tenant is excluded (`_awaiting`): its next write on A waits in the leader's sleep loop
    (`takeable` False: the lock is not even tried) and is refused WRITE_LOCK_BUSY though
    nobody holds the lock; the first is answered WRITE_OUTCOME_UNKNOWN though nothing of it
    was, or ever will be, written."""
    lists, locks, ecr = Lists(), ElsewhereLocks(elsewhere=True), MemoryEcr()
    a = replica(ecr, lists, locks, "a")
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = task(a.put(WHO["team01"], rules("team01/v1"), ctx("team01", within=4.0)))
    await handed(lists, 1)
    raw = lists.requests[KEY].pop(0)  # B's LPOP (its `_adopt`) ...
    await _until(lambda: handed_of(a)._awaiting.get(KEY, Counter())["team01"] > 0)  # A: "taken"
    lists.requests[KEY].insert(0, raw)  # ... and B's LPUSH (`_put_back`): not applied
    locks.elsewhere = False  # B's batch is over: the lock is free
    second = task(a.put(WHO["team01"], rules("team01/v2"), ctx("team01", within=2.0)))
    answers: tuple[Any, Any] = await asyncio.gather(first, second, return_exceptions=True)
    took = round(loop.time() - started, 2)
    reasons = [a.reason if isinstance(a, GatewayError) else type(a).__name__ for a in answers]
    # The later write of the tenant is applied (the lock is free), and the first is not
    # left to its deadline for an answer nobody will send.
    assert not isinstance(answers[1], BaseException), (reasons, took)
    assert stored(ecr, "team01") == {"team01/v2"}, (reasons, took)


# --- 2. a paused Redis: the TIME of every slice write ----------------------------------------


class PausedRedis:
    """A Redis that accepts commands and answers none (paused, or a network partition)."""

    def __init__(self) -> None:
        self.times = 0

    async def time(self) -> tuple[int, int]:
        self.times += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_paused_redis_does_not_add_its_time_bound_to_every_slice_write() -> None:
    """compose.py `_shared_now`: a slice write awaits a Redis TIME (RedisClock.offset, bound
    0.25 s) before it queues whenever the offset is stale (HEAD: always; the uncommitted
    change: read more than 1 s ago). The writes that find it stale together are not joined
    to one reading (each sends its own TIME and waits the bound), and with Redis paused every
    write more than a second after the last reading waits it again: a paused (or slow) Redis
    adds its bound to every write of a burst, and to each write at a low rate. A write's
    stamp needs no fresh TIME on its path: the last offset, refreshed in the background
    (one reading at a time), tells queue order as well."""
    lists, locks, ecr = Lists(), ElsewhereLocks(elsewhere=False), MemoryEcr()
    paused = PausedRedis()
    clock = RedisClock(paused)  # type: ignore[arg-type]
    a = replica(ecr, lists, locks, "a", shared_now=_shared_now(clock))
    loop = asyncio.get_running_loop()

    async def timed(name: str) -> float:
        begun = loop.time()
        await a.put(WHO[name], rules(f"{name}/api"), ctx(name, within=5.0))
        return round(loop.time() - begun, 3)

    burst = await asyncio.gather(*(timed(f"team0{i}") for i in range(5)))
    await asyncio.sleep(1.3)
    later = await timed("team05")
    slow = [t for t in [*burst, later] if t >= 0.2]
    assert len(slow) <= 1, (
        f"slice writes each waiting on TIME: {burst}, {later}; TIMEs sent: {paused.times}"
    )


async def test_at_shutdown_a_write_another_replica_took_is_answered_at_once() -> None:
    """A write handed over and taken by another replica waits for that replica's answer,
    through Redis, until its caller's deadline. At shutdown Redis closes after the calls are
    reported: `stop_handing` answers it WRITE_OUTCOME_UNKNOWN at once (its call ends and is
    audited) rather than at its deadline, after Redis has gone."""
    lists, locks, ecr = Lists(), ElsewhereLocks(elsewhere=True), MemoryEcr()
    a = replica(ecr, lists, locks, "a")
    loop = asyncio.get_running_loop()
    write = asyncio.ensure_future(
        a.put(WHO["team01"], rules("team01/api"), ctx("team01", within=30.0))
    )
    await handed(lists, 1)
    lists.requests[CacheKey(ACCOUNT, REGION, "registry")].clear()  # taken, never answered
    for _ in range(300):  # its replica finds it taken (its untaken second) and waits
        if handed_of(a)._detached:
            break
        await asyncio.sleep(0.01)
    assert handed_of(a)._detached
    began = loop.time()
    await a.ops.stop_handing()
    answer = await asyncio.gather(write, return_exceptions=True)
    assert loop.time() - began < 1.0
    assert isinstance(answer[0], GatewayError) and answer[0].reason == "WRITE_OUTCOME_UNKNOWN"
    assert stored(ecr, "team01") == set()
