"""The servicer is given the call it serves (issue 25): each RPC's method takes the request
and the `Call` the pipeline admitted, and reads no contextvar for it."""

from __future__ import annotations

import inspect
import typing

from service.call import Call
from service.catalog import RPCS
from service.rpc import servicer as servicer_module
from service.rpc.servicer import RegistryConfigServicer


def test_every_rpc_takes_the_call_explicitly() -> None:
    for rpc in RPCS:
        method = getattr(RegistryConfigServicer, rpc)
        hints = typing.get_type_hints(method)
        assert list(inspect.signature(method).parameters) == ["self", "request", "call"], rpc
        assert hints["call"] is Call, rpc


def test_the_servicer_reads_no_current_call() -> None:
    assert not hasattr(servicer_module, "current_call")
