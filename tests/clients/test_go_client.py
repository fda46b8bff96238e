"""The Go client (clients/go) is a Go module another module can require, and calls a live gateway.

`clients/go/go.mod` makes the generated stubs the module `registry-gateway.example/clients/go`;
`clients/go/example` is a module of its own that requires it through a `replace` directive,
as a dependent program would. Both are built in module mode, offline: the Go module proxy
is out of reach here, so a throw-away copy of each go.mod gets `replace` directives to
Debian's Go sources (/usr/share/gocode, from `scripts/go_toolchain.sh`, which `make test`
runs first), and an empty stand-in for each module that is only named in some go.mod of
the graph, never imported. The committed go.mod files are left as written: each must be
what `go mod tidy` makes of it there. A missing toolchain fails, it does not skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.app.server import Gateway
from tests.support.helpers import ACCOUNT, KEY, OTHER_ACCOUNT
from tests.support.moto_writes import behave_like_ecr

GO_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "go"
MODULE = "registry-gateway.example/clients/go"
DEBIAN_GOCODE = Path("/usr/share/gocode/src")

# The Go builds (bounded at 600 s each) run in the first tests' setup: past pytest's global
# 120 s, which is for the calls. Above the builds' own bound, so that their error is the one seen.
pytestmark = pytest.mark.timeout(1300)


@dataclass(frozen=True)
class Ran:
    """What one run of a Go program left behind."""

    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Built:
    """The two modules, copied and made buildable offline, and their binaries."""

    root: Path
    describe: Path
    example: Path


def go() -> str:
    found = shutil.which("go")
    assert found, "go is not on PATH: run scripts/go_toolchain.sh (make test does)"
    return found


def go_env(work: Path) -> dict[str, str]:
    """Module mode, no network: every module comes from a `replace` directory."""
    env = {
        **os.environ,
        "GO111MODULE": "on",
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",
        "GOSUMDB": "off",
        "GOWORK": "off",
        "GOPATH": str(work / "gopath"),
    }
    # The build cache needs a home; CI may run without $HOME.
    env.setdefault("GOCACHE", str(Path.home() / ".cache" / "go-build"))
    return env


def go_mod(path: Path) -> dict[str, Any]:
    """A go.mod as `go mod edit -json` reads it."""
    listed = subprocess.run(
        [go(), "mod", "edit", "-json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    parsed: dict[str, Any] = json.loads(listed.stdout)
    return parsed


def requirements(path: Path) -> list[tuple[str, str, bool]]:
    return sorted(
        (r["Path"], r["Version"], bool(r.get("Indirect")))
        for r in go_mod(path).get("Require") or []
    )


def build_offline(module: Path, stand_ins: Path) -> None:
    """Point every module of `module`'s graph at Debian's sources or an empty stand-in.

    The graph: the go.mod's requirements, those of local `replace` targets, and, for each
    module Debian ships, the requirements of Debian's go.mod, transitively. A module
    Debian does not ship is only named in the graph (grpc-go 1.33's go.mod names
    go-control-plane, for its xds packages nobody here imports): an empty module stands in.
    """
    parsed = go_mod(module / "go.mod")
    local = {
        r["Old"]["Path"]: (module / r["New"]["Path"]).resolve()
        for r in parsed.get("Replace") or []
        if r["New"]["Path"].startswith(".")
    }
    todo = [r["Path"] for r in parsed.get("Require") or []]
    for target in local.values():
        todo += [r["Path"] for r in go_mod(target / "go.mod").get("Require") or []]
    seen: set[str] = set(local)
    edits: list[str] = []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        debian = DEBIAN_GOCODE / path
        if (debian / "go.mod").is_file():
            edits.append(f"-replace={path}={debian}")
            todo += [r["Path"] for r in go_mod(debian / "go.mod").get("Require") or []]
        else:
            stand_in = stand_ins / path
            stand_in.mkdir(parents=True, exist_ok=True)
            (stand_in / "go.mod").write_text(f"module {path}\n")
            edits.append(f"-replace={path}={stand_in}")
    subprocess.run([go(), "mod", "edit", *edits, str(module / "go.mod")], timeout=60, check=True)


def go_run(args: list[str], cwd: Path, work: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [go(), *args],
        cwd=cwd,
        env=go_env(work),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """`registry-describe` (in the client's module) and `example` (a module requiring it)."""
    assert (DEBIAN_GOCODE / "google.golang.org" / "grpc" / "go.mod").is_file()
    work = tmp_path_factory.mktemp("go")
    root = work / "clients" / "go"
    shutil.copytree(GO_CLIENT, root)
    for module in (root, root / "example"):
        build_offline(module, work / "stand-ins")
    describe = go_run(
        ["build", "-o", str(work / "registry-describe"), "./cmd/registry-describe"], root, work
    )
    assert describe.returncode == 0, describe.stderr
    example = go_run(["build", "-o", str(work / "example"), "."], root / "example", work)
    assert example.returncode == 0, example.stderr
    return Built(root, work / "registry-describe", work / "example")


def test_go_sources_are_gofmt_clean() -> None:
    gofmt = shutil.which("gofmt")
    assert gofmt, "gofmt is not on PATH: run scripts/go_toolchain.sh"
    listed = subprocess.run(
        [gofmt, "-l", str(GO_CLIENT)], capture_output=True, text=True, timeout=60, check=True
    )
    assert listed.stdout == ""


def test_the_module_and_its_dependent_are_tidy(built: Built) -> None:
    """The committed requirements are what `go mod tidy` keeps, direct and indirect."""
    assert go_mod(GO_CLIENT / "go.mod")["Module"]["Path"] == MODULE
    example = go_mod(GO_CLIENT / "example" / "go.mod")
    assert [r["Old"]["Path"] for r in example["Replace"]] == [MODULE]
    assert any(r["Path"] == MODULE for r in example["Require"])
    for module in (built.root, built.root / "example"):
        committed = GO_CLIENT / module.relative_to(built.root) / "go.mod"
        tidy = go_run(["mod", "tidy"], module, built.root)
        assert tidy.returncode == 0, tidy.stderr
        assert requirements(module / "go.mod") == requirements(committed), committed


async def run(binary: Path, gateway: Gateway, *args: str, key: str = KEY) -> Ran:
    process = await asyncio.create_subprocess_exec(
        str(binary),
        *args,
        env={**os.environ, "GATEWAY_TARGET": f"127.0.0.1:{gateway.port}", "GATEWAY_API_KEY": key},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


async def test_go_client_makes_an_authorized_call(built: Built, gateway: Gateway) -> None:
    ran = await run(built.describe, gateway)
    assert ran.returncode == 0, ran.stderr
    printed = json.loads(ran.stdout)
    assert printed["response"]["registryId"] == ACCOUNT
    assert printed["response"]["etag"]
    assert printed["xCache"] == "miss"


async def test_go_client_reads_the_error_info(built: Built, gateway: Gateway) -> None:
    ran = await run(built.describe, gateway, OTHER_ACCOUNT)
    assert ran.returncode == 1
    assert ran.stderr.startswith("PermissionDenied TARGET_NOT_ALLOWED:"), ran.stderr
    assert "(request " in ran.stderr and "(request )" not in ran.stderr


async def test_a_dependent_module_reads_writes_with_an_etag_and_uses_its_slice(
    built: Built, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The slice's rule beside the registry's own: several rules, as ECR takes (not moto 5).
    behave_like_ecr(monkeypatch)
    ran = await run(built.example, gateway, "eu-west-1", "payments/")
    assert ran.returncode == 0, ran.stderr
    printed = json.loads(ran.stdout)
    assert printed["registryId"] == ACCOUNT
    assert printed["writtenEtag"] and printed["writtenEtag"] != printed["readEtag"]
    assert printed["staleReason"] == "ETAG_MISMATCH"
    assert printed["sliceEtag"] and printed["sliceNewEtag"] != printed["sliceEtag"]
    assert printed["sliceRules"] == 1
    assert printed["rulesAfter"] == 1  # packed: the slice's filter joins prod's destination set


async def test_a_dependent_module_sees_a_refused_slice_write(
    built: Built, gateway: Gateway
) -> None:
    # `billing/` is not the tenant's: the slice write is refused, with its ErrorInfo.
    ran = await run(built.example, gateway, "eu-west-1", "billing/")
    assert ran.returncode == 1
    assert ran.stderr.startswith("PutReplicationRules: "), ran.stderr
    assert "(request )" not in ran.stderr
