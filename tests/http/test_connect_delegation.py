"""The Connect service is built from the contract's descriptor (service/catalog.py): every
RPC of the descriptor is delegated to the servicer's method of the same name, and connectrpc
finds each under the name its generated code looks up."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from connectrpc.request import RequestContext

from service.catalog import RPCS, SERVICE
from service.gen.v1 import registry_connect
from service.http import transport
from service.http.transport import ConnectService, python_name
from service.rpc.servicer import RegistryConfigServicer


class _Recording:
    """A servicer that answers each RPC with its own name, whatever asked."""

    def __init__(self) -> None:
        self.called: list[tuple[str, object, object]] = []

    def __getattr__(self, rpc: str) -> Any:
        async def method(request: object, context: object) -> str:
            self.called.append((rpc, request, context))
            return f"answer of {rpc}"

        return method


def test_every_rpc_of_the_descriptor_is_delegated_to_the_servicer() -> None:
    servicer = _Recording()
    service = ConnectService(cast(RegistryConfigServicer, servicer))
    call = object()  # the call on_start admitted
    # Not the caller's deadline: the call's own deadline is not armed here.
    pending = SimpleNamespace(served=False, own_timer=False, outcome=SimpleNamespace(call=call))
    ctx = SimpleNamespace(method=SimpleNamespace(idempotency_level=SimpleNamespace(name="")))

    async def call_each() -> list[object]:
        transport._PENDING.set(cast(Any, pending))
        answers = []
        for rpc in RPCS:
            method = getattr(service, python_name(rpc))
            answers.append(await method(f"request of {rpc}", cast(RequestContext[Any, Any], ctx)))
        return answers

    answers = asyncio.run(call_each())
    assert len(RPCS) == len(SERVICE.methods) >= 10
    assert answers == [f"answer of {rpc}" for rpc in RPCS]
    # The servicer's method of the same RPC, given the request and the call admitted.
    assert servicer.called == [(rpc, f"request of {rpc}", call) for rpc in RPCS]
    assert pending.served


def test_connectrpc_finds_every_rpc_under_the_generated_name() -> None:
    service = ConnectService(cast(RegistryConfigServicer, _Recording()))
    # Each name connectrpc's generated code serves is one of ours, not the Protocol's
    # default (which answers UNIMPLEMENTED).
    generated = {
        name
        for name in vars(registry_connect.RegistryConfigService)
        if not name.startswith("_") and callable(getattr(service, name))
    }
    assert generated == {python_name(rpc) for rpc in RPCS}
    for name in generated:
        assert name in vars(service), name
