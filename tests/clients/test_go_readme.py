"""The Go client's README snippets compile at the declared floor and run as written; its
module path can be fetched and set; its versions agree (issue 28).

Each ```go block of clients/go/README.md and of docs/clients.md's "Go" section is a whole
program: here each is a package of a fresh module that requires the client the way the
README's `require` / `replace` fragment says, built offline against Debian's Go sources
(grpc-go 1.33.3, the floor go.mod declares: tests/clients/test_go_client.py says how), and
run against a live gateway whose tenant is the one `make serve` gives, with GATEWAY_TARGET
and GATEWAY_API_KEY set; what each prints is checked.
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

from tests.clients.test_go_client import (
    DEBIAN_GOCODE,
    GO_CLIENT,
    MODULE,
    build_offline,
    go,
    go_mod,
    go_run,
)
from tests.clients.test_typescript_readme import demo_like
from tests.conftest import GatewayFactory
from tests.support.helpers import ACCOUNT, KEY, OTHER_ACCOUNT
from tests.support.moto_writes import behave_like_ecr
from tests.support.readme_support import GO_SECTION, read, section

ROOT = GO_CLIENT.parents[1]
CLIENT_README = (GO_CLIENT / "README.md").read_text()
MAIN_README = read(GO_SECTION[0])  # the clients guide, docs/clients.md
OWN_PATH = "git.corp.example/platform/registry-gateway/clients/go"

# The Go builds (bounded at 600 s each) run in the module's setup.
pytestmark = pytest.mark.timeout(1300)


def go_section(text: str) -> str:
    return section(text, GO_SECTION[1])


def go_blocks(text: str) -> list[str]:
    return re.findall(r"```go\n(.*?)```", text, flags=re.S)


SNIPPETS = {
    **{f"client{i}": block for i, block in enumerate(go_blocks(CLIENT_README))},
    **{f"main{i}": block for i, block in enumerate(go_blocks(go_section(MAIN_README)))},
}


def require_fragment() -> list[str]:
    """The README's `require` / `replace` lines for a dependent go.mod."""
    (fragment,) = re.findall(r"```text\n\s*(require .*?)```", CLIENT_README, flags=re.S)
    return [line.strip() for line in fragment.strip().splitlines()]


@dataclass(frozen=True)
class Snippets:
    binaries: dict[str, Path]


@pytest.fixture(scope="module")
def snippets(tmp_path_factory: pytest.TempPathFactory) -> Snippets:
    assert (DEBIAN_GOCODE / "google.golang.org" / "grpc" / "go.mod").is_file()
    work = tmp_path_factory.mktemp("go-readme")
    client = work / "clients" / "go"
    shutil.copytree(GO_CLIENT, client)
    consumer = work / "readme"
    consumer.mkdir()
    require, replace = require_fragment()
    # The README's lines, with its `replace` pointing at this copy of the checkout.
    replace = re.sub(r"=> \S+$", "=> ../clients/go", replace)
    (consumer / "go.mod").write_text(
        "module readme.example/snippets\n\ngo 1.19\n\n"
        f"{require}\nrequire google.golang.org/grpc v1.33.3\n{replace}\n"
    )
    for name, source in SNIPPETS.items():
        (consumer / name).mkdir()
        (consumer / name / "main.go").write_text(source)
    build_offline(consumer, work / "stand-ins")
    binaries = {}
    for name in SNIPPETS:
        built = go_run(["build", "-o", str(work / "bin" / name), f"./{name}"], consumer, work)
        assert built.returncode == 0, f"{name}: {built.stderr}"
        binaries[name] = work / "bin" / name
    return Snippets(binaries)


