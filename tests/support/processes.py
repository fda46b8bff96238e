"""Gateways in their own processes (the real CLI), for tests of what crosses processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

BIN = Path(sys.executable).parent


@asynccontextmanager
async def gateway_process(
    raw: dict[str, Any], path: Path, *extra_args: str
) -> AsyncIterator[list[int]]:
    """Run `registry-gateway serve --config` on `raw`; yield the ports it logs as serving."""
    path.write_text(yaml.safe_dump(raw))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_GATEWAY")},
        # moto accepts any credentials; these keep the process off real ones.
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "registry-gateway"),
        "serve",
        "--config",
        str(path),
        *extra_args,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        env=env,
    )
    assert proc.stderr is not None
    expected = (
        int(extra_args[extra_args.index("--workers") + 1]) if "--workers" in extra_args else 1
    )
    try:
        ports: list[int] = []
        while len(ports) < expected:
            line = (await asyncio.wait_for(proc.stderr.readline(), timeout=60)).decode()
            assert line, "the gateway process exited before serving"
            event = serving_event(line)
            if event is not None:
                ports.append(event[1])
        # Keep reading its log, so that a full pipe never blocks it.
        drain = asyncio.ensure_future(_drain(proc.stderr))
        yield ports
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=30)
    drain.cancel()


def serving_event(line: str) -> tuple[int, int] | None:
    """(pid, port) of a "serving" log line (JSON: the log of a process without a terminal)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not str(record.get("message", "")).startswith("serving"):
        return None
    return int(record["pid"]), int(str(record["listen"]).rsplit(":", 1)[1])


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass
