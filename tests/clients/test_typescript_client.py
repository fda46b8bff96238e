"""The TypeScript client (clients/typescript) against live gateways on moto, and its package.

The TypeScript test starts nothing itself: this module compiles it with the project's own
`tsc` (from `npm ci`, which `make test` runs first) into build/, starts three gateways
in-process (one open, one rate-limiting the tenant, one giving it a share of one repository
filter, each with the gRPC and the HTTP listener), and runs `node --test` on the compiled
file with their addresses and a key in the environment: the nine RPCs over gRPC and over
Connect (HTTP/1.1), retries, the read-modify-write helper. Node runs as a child process
through asyncio, so the gateways keep serving meanwhile. The package `npm publish` would
ship (dist/, tsconfig.build.json) is built and imported by its name through its `exports`
map. No `node` or no node_modules is a failure, not a skip: CI has Node.js and `make test`
runs `npm ci`.
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
from typing import Any

import pytest

from service.app.server import Gateway
from tests.conftest import GatewayFactory
from tests.support.helpers import ACCOUNT, KEY, OTHER_ACCOUNT, PARTNER_ACCOUNT, config_dict
from tests.support.moto_writes import behave_like_ecr

TS = Path(__file__).resolve().parents[2] / "clients" / "typescript"
RPCS = 9

# tsc (bounded at 300 s itself) runs in the first test's setup, and each node run at 120 s:
# past pytest's global 120 s, which is for the calls.
pytestmark = pytest.mark.timeout(600)


@dataclass(frozen=True)
class Ran:
    """What one node run left behind."""

    returncode: int
    stdout: str
    stderr: str


def tsc(node: str, config: str) -> None:
    compiler = TS / "node_modules" / "typescript" / "bin" / "tsc"
    assert compiler.exists(), (
        f"{compiler} missing: run `make ts-deps` (npm ci in clients/typescript)"
    )
    built = subprocess.run(
        [node, str(compiler), "-p", str(TS / config)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, after compiling the client, its example and its test into build/."""
    found = shutil.which("node")
    assert found, "node is not on PATH: the TypeScript client test needs Node.js 20+"
    tsc(found, "tsconfig.json")
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
        "GATEWAY_PARTNER_ACCOUNT": PARTNER_ACCOUNT,
    }


def with_http(raw: dict[str, Any]) -> dict[str, Any]:
    """A config with the HTTP listener (Connect over HTTP/1.1) on a free port too."""
    return {**raw, "http": {**raw.get("http", {}), "listen": "127.0.0.1:0"}}


async def test_the_typescript_live_test_passes(
    node: str, gateway_factory: GatewayFactory, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Several replication rules (the slice beside the rest), as ECR takes and moto 5 refuses.
    behave_like_ecr(monkeypatch)
    # config_dict's tenant `payments` may call all nine RPCs and owns the slice `payments/`.
    open_gateway = await gateway_factory(with_http(config_dict(aws)))
    limited = with_http(config_dict(aws))
    # One read and one write every 4 s: a second call soon after the first is refused (a
    # loaded machine has 4 s, not 1, to make it), with a RetryInfo of up to 4 s, which a
    # retry waits out within the 10 s deadline.
    limited["rate_limit"] = {"reads_per_second": 0.25, "writes_per_second": 0.25, "burst": 1}
    limited_gateway = await gateway_factory(limited)
    # The tenant's share of the registry is one repository filter: a write of two is refused
    # RESOURCE_EXHAUSTED without RetryInfo (REPLICATION_QUOTA_EXCEEDED), never retried.
    share = with_http(config_dict(aws))
    share["tenants"][0]["registries"][0]["max_filters"] = 1
    share_gateway = await gateway_factory(share)
    env = {
        **gateway_env(open_gateway),
        "GATEWAY_HTTP_TARGET": f"127.0.0.1:{open_gateway.http_port}",
        "GATEWAY_LIMITED_TARGET": f"127.0.0.1:{limited_gateway.port}",
        "GATEWAY_LIMITED_HTTP_TARGET": f"127.0.0.1:{limited_gateway.http_port}",
        "GATEWAY_SHARE_TARGET": f"127.0.0.1:{share_gateway.port}",
        "GATEWAY_SHARE_HTTP_TARGET": f"127.0.0.1:{share_gateway.http_port}",
    }
    ran = await run_node(node, "--test", "build/test/live.test.js", env=env)
    report = ran.stdout + ran.stderr
    assert ran.returncode == 0, report
    # Every test the file declares ran and passed (a file that declared none would "pass"):
    # one per RPC group and transport at least; its last test checks all nine were called
    # over both transports.
    declared = re.search(r"^# tests (\d+)$", ran.stdout, flags=re.M)
    assert declared, report
    assert int(declared.group(1)) >= 2 * RPCS
    assert re.search(rf"^# pass {declared.group(1)}$", ran.stdout, flags=re.M), report
    assert re.search(r"^# fail 0$", ran.stdout, flags=re.M), report
    assert "every RPC of the service was called over both transports" in ran.stdout


def test_the_package_builds_and_imports_by_its_name(node: str) -> None:
    """What `npm publish` ships: dist/ with .d.ts, an `exports` map, a version, not private."""
    manifest = json.loads((TS / "package.json").read_text())
    assert "private" not in manifest
    changelog = (TS.parents[1] / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(manifest['version'])} ", changelog, flags=re.M)
    assert manifest["exports"]["."]["types"] == "./dist/index.d.ts"
    tsc(node, "tsconfig.build.json")
    npm = shutil.which("npm")
    assert npm, "npm is not on PATH"
    packed = subprocess.run(
        [npm, "pack", "--dry-run", "--json", "--ignore-scripts"],
        cwd=TS,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    files = {f["path"] for f in json.loads(packed.stdout)[0]["files"]}
    assert {"dist/index.js", "dist/index.d.ts", "package.json"} <= files
    assert "dist/gen/ecr/registry/v1/registry_pb.d.ts" in files
    assert not any(f.startswith(("test/", "build/")) or "example" in f for f in files), files
    # The package imports itself by name: resolved through `exports`, as a dependent would.
    script = (
        "const m = await import('@registry-gateway/client');"
        "console.log(JSON.stringify({read: m.READ_RPCS, fns: typeof m.createRegistryClient,"
        " etag: typeof m.EtagMismatch}));"
    )
    imported = subprocess.run(
        [node, "--input-type=module", "-e", script],
        cwd=TS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    printed = json.loads(imported.stdout)
    assert sorted(printed["read"]) == [
        "DescribeRegistry",
        "GetConfigurationHistory",
        "GetPolicyStatements",
        "GetRegistryPolicy",
        "GetReplicationRules",
    ]
    assert printed["fns"] == "function" and printed["etag"] == "function"


async def test_the_example_makes_an_authorized_call(node: str, gateway: Gateway) -> None:
    ran = await run_node(node, "build/src/example.js", env=gateway_env(gateway))
    assert ran.returncode == 0, ran.stderr
    printed = json.loads(ran.stdout)
    assert printed["registryId"] == ACCOUNT
    assert printed["xCache"] == "miss"
    assert printed["replicationConfiguration"] == {"rules": []}


async def test_the_example_prints_the_decoded_error(node: str, gateway: Gateway) -> None:
    ran = await run_node(node, "build/src/example.js", env=gateway_env(gateway, "wrong-key"))
    assert ran.returncode == 1
    assert ran.stderr.startswith("Unauthenticated INVALID_CREDENTIALS:"), ran.stderr
    assert "wrong-key" not in ran.stderr