async def run(binary: Path, port: int) -> list[str]:
    process = await asyncio.create_subprocess_exec(
        str(binary),
        env={**os.environ, "GATEWAY_TARGET": f"127.0.0.1:{port}", "GATEWAY_API_KEY": KEY},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    return out.decode().splitlines()


def test_the_readmes_hold_the_snippets_this_module_runs(tmp_path: Path) -> None:
    assert sorted(SNIPPETS) == ["client0", "client1", "client2", "main0"]
    for name, source in SNIPPETS.items():
        assert source.startswith("package main\n")
        # What grpc-go 1.33 (the floor) has; credentials/insecure came with 1.34.
        assert "credentials/insecure" not in source
        (tmp_path / f"{name}.go").write_text(source)
    gofmt = shutil.which("gofmt")
    assert gofmt, "gofmt is not on PATH: run scripts/go_toolchain.sh"
    listed = subprocess.run(
        [gofmt, "-l", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert listed.stdout == ""


def test_the_snippets_are_built_at_the_declared_floor() -> None:
    declared = {r["Path"]: r["Version"] for r in go_mod(GO_CLIENT / "go.mod")["Require"]}
    debian = (DEBIAN_GOCODE / "google.golang.org" / "grpc" / "version.go").read_text()
    assert f'const Version = "{declared["google.golang.org/grpc"].removeprefix("v")}"' in debian


def test_the_module_path_can_be_fetched() -> None:
    # A module proxy or VCS serves only paths whose first element is a host name.
    assert "." in MODULE.split("/")[0]
    assert go_mod(GO_CLIENT / "go.mod")["Module"]["Path"] == MODULE
    gen = (ROOT / "buf.gen.go.yaml").read_text()
    assert gen.count(f"Mecr/registry/v1/registry.proto={MODULE}/ecr/registry/v1;registryv1") == 2
    for source in GO_CLIENT.rglob("*.go"):
        imports = re.findall(r'"([^"]*clients/go[^"]*)"', source.read_text())
        assert all(i.startswith(MODULE + "/") for i in imports), (source, imports)
    for text in (CLIENT_README, go_section(MAIN_README), gen):
        assert not re.search(r"(?<![./\w])registry-gateway/clients/go", text)


def test_the_versions_agree() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    latest = re.search(r"^## (\d+\.\d+\.\d+) ", changelog, flags=re.M)
    assert latest
    version = "v" + latest.group(1)
    example = {r["Path"]: r["Version"] for r in go_mod(GO_CLIENT / "example" / "go.mod")["Require"]}
    assert example[MODULE] == version
    assert f'const Version = "{latest.group(1)}"' in (GO_CLIENT / "gateway" / "doc.go").read_text()
    assert require_fragment()[0] == f"require {MODULE} {version}"
    assert f", version {version} " in CLIENT_README
    assert f"`{MODULE}` ({version}," in MAIN_README
    package = json.loads((ROOT / "clients" / "typescript" / "package.json").read_text())
    assert "v" + package["version"] == version


def test_an_organisation_sets_its_own_module_path(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(GO_CLIENT, root / "clients" / "go")
    shutil.copy(ROOT / "buf.gen.go.yaml", root / "buf.gen.go.yaml")
    script = ROOT / "scripts" / "go_module_path.sh"
    env = {**os.environ, "PATH": f"{Path(go()).parent}:{os.environ['PATH']}"}
    refused = subprocess.run(
        [str(script), "corp/registry-gateway/clients/go", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert refused.returncode == 2 and "needs a dot" in refused.stderr
    renamed = subprocess.run(
        [str(script), OWN_PATH, str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert renamed.returncode == 0, renamed.stderr
    client = root / "clients" / "go"
    assert go_mod(client / "go.mod")["Module"]["Path"] == OWN_PATH
    assert f"{OWN_PATH}/ecr/registry/v1;registryv1" in (root / "buf.gen.go.yaml").read_text()
    left = [p for p in root.rglob("*") if p.is_file() and MODULE in p.read_text(errors="replace")]
    assert left == []
    # The renamed module and its dependent build, and the dependent requires the new path.
    for module in (client, client / "example"):
        build_offline(module, tmp_path / "stand-ins")
    built = go_run(["build", "./..."], client, tmp_path)
    assert built.returncode == 0, built.stderr
    example = go_run(["build", "-o", str(tmp_path / "example"), "."], client / "example", tmp_path)
    assert example.returncode == 0, example.stderr
    assert any(r["Path"] == OWN_PATH for r in go_mod(client / "example" / "go.mod")["Require"])


async def test_the_first_call(
    snippets: Snippets, gateway_factory: GatewayFactory, aws: str
) -> None:
    gateway = await gateway_factory(demo_like(aws))
    for name in ("client0", "main0"):
        (line,) = await run(snippets.binaries[name], gateway.port)
        assert re.fullmatch(rf"registry {ACCOUNT} etag \S+ x-cache miss", line), (name, line)


async def test_the_errors(snippets: Snippets, gateway_factory: GatewayFactory, aws: str) -> None:
    gateway = await gateway_factory(demo_like(aws))
    denied, stale = await run(snippets.binaries["client1"], gateway.port)
    assert re.fullmatch(rf"denied TARGET_NOT_ALLOWED registry {OTHER_ACCOUNT} request \S+", denied)
    assert stale == "stale: the current etag is absent"


async def test_the_helpers(
    snippets: Snippets, gateway_factory: GatewayFactory, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave_like_ecr(monkeypatch)
    gateway = await gateway_factory(demo_like(aws))
    for _ in range(2):  # as written, again and again
        rules, statements, versions, restored = await run(
            snippets.binaries["client2"], gateway.port
        )
        assert re.fullmatch(r"rules 1 etag \S+", rules), rules
        assert re.fullmatch(r"statements etag \S+", statements), statements
        assert re.fullmatch(r"versions \d+, newest by CHANGE_ORIGIN_GATEWAY", versions), versions
        assert restored == "restored *registryv1.PutReplicationConfigurationResponse"
