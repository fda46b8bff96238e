"""clients/python/README.md runs as written against a live gateway (gRPC and its HTTP listener).

Every `python` block is run, in order, in a fresh interpreter (a child process, so the
in-process gateway keeps serving), with the gateway's gRPC address in GATEWAY_TARGET, its
HTTP listener's URL in GATEWAY_URL and tenant `payments`' key in GATEWAY_API_KEY; each must
exit 0 and print what its section says. The `sh` install block is checked, not run (it would
download the dependencies): each line installs this directory, with extras it declares.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
from moto.ecr.models import ecr_backends

from service.app.server import Gateway
from tests.conftest import GatewayFactory
from tests.http.conftest import http_config
from tests.support.helpers import ACCOUNT, KEY
from tests.support.moto_writes import behave_like_ecr

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
README = (CLIENT / "README.md").read_text()
BLOCKS: list[tuple[str, str]] = re.findall(r"```(python|sh)\n(.*?)```", README, flags=re.S)
PYTHON = [code for kind, code in BLOCKS if kind == "python"]

# What each python block prints, in README order: one pattern per line it must print.
EXPECTED: list[list[str]] = [
    [
        rf"registry {ACCOUNT} etag [0-9a-f]+",
        r"x-cache miss request [0-9a-f]{32} attempts 1",
    ],
    [r"over Connect: my rules 0 of 10"],
    [
        r"denied TARGET_NOT_ALLOWED request [0-9a-f]{32}",
        r"invalid UNDECODABLE_REQUEST \['rules\[0\]'\]",
        r"INVALID_ARGUMENT INVALID_REQUEST",
    ],
    [r"done"],
    [
        r"rules \['payments/api'\]",
        r"statements 1 etag [0-9a-f]+",
    ],
    [r"[0-9a-f]+ payments PutReplicationRules", r"[0-9a-f]+ - -", r"restored, etag now \w+"],
    [r"DescribeRegistry attempt 1: \d+\.\d{3} s", r"request id deploy-4711"],
    [rf"generated Connect client {ACCOUNT}"],
]


def test_every_python_block_has_its_expectation() -> None:
    assert len(PYTHON) == len(EXPECTED)


def test_the_install_lines_install_this_package_with_its_extras() -> None:
    (install,) = [code for kind, code in BLOCKS if kind == "sh"]
    extras = set(
        tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    seen: set[str] = set()
    for line in install.splitlines():
        words = shlex.split(line, comments=True)
        assert words[:2] == ["pip", "install"], line
        path, _, extra = words[2].partition("[")
        assert (ROOT / path).resolve() == CLIENT, line
        if extra:
            assert extra.rstrip("]") in extras, line
            seen.add(extra.rstrip("]"))
    assert seen == extras  # every extra is shown


@pytest.fixture
async def http_gateway(
    gateway_factory: GatewayFactory, aws: str, monkeypatch: pytest.MonkeyPatch
) -> Gateway:
    behave_like_ecr(monkeypatch)  # ECR takes several replication rules; moto one
    return await gateway_factory(http_config(aws))


async def run(code: str, gateway: Gateway, tmp_path: Path, index: int) -> list[str]:
    script = tmp_path / f"block{index}.py"
    script.write_text(code)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env={
            **os.environ,
            "GATEWAY_TARGET": f"127.0.0.1:{gateway.port}",
            "GATEWAY_URL": f"http://127.0.0.1:{gateway.http_port}",
            "GATEWAY_API_KEY": KEY,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    assert process.returncode == 0, f"block {index}:\n{code}\n{err.decode()}"
    return out.decode().splitlines()


async def test_the_python_blocks_run_as_written(http_gateway: Gateway, tmp_path: Path) -> None:
    for index, (code, expected) in enumerate(zip(PYTHON, EXPECTED, strict=True)):
        lines = await run(code, http_gateway, tmp_path, index)
        assert len(lines) == len(expected), (index, lines)
        for line, pattern in zip(lines, expected, strict=True):
            assert re.fullmatch(pattern, line), (index, line, pattern)
    stored = ecr_backends[ACCOUNT]["us-east-1"].replication_config
    # The history block put the version before the rules' back: no rules again.
    assert stored["rules"] == []
