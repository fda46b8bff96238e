"""The write lock through Redis faults and a replica's death (issue 26, #2 and #3): no write
is blocked past the fault, a waiter answers UNAVAILABLE with RetryInfo (never a bare
DEADLINE_EXCEEDED), and a caller following the README after ETAG_MISMATCH ("read again,
retry with the etag") succeeds.

Real parts: a redis-server of the test's own paused with SIGSTOP (tests/support/pausable_redis.py),
`registry-gateway serve` processes killed with SIGKILL while a fault proxy in front of moto
holds their put (tests/support/aws_proxy.py), and the gateways' own Redis timeouts (1 s)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio
import yaml
from moto.ecr.models import ecr_backends

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory, wait_until
from tests.support.aws_proxy import CountingProxy, Fault
from tests.support.helpers import ACCOUNT, POLICY, config_dict, metadata, rich_error
from tests.support.pausable_redis import PausableRedis, pausable_redis
from tests.support.processes import BIN, serving_event

BEFORE = POLICY.replace("ReplicateFromPartner", "Before")
AFTER = POLICY.replace("ReplicateFromPartner", "After")
LATER = POLICY.replace("ReplicateFromPartner", "Later")
PUT_POLICY = frozenset({"ecr:PutRegistryPolicy"})
# A held put is let go by `proxy.released`, never by this (bounded for a failing test).
HELD_SECONDS = 60.0
# The lock's expiry before this fix: server.max_deadline_seconds (60) + 5. Every wait below
# for writes to resume is bounded well under it.
OLD_LOCK_EXPIRY_SECONDS = 65.0


@dataclass
class Answer:
    """What one call answered: its code, and for an error its reason, RetryInfo, metadata."""

    code: grpc.StatusCode
    reason: str | None = None
    retry: bool = False
    metadata: dict[str, str] | None = None
    response: Any = None


async def ask(invocation: Any) -> Answer:
    try:
        response = await invocation
    except grpc.aio.AioRpcError as exc:
        if "grpc-status-details-bin" not in dict(exc.trailing_metadata() or ()):
            # Not the gateway's answer: grpc's own deadline, a connection gone (no details).
            return Answer(exc.code())
        error = rich_error(exc)
        return Answer(
            error.code,
            error.info.reason,
            error.retry_info is not None,
            dict(error.info.metadata),
        )
    return Answer(grpc.StatusCode.OK, response=response)


def put(stub: Any, text: str, etag: str = "", timeout: float = 5.0) -> Any:
    return stub.PutRegistryPolicy(
        pb.PutRegistryPolicyRequest(policy_text=text, etag=etag),
        metadata=metadata(),
        timeout=timeout,
    )


def get(stub: Any, timeout: float = 5.0) -> Any:
    return stub.GetRegistryPolicy(
        pb.GetRegistryPolicyRequest(), metadata=metadata(), timeout=timeout
    )


def stub_on(port: int) -> tuple[grpc.aio.Channel, Any]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb_grpc.RegistryConfigServiceStub(channel)


def aws_policy() -> Any:
    text = ecr_backends[ACCOUNT]["us-east-1"].registry_policy
    return None if text is None else json.loads(text)


def is_waiter_answer(answer: Answer) -> bool:
    """What a writer that could not have the lock in time may answer: UNAVAILABLE with
    RetryInfo, nothing written (never DEADLINE_EXCEEDED)."""
    return (
        answer.code == grpc.StatusCode.UNAVAILABLE
        and answer.reason in ("WRITE_LOCK_BUSY", "WRITE_LOCK_UNAVAILABLE")
        and answer.retry
    )


def on_redis(endpoint: str, url: str, prefix: str) -> dict[str, Any]:
    raw = config_dict(endpoint)
    # Long TTLs: what a replica serves comes from its cache, never refreshed by expiry here.
    raw["cache"] = {
        "backend": "redis",
        "redis_url": url,
        "key_prefix": prefix,
        "ttl_seconds": 300,
        "negative_ttl_seconds": 300,
    }
    raw["drift"] = {"check_seconds": 0}
    return raw


@pytest.fixture
def paused_redis(tmp_path: Path) -> Iterator[PausableRedis]:
    with pausable_redis(tmp_path) as server:
        yield server


# --- #2: a Redis pause ----------------------------------------------------------------------


async def test_writes_resume_within_seconds_after_a_redis_pause(
    gateway_factory: GatewayFactory,
    aws: str,
    proxy: CountingProxy,
    paused_redis: PausableRedis,
) -> None:
    """Issue 26 #2: a write held its lock when Redis was paused; its release failed and was
    never retried, and the lock (65 s) blocked both replicas' writes for ~52 s after Redis
    was back, each failing DEADLINE_EXCEEDED without RetryInfo."""
    a = await gateway_factory(on_redis(proxy.url, paused_redis.url, "pause:"))
    b = await gateway_factory(on_redis(aws, paused_redis.url, "pause:"))
    (ch_a, stub_a), (ch_b, stub_b) = stub_on(a.port), stub_on(b.port)
    loop = asyncio.get_running_loop()
    async with ch_a, ch_b:
        assert (await ask(put(stub_b, BEFORE))).code == grpc.StatusCode.OK
        proxy.fault = Fault(PUT_POLICY, delay_seconds=HELD_SECONDS)
        writing = asyncio.ensure_future(ask(put(stub_a, AFTER, timeout=30)))
        try:
            await wait_until(
                lambda: proxy.count("ecr:PutRegistryPolicy") >= 1, what="A's put to reach AWS"
            )
            paused_redis.pause()  # A holds the lock, its put in flight
            paused_at = loop.time()
            proxy.fault = None
            proxy.released.set()  # AWS applies A's put and answers it
            # A cannot confirm it still holds its lock: its outcome is unknown, said so.
            answered = await writing
            assert (answered.code, answered.reason, answered.retry) == (
                grpc.StatusCode.UNAVAILABLE,
                "WRITE_LOCK_LOST",
                True,
            ), answered
            # Meanwhile reads are answered and writes refused with RetryInfo.
            assert (await ask(get(stub_b))).code == grpc.StatusCode.OK
            assert is_waiter_answer(await ask(put(stub_b, LATER))), "a write during the pause"
            await asyncio.sleep(max(0.0, paused_at + 3.0 - loop.time()))  # a 3 s pause
        finally:
            proxy.released.set()
            paused_redis.resume()
        resumed_at = loop.time()

        async def written(stub: Any) -> bool:
            answer = await ask(put(stub, LATER))
            # Until it goes through: a waiter's answer, never DEADLINE_EXCEEDED.
            assert answer.code == grpc.StatusCode.OK or is_waiter_answer(answer), answer
            return answer.code == grpc.StatusCode.OK

        # Well under the old lock's 65 s; with the fix, within a second or two.
        await wait_until(lambda: written(stub_b), timeout=15, what="B's write after the pause")
        b_after = loop.time() - resumed_at
        await wait_until(lambda: written(stub_a), timeout=15, what="A's write after the pause")
        a_after = loop.time() - resumed_at
    print(f"writes after SIGCONT: B OK after {b_after:.2f} s, A after {a_after:.2f} s")
    assert aws_policy() == json.loads(LATER)


async def test_calls_during_a_redis_pause_wait_for_redis_once(
    gateway_factory: GatewayFactory, aws: str, paused_redis: PausableRedis
) -> None:
    """Issue 26 #2: during a pause each call waited out several 1 s Redis timeouts in a row
    (reads up to 4 s). Now the first command that times out opens a circuit: every later
    call, read or write, is answered within less than one Redis timeout."""
    gateway = await gateway_factory(on_redis(aws, paused_redis.url, "pause-reads:"))
    channel, stub = stub_on(gateway.port)
    async with channel:
        assert (await ask(put(stub, BEFORE))).code == grpc.StatusCode.OK
        assert (await ask(get(stub))).code == grpc.StatusCode.OK  # an in-process copy
        paused_redis.pause()
        try:
            # The one call that finds Redis paused (its deadline allows a timeout or two).
            assert (await ask(get(stub, timeout=10))).code == grpc.StatusCode.OK
            # The next ones do not wait for Redis: each is answered within 0.9 s, less than
            # one Redis timeout (1 s), however many Redis commands it would make.
            for _ in range(3):
                answer = await ask(get(stub, timeout=0.9))
                assert answer.code == grpc.StatusCode.OK, answer
                described = await ask(
                    stub.DescribeRegistry(
                        pb.DescribeRegistryRequest(), metadata=metadata(), timeout=0.9
                    )
                )
                assert described.code == grpc.StatusCode.OK, described
                refused = await ask(put(stub, AFTER, timeout=0.9))
                assert (refused.code, refused.reason, refused.retry) == (
                    grpc.StatusCode.UNAVAILABLE,
                    "WRITE_LOCK_UNAVAILABLE",
                    True,
                ), refused
        finally:
            paused_redis.resume()

        async def written() -> bool:
            return (await ask(put(stub, AFTER))).code == grpc.StatusCode.OK

        await wait_until(written, timeout=15, what="a write once Redis answers")
    assert aws_policy() == json.loads(AFTER)


# --- #3: a replica killed mid-write -----------------------------------------------------------


@dataclass
class Replica:
    pid: int
    port: int


@asynccontextmanager
async def replica(raw: dict[str, Any], path: Path) -> AsyncIterator[Replica]:
    """`registry-gateway serve --config` in its own process (as tests/support/processes.py), with
    its pid, so that the test can SIGKILL it."""
    path.write_text(yaml.safe_dump(raw))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_GATEWAY")},
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "registry-gateway"),
        *("serve", "--config", str(path)),
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        env=env,
    )
    assert proc.stderr is not None
    stderr = proc.stderr
    drain: asyncio.Future[None] | None = None
    try:
        while True:
            line = (await asyncio.wait_for(stderr.readline(), timeout=60)).decode()
            assert line, "the gateway process exited before serving"
            event = serving_event(line)
            if event is not None:
                break

        async def drained() -> None:
            while await stderr.readline():
                pass

        drain = asyncio.ensure_future(drained())  # a full pipe must never block it
        yield Replica(proc.pid, event[1])
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=30)
        if drain is not None:
            drain.cancel()


async def test_a_replica_killed_mid_write(
    aws: str, proxy: CountingProxy, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """Issue 26 #3: A was SIGKILLed while its put was in flight; AWS applied it. B's writers
    waited on A's lock and got plain DEADLINE_EXCEEDED for the whole TTL; then B's fresh read
    inside the lock saw A's write, but B's cache kept the old state, so a caller following
    the README (read again, retry with the etag) got ETAG_MISMATCH 3 times out of 3."""
    async with (
        replica(on_redis(proxy.url, redis_url, redis_prefix), tmp_path / "a.yaml") as a,
        replica(on_redis(aws, redis_url, redis_prefix), tmp_path / "b.yaml") as b,
    ):
        (ch_a, stub_a), (ch_b, stub_b) = stub_on(a.port), stub_on(b.port)
        async with ch_a, ch_b:
            first = await ask(put(stub_b, BEFORE))
            assert first.code == grpc.StatusCode.OK
            etag_before = first.response.etag
            read = await ask(get(stub_b))  # B's cache holds BEFORE
            assert read.response.etag == etag_before
            proxy.fault = Fault(PUT_POLICY, delay_seconds=HELD_SECONDS)
            writing = asyncio.ensure_future(ask(put(stub_a, AFTER, etag_before, timeout=30)))
            try:
                await wait_until(
                    lambda: proxy.count("ecr:PutRegistryPolicy") >= 1,
                    what="A's put to reach AWS",
                )
                os.kill(a.pid, signal.SIGKILL)  # mid-write: its lock held, its put sent
                killed_at = time.monotonic()
                assert (await writing).code == grpc.StatusCode.UNAVAILABLE  # connection gone
            finally:
                proxy.fault = None
                proxy.released.set()  # AWS applies A's put now, after A died
            await wait_until(lambda: aws_policy() == json.loads(AFTER), what="A's put applied")

            # A writer on B, with the etag of its last read, while A's lock is still held:
            # UNAVAILABLE with RetryInfo before its deadline, nothing written.
            waited = await ask(put(stub_b, LATER, etag_before))
            assert is_waiter_answer(waited), waited
            assert waited.reason == "WRITE_LOCK_BUSY"

            async def judged() -> Answer | None:
                answer = await ask(put(stub_b, LATER, etag_before))
                assert is_waiter_answer(answer) or answer.code == grpc.StatusCode.ABORTED, answer
                return answer if answer.code == grpc.StatusCode.ABORTED else None

            # A's lock frees within its TTL (10 s by default); well under the old 65 s.
            refused = await wait_until(judged, timeout=30, what="A's lock to free")
            freed_after = time.monotonic() - killed_at
            assert refused.reason == "ETAG_MISMATCH"
            assert refused.metadata is not None
            current = refused.metadata["currentEtag"]
            assert current != etag_before
            # The README: read again, reapply, retry with the etag read.
            again = await ask(get(stub_b))
            assert again.code == grpc.StatusCode.OK
            assert again.response.etag == current, "the read after ETAG_MISMATCH is stale"
            assert json.loads(again.response.policy_text) == json.loads(AFTER)
            retried = await ask(put(stub_b, LATER, again.response.etag))
            assert retried.code == grpc.StatusCode.OK, retried
    print(f"a killed replica's lock freed {freed_after:.1f} s after SIGKILL")
    assert aws_policy() == json.loads(LATER)


async def test_a_refused_write_leaves_the_cache_holding_what_it_was_judged_against(
    gateway_factory: GatewayFactory, aws: str, redis_url: str, redis_prefix: str
) -> None:
    """Issue 26 #3, the cache alone: AWS changed around the replica's cache (a replica killed
    before its write-through, or the console); the write's fresh read inside the lock saw it
    and refused the caller's etag, but the next read answered the old etag until the TTL."""
    gateway = await gateway_factory(on_redis(aws, redis_url, redis_prefix))
    channel, stub = stub_on(gateway.port)
    async with channel:
        written = await ask(put(stub, BEFORE))
        etag_before = written.response.etag
        assert (await ask(get(stub))).response.etag == etag_before  # cached
        ecr_backends[ACCOUNT]["us-east-1"].registry_policy = AFTER  # around the gateway
        outcomes = []
        for _ in range(3):
            refused = await ask(put(stub, LATER, etag_before))
            assert refused.reason == "ETAG_MISMATCH", refused
            assert refused.metadata is not None
            again = await ask(get(stub))
            outcomes.append(again.response.etag == refused.metadata["currentEtag"])
            if outcomes[-1]:
                retried = await ask(put(stub, LATER, again.response.etag))
                assert retried.code == grpc.StatusCode.OK, retried
                break
            etag_before = again.response.etag
    assert outcomes == [True], outcomes
    assert aws_policy() == json.loads(LATER)


