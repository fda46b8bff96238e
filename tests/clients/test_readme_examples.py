"""The Python client example of the clients guide (docs/clients.md) runs as written against a
live gateway.

A new consumer should be able to copy it and make an authorized call; this runs the
`python` block of the "## Python client" section in a fresh interpreter (a child process,
so the in-process gateway keeps serving) with the gateway's address and a key in its
environment, and checks what it prints.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from moto.ecr.models import ecr_backends

from service.app.server import Gateway
from tests.support.helpers import ACCOUNT, KEY
from tests.support.readme_support import PYTHON_SECTION, blocks, read, section


def python_example() -> str:
    document, heading = PYTHON_SECTION
    found = blocks(section(read(document), heading), "python")
    assert len(found) == 1, "the section should hold one python example"
    return found[0]


async def test_the_readme_python_example(gateway: Gateway, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(python_example())
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env={
            **os.environ,
            "GATEWAY_TARGET": f"127.0.0.1:{gateway.port}",
            "GATEWAY_API_KEY": KEY,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].startswith(f"registry {ACCOUNT} etag ")
    assert lines[1] == "rules 1"
    assert re.fullmatch(r"denied TARGET_NOT_ALLOWED request \S+", lines[2]), lines
    stored = ecr_backends[ACCOUNT]["us-east-1"].replication_config
    assert stored["rules"][0]["destinations"] == [{"region": "eu-west-1", "registryId": ACCOUNT}]
