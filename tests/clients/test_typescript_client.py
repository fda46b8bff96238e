"""The TypeScript client (clients/typescript) against a live gateway on moto.

The TypeScript test starts nothing itself: this module compiles it with the project's own
`tsc` (from `npm ci`, which `make test` runs first), starts a gateway in-process, and runs
`node --test` on the compiled file with the gateway's address and a key in the environment.
Node runs as a child process through asyncio, so the gateway keeps serving meanwhile. No
`node` or no node_modules is a failure, not a skip: CI has Node.js and `make test` runs
`npm ci`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.app.server import Gateway
from tests.helpers import ACCOUNT, KEY, OTHER_ACCOUNT

TS = Path(__file__).resolve().parents[2] / "clients" / "typescript"
LIVE_TEST = TS / "test" / "live.test.ts"

# tsc (bounded at 300 s itself) runs in the first test's setup, and each node run at 120 s:
# past pytest's global 120 s, which is for the calls.
pytestmark = pytest.mark.timeout(600)


@dataclass(frozen=True)
class Ran:
    """What one node run left behind."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, after compiling the client, its example and its test with tsc."""
    found = shutil.which("node")
    assert found, "node is not on PATH: the TypeScript client test needs Node.js 20+"
    tsc = TS / "node_modules" / "typescript" / "bin" / "tsc"
    assert tsc.exists(), f"{tsc} missing: run `make ts-deps` (npm ci in clients/typescript)"
    built = subprocess.run(
        [found, str(tsc), "-p", str(TS / "tsconfig.json")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return found


async def run_node(node: str, *args: str, env: dict[str, str]) -> Ran:
    """Run node in clients/typescript without blocking the loop the gateway serves from."""
    process = await asyncio.create_subprocess_exec(
        node,
        *args,
        cwd=TS,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


def gateway_env(gateway: Gateway, key: str = KEY) -> dict[str, str]:
    return {
        "GATEWAY_TARGET": f"127.0.0.1:{gateway.port}",
        "GATEWAY_API_KEY": key,
        "GATEWAY_REGISTRY_ID": ACCOUNT,
        "GATEWAY_FORBIDDEN_REGISTRY": OTHER_ACCOUNT,
    }


async def test_the_typescript_live_test_passes(node: str, gateway: Gateway) -> None:
    ran = await run_node(node, "--test", "dist/test/live.test.js", env=gateway_env(gateway))
    report = ran.stdout + ran.stderr
    assert ran.returncode == 0, report
    # Every test the file declares ran and passed (a file that declared none would "pass").
    declared = len(re.findall(r"^test\(", LIVE_TEST.read_text(), flags=re.M))
    assert declared >= 6
    assert re.search(rf"^# pass {declared}$", ran.stdout, flags=re.M), report
    assert re.search(r"^# fail 0$", ran.stdout, flags=re.M), report


async def test_the_example_makes_an_authorized_call(node: str, gateway: Gateway) -> None:
    ran = await run_node(node, "dist/src/example.js", env=gateway_env(gateway))
    assert ran.returncode == 0, ran.stderr
    printed = json.loads(ran.stdout)
    assert printed["registryId"] == ACCOUNT
    assert printed["xCache"] == "miss"
    assert printed["replicationConfiguration"] == {"rules": []}


async def test_the_example_prints_the_decoded_error(node: str, gateway: Gateway) -> None:
    ran = await run_node(node, "dist/src/example.js", env=gateway_env(gateway, "wrong-key"))
    assert ran.returncode == 1
    assert ran.stderr.startswith("Unauthenticated INVALID_CREDENTIALS:"), ran.stderr
    assert "wrong-key" not in ran.stderr