# --- wiping only the lock key while a write holds it -----------------------------------------


async def test_a_lock_key_wiped_while_a_write_holds_it(
    gateway_factory: GatewayFactory,
    aws: str,
    proxy: CountingProxy,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """DEL of the lock key alone while A's put is in flight: another replica may take the
    lock and write. A notices (its renewal finds the key gone) and reports its outcome as
    unknown (WRITE_LOCK_LOST, RetryInfo), records nothing; the key is forgotten, so every
    replica then reads what AWS holds."""
    raw_a = on_redis(proxy.url, redis_url, redis_prefix)
    raw_a["cache"]["lock_ttl_seconds"] = 3  # renewed every second: noticed within one
    a = await gateway_factory(raw_a)
    b = await gateway_factory(on_redis(aws, redis_url, redis_prefix))
    (ch_a, stub_a), (ch_b, stub_b) = stub_on(a.port), stub_on(b.port)
    client = redis.asyncio.Redis.from_url(redis_url)
    key = f"{redis_prefix}lock:{ACCOUNT}:us-east-1"
    try:
        async with ch_a, ch_b:
            proxy.fault = Fault(PUT_POLICY, delay_seconds=HELD_SECONDS)
            writing = asyncio.ensure_future(ask(put(stub_a, AFTER, timeout=30)))
            try:
                await wait_until(
                    lambda: proxy.count("ecr:PutRegistryPolicy") >= 1,
                    what="A's put to reach AWS",
                )
                assert await client.delete(key) == 1
                # B takes the lock at once and writes (straight to AWS, not held).
                assert (await ask(put(stub_b, BEFORE))).code == grpc.StatusCode.OK
                await asyncio.sleep(1.5)  # past A's renewal: it has noticed
                assert not await client.exists(key)  # and did not bring the key back
            finally:
                proxy.fault = None
                proxy.released.set()  # A's put is applied after B's
            answered = await writing
            assert (answered.code, answered.reason, answered.retry) == (
                grpc.StatusCode.UNAVAILABLE,
                "WRITE_LOCK_LOST",
                True,
            ), answered
            assert aws_policy() == json.loads(AFTER)  # A's put stands in AWS
            for stub in (stub_a, stub_b):  # not B's write-through: the key was forgotten
                read = await ask(get(stub))
                assert json.loads(read.response.policy_text) == json.loads(AFTER)
    finally:
        await client.aclose()
