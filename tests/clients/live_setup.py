"""What the TypeScript and Go client tests set up around a live gateway (issue 28): a TCP
peer that never answers, a port where nothing listens, and a second tenant that sees only
its slice of the registry (and of its history)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from service.auth.api_keys import hash_key
from tests.support.helpers import ACCOUNT

SLICE_KEY = "test-key-team"


@asynccontextmanager
async def silent_peer() -> AsyncIterator[str]:
    """host:port of a TCP peer that accepts connections, reads, and never answers: only
    the caller's own deadline or cancellation can end a call to it."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()


def closed_port() -> str:
    """host:port on loopback where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def with_slice_tenant(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` plus tenant `team` (key SLICE_KEY): its slice of ACCOUNT (`team/`, Sids
    `Team...`) through the slice RPCs, and the history of it (a slice view)."""
    team = {
        "name": "team",
        "api_keys": [hash_key(SLICE_KEY)],
        "registries": [
            {
                "registry_id": ACCOUNT,
                "regions": ["us-east-1"],
                "operations": [
                    "GetReplicationRules",
                    "PutReplicationRules",
                    "GetPolicyStatements",
                    "PutPolicyStatements",
                    "GetConfigurationHistory",
                ],
                "owned_repository_prefixes": ["team/"],
                "owned_statement_sid_prefix": "Team",
                "replication_destinations": [{"registry_id": ACCOUNT, "regions": ["eu-west-1"]}],
            }
        ],
    }
    return {**raw, "tenants": [*raw["tenants"], team]}
