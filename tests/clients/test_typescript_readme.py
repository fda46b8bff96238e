"""The TypeScript snippets of clients/typescript/README.md and of docs/clients.md's "TypeScript
client" section compile and run as written, in a project that installed the packed package.

The package is consumed as its README says: `npm pack` (here with `--ignore-scripts`, after
compiling dist/ with the project's own tsc), the tarball unpacked into a fresh project's
node_modules as `npm install <tarball>` would. Its three dependencies are not fetched (no
registry here): the fresh project links the ones `npm ci` installed in clients/typescript,
at the versions the lock pins. Each ```ts block is one module of that project, compiled by
`tsc` with `strict` and `exactOptionalPropertyTypes` (so `apiKey: process.env.X` must be
accepted, issue 28), then run by node against a live gateway whose tenant is the one
`make serve` gives (its slice: `prod/`, Sids `Demo...`), with `GATEWAY_TARGET` and
`GATEWAY_API_KEY` set; what each prints is checked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.app.embedded import demo_config
from tests.clients.test_typescript_client import TS, run_node, tsc
from tests.conftest import GatewayFactory
from tests.support.helpers import ACCOUNT, KEY, OTHER_ACCOUNT, config_dict
from tests.support.moto_writes import behave_like_ecr
from tests.support.readme_support import TYPESCRIPT_SECTION

ROOT = TS.parents[1]
PACKAGE_README = TS / "README.md"
MAIN_README = ROOT / TYPESCRIPT_SECTION[0]  # the clients guide, docs/clients.md

# tsc and npm pack run in the module's setup (bounded at 300 s and 120 s), node at 120 s.
pytestmark = pytest.mark.timeout(600)


def ts_blocks(text: str) -> list[str]:
    return re.findall(r"```ts\n(.*?)```", text, flags=re.S)


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


PACKAGE_BLOCKS = ts_blocks(PACKAGE_README.read_text())
MAIN_BLOCKS = ts_blocks(section(MAIN_README.read_text(), TYPESCRIPT_SECTION[1][3:]))


@dataclass(frozen=True)
class Consumer:
    """A fresh project that installed the packed package, and its compiled snippets."""

    root: Path
    node: str


# Stricter than the package's own defaults: what a consumer may turn on.
CONSUMER_TSCONFIG = {
    "compilerOptions": {
        "target": "ES2022",
        "module": "NodeNext",
        "moduleResolution": "NodeNext",
        "strict": True,
        "exactOptionalPropertyTypes": True,
        "noUncheckedIndexedAccess": True,
        "types": ["node"],
        "outDir": "out",
    },
    "include": ["*.ts"],
}


@pytest.fixture(scope="module")
def consumer(tmp_path_factory: pytest.TempPathFactory) -> Consumer:
    node = shutil.which("node")
    npm = shutil.which("npm")
    assert node and npm, "node and npm must be on PATH"
    tsc(node, "tsconfig.build.json")  # dist/, what the tarball ships
    root = tmp_path_factory.mktemp("ts-consumer")
    packed = subprocess.run(
        [npm, "pack", "--ignore-scripts", "--json", "--pack-destination", str(root)],
        cwd=TS,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    tarball = root / json.loads(packed.stdout)[0]["filename"]
    modules = root / "node_modules"
    installed = modules / "@registry-gateway" / "client"
    installed.mkdir(parents=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(root / "unpacked", filter="data")
    (root / "unpacked" / "package").rename(installed)
    for scope in ("@bufbuild", "@connectrpc", "@types"):
        (modules / scope).symlink_to(TS / "node_modules" / scope, target_is_directory=True)
    (root / "package.json").write_text(
        json.dumps({"name": "consumer", "private": True, "type": "module"})
    )
    (root / "tsconfig.json").write_text(json.dumps(CONSUMER_TSCONFIG))
    for i, block in enumerate(PACKAGE_BLOCKS):
        (root / f"package_{i}.ts").write_text(block)
    for i, block in enumerate(MAIN_BLOCKS):
        (root / f"main_{i}.ts").write_text(block)
    compiler = TS / "node_modules" / "typescript" / "bin" / "tsc"
    built = subprocess.run(
        [node, str(compiler), "-p", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return Consumer(root, node)


def demo_like(aws: str) -> dict[str, Any]:
    """The test config with the tenant `make serve` gives: everything on its registry, the
    slice `prod/` and Sids `Demo...` (service/app/embedded.py), under the test key."""
    raw = config_dict(aws)
    (registry,) = demo_config(aws, KEY, environ={}).tenants[0].registries
    tenant = raw["tenants"][0]
    (mine,) = tenant["registries"]
    mine["owned_repository_prefixes"] = list(registry.owned_repository_prefixes)
    mine["owned_statement_sid_prefix"] = registry.owned_statement_sid_prefix
    assert mine["owned_repository_prefixes"] == ["prod/"]
    assert mine["owned_statement_sid_prefix"] == "Demo"
    return {**raw, "tenants": [tenant]}


async def run_snippet(consumer: Consumer, name: str, port: int) -> list[str]:
    ran = await run_node(
        consumer.node,
        str(consumer.root / "out" / f"{name}.js"),
        env={"GATEWAY_TARGET": f"127.0.0.1:{port}", "GATEWAY_API_KEY": KEY},
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return ran.stdout.splitlines()


def test_the_readmes_hold_the_snippets_this_module_runs() -> None:
    assert len(PACKAGE_BLOCKS) == 4
    assert len(MAIN_BLOCKS) == 1
    for block in PACKAGE_BLOCKS + MAIN_BLOCKS:
        assert 'from "@registry-gateway/client"' in block
        assert "apiKey: process.env.GATEWAY_API_KEY" in block


async def test_the_first_call(
    consumer: Consumer, gateway_factory: GatewayFactory, aws: str
) -> None:
    gateway = await gateway_factory(demo_like(aws))
    (line,) = await run_snippet(consumer, "package_0", gateway.port)
    assert re.fullmatch(rf"registry {ACCOUNT} etag \S+ x-cache miss", line), line


async def test_the_errors(consumer: Consumer, gateway_factory: GatewayFactory, aws: str) -> None:
    gateway = await gateway_factory(demo_like(aws))
    denied, stale = await run_snippet(consumer, "package_1", gateway.port)
    assert re.fullmatch(rf"denied TARGET_NOT_ALLOWED registry {OTHER_ACCOUNT} request \S+", denied)
    assert stale == "stale: the current etag is absent"


async def test_retries_and_call_options(
    consumer: Consumer, gateway_factory: GatewayFactory, aws: str
) -> None:
    gateway = await gateway_factory(demo_like(aws))
    (line,) = await run_snippet(consumer, "package_2", gateway.port)
    assert re.fullmatch(r"rules 0 of \d+ x-cache miss request readme-42 attempts 1", line), line


async def test_the_helpers(
    consumer: Consumer,
    gateway_factory: GatewayFactory,
    aws: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    behave_like_ecr(monkeypatch)
    gateway = await gateway_factory(demo_like(aws))
    for _ in range(2):  # as written, again and again: the second run finds its rule there
        rules, statements, versions, restored = await run_snippet(
            consumer, "package_3", gateway.port
        )
        assert re.fullmatch(r"rules 1 etag \S+", rules), rules
        assert statements == "statements 1"
        assert re.fullmatch(r"versions \d+, newest by GATEWAY", versions), versions
        assert restored == "restored ecr.registry.v1.PutReplicationConfigurationResponse"


async def test_the_main_readme_snippet(
    consumer: Consumer, gateway_factory: GatewayFactory, aws: str
) -> None:
    gateway = await gateway_factory(demo_like(aws))
    registry, denied = await run_snippet(consumer, "main_0", gateway.port)
    assert re.fullmatch(rf"{ACCOUNT} \S+ miss 1", registry), registry
    assert re.fullmatch(rf"TARGET_NOT_ALLOWED {OTHER_ACCOUNT} \S+", denied), denied
