"""The Go stubs (clients/go) compile and call a live gateway.

Built offline with Debian's Go toolchain and Go sources (`scripts/go_toolchain.sh`, which
`make test` runs first) in GOPATH mode: the Go module proxy is out of reach here. The
module's files are copied under a throw-away GOPATH at the import path the generated code
uses (`registry-gateway/clients/go/...`). A missing toolchain fails, it does not skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.app.server import Gateway
from tests.helpers import ACCOUNT, KEY, OTHER_ACCOUNT

GO_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "go"
IMPORT_PATH = "registry-gateway/clients/go"
DEBIAN_GOPATH = Path("/usr/share/gocode")

# The Go build (bounded at 600 s itself) runs in the first test's setup: past pytest's global
# 120 s, which is for the calls. Above the build's own bound, so that its error is the one seen.
pytestmark = pytest.mark.timeout(900)


@dataclass(frozen=True)
class Ran:
    """What one run of the Go program left behind."""

    returncode: int
    stdout: str
    stderr: str


def go_env(gopath: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}{os.pathsep}{DEBIAN_GOPATH}",
        "GOFLAGS": "",
        "GOPROXY": "off",
    }
    # The build cache needs a home; CI may run without $HOME.
    env.setdefault("GOCACHE", str(Path.home() / ".cache" / "go-build"))
    return env


@pytest.fixture(scope="module")
def describe_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`registry-describe`, built from clients/go."""
    go = shutil.which("go")
    assert go, "go is not on PATH: run scripts/go_toolchain.sh (make test does)"
    assert (DEBIAN_GOPATH / "src" / "google.golang.org" / "grpc").is_dir()
    gopath = tmp_path_factory.mktemp("gopath")
    shutil.copytree(GO_CLIENT, gopath / "src" / IMPORT_PATH)
    binary = gopath / "bin" / "registry-describe"
    built = subprocess.run(
        [go, "build", "-o", str(binary), f"{IMPORT_PATH}/cmd/registry-describe"],
        env=go_env(gopath),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return binary


def test_go_sources_are_gofmt_clean() -> None:
    gofmt = shutil.which("gofmt")
    assert gofmt, "gofmt is not on PATH: run scripts/go_toolchain.sh"
    listed = subprocess.run(
        [gofmt, "-l", str(GO_CLIENT)], capture_output=True, text=True, timeout=60, check=True
    )
    assert listed.stdout == ""


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


async def test_go_client_makes_an_authorized_call(describe_binary: Path, gateway: Gateway) -> None:
    ran = await run(describe_binary, gateway)
    assert ran.returncode == 0, ran.stderr
    printed = json.loads(ran.stdout)
    assert printed["response"]["registryId"] == ACCOUNT
    assert printed["response"]["etag"]
    assert printed["xCache"] == "miss"


async def test_go_client_reads_the_error_info(describe_binary: Path, gateway: Gateway) -> None:
    ran = await run(describe_binary, gateway, OTHER_ACCOUNT)
    assert ran.returncode == 1
    assert ran.stderr.startswith("PermissionDenied TARGET_NOT_ALLOWED:"), ran.stderr
    assert "(request " in ran.stderr and "(request )" not in ran.stderr
