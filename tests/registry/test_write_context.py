"""A write is given its caller as data (`WriteContext`): who writes, for the history; the
caller's deadline, past which a write already sent still reads back (`outlive`); and a
failure after the fresh read carries the etag it read as a field of its error. No call is
in flight in these tests: nothing below the servicer may need one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from service.auth.content import ContentRules
from service.ecr import etags
from service.errors import EtagMismatch, WriteOverwritten
from service.gen.v1 import registry_pb2 as pb
from service.registry.rpcs.slice_operations import SliceOperations
from service.registry.rpcs.validation import RequestValidator
from service.registry.writes.context import WriteContext
from tests.registry.conftest import target
from tests.registry.test_drift import REPLICATION, Overwriting, described, ops, rule

T = TypeVar("T")
AUTHOR = WriteContext(identity="api_key:3f2a", rpc="PutReplicationConfiguration", request_id="r-1")


async def test_a_write_is_recorded_with_the_author_its_context_names() -> None:
    domain = ops(Overwriting())
    configuration = pb.ReplicationConfiguration(rules=[rule("payments/")])
    await domain.ops.put_replication_configuration(
        target(), configuration, "", False, context=AUTHOR
    )
    head = await domain.history.head(REPLICATION)
    assert head is not None
    assert (head.origin, head.tenant, head.identity, head.rpc) == (
        "gateway",
        "payments",
        "api_key:3f2a",
        "PutReplicationConfiguration",
    )


async def test_a_slice_write_passes_its_context_down_to_the_record() -> None:
    domain = ops(Overwriting())
    slices = SliceOperations(domain.ops, ContentRules(), RequestValidator())
    context = WriteContext(identity="jwt:ci", rpc="PutReplicationRules", request_id="r-2")
    await slices.put_rules(target(), [rule("payments/")], "", False, context=context)
    head = await domain.history.head(REPLICATION)
    assert head is not None and (head.identity, head.rpc) == ("jwt:ci", "PutReplicationRules")


async def test_an_overwritten_write_is_reported_with_its_request_id() -> None:
    domain = ops(Overwriting())
    domain.ecr.replication_after = pb.ReplicationConfiguration(rules=[rule("orders/")])
    configuration = pb.ReplicationConfiguration(rules=[rule("payments/")])
    with pytest.raises(WriteOverwritten):
        await domain.ops.put_replication_configuration(
            target(), configuration, "", False, context=AUTHOR
        )
    [(event, line)] = domain.seen.events
    assert event == "overwritten"
    assert (line["identity"], line["rpc"], line["request_id"]) == (
        "api_key:3f2a",
        "PutReplicationConfiguration",
        "r-1",
    )


async def test_past_its_deadline_a_sent_write_reads_back_through_outlive() -> None:
    domain = ops(Overwriting())
    outlived: list[str] = []

    def outlive(read: Callable[[], Coroutine[Any, Any, T]]) -> Awaitable[T]:
        outlived.append("read-back")
        return read()

    # The caller's deadline has passed already: the write, once sent, is still read back
    # (outside that deadline), written through and recorded.
    passed = asyncio.get_running_loop().time() - 1
    context = WriteContext(identity="api_key:3f2a", deadline=passed, outlive=outlive)
    configuration = pb.ReplicationConfiguration(rules=[rule("payments/")])
    written = await domain.ops.put_replication_configuration(
        target(), configuration, "", False, context=context
    )
    assert outlived == ["read-back"]
    assert written.etag_after == described(rule("payments/")).etag
    head = await domain.history.head(REPLICATION)
    assert head is not None and head.etag == written.etag_after


async def test_within_its_deadline_a_write_reads_back_as_it_is() -> None:
    domain = ops(Overwriting())
    outlived: list[str] = []

    def outlive(read: Callable[[], Coroutine[Any, Any, T]]) -> Awaitable[T]:
        outlived.append("read-back")
        return read()

    later = asyncio.get_running_loop().time() + 60
    context = WriteContext(deadline=later, outlive=outlive)
    configuration = pb.ReplicationConfiguration(rules=[rule("payments/")])
    await domain.ops.put_replication_configuration(
        target(), configuration, "", False, context=context
    )
    assert outlived == []
    assert context.time_left() > 0 and WriteContext().time_left() == float("inf")


async def test_a_refusal_after_the_fresh_read_carries_its_etag_as_a_field() -> None:
    domain = ops(Overwriting())
    with pytest.raises(EtagMismatch) as caught:
        await domain.ops.put_registry_policy(target(), "{}", "not-the-etag", False)
    assert caught.value.etag_read_before == etags.ABSENT
