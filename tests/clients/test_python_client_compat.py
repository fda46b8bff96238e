"""The Python client installed alone at both ends of its declared ranges, against a live gateway.

Two ends: the floors of clients/python/pyproject.toml (requirements/client-oldest.lock) and
the newest versions its ranges allow (requirements/client-newest.lock, which moves only when
`make lock` is run). Each end's lock goes into a venv made once per lock (tests/support/venvs.py:
reused while the lock holds, no pip inside, the pip cache, no byte-compiling, only the
client's three dependencies); each run adds a fresh venv on top of it that gets the client's
wheel with `--no-index`, then `pip check`: the declared requirements must be met by exactly
those pins, with nothing downloaded.

The gateway runs here, in the dev venv, on real moto; the checks
(tests/clients/client_only_checks.py, stdlib unittest) run in the throwaway venv under
`python -I`, which sees no repository, PYTHONPATH or user site. A pytest test rather than a
Makefile step because the gateway's lifecycle (moto, config, a free port, stopping it
however the test ends) is this suite's fixtures', and `make test` runs it with the rest.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from service.app.server import Gateway
from tests.clients.test_python_client_package import build_client_wheel
from tests.support.helpers import ACCOUNT, KEY, OTHER_ACCOUNT, PARTNER_ACCOUNT, POLICY
from tests.support.venvs import layered_venv, locked_venv, pip

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements"
CHECKS = Path(__file__).with_name("client_only_checks.py")
ENDS = ("oldest", "newest")


def lock_of(end: str) -> Path:
    return REQUIREMENTS / f"client-{end}.lock"


def pins(lock: Path) -> dict[str, str]:
    """`name==version` of every package a hashed lock installs."""
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock.read_text(), flags=re.M))


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())
    return [Requirement(dep) for dep in project["project"]["dependencies"]]


def install_client(base: Path, home: Path, wheel: Path) -> Path:
    """A venv of the client alone: the end's pins (from `base`) and the wheel, installed
    with nothing downloaded and its requirements met by those pins; returns its python."""
    python = layered_venv(base, home)
    pip("--python", python, "install", "--no-index", "--no-compile", wheel)
    pip("--python", python, "check")
    return python


def check_count() -> int:
    """How many checks client_only_checks.py defines: all of them must run."""
    tree = ast.parse(CHECKS.read_text())
    return sum(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
        for node in ast.walk(tree)
    )


@pytest.fixture(scope="module")
def client_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_client_wheel(tmp_path_factory.mktemp("client-wheel"))


def test_the_oldest_end_is_exactly_the_declared_floors() -> None:
    floors: dict[str, str] = {}
    for requirement in declared():
        (floor,) = [s.version for s in requirement.specifier if s.operator == ">="]
        floors[requirement.name] = floor
    oldest = pins(lock_of("oldest"))
    assert {name: oldest.get(name) for name in floors} == floors


def test_the_newest_end_is_within_the_declared_ranges() -> None:
    newest = pins(lock_of("newest"))
    for requirement in declared():
        assert requirement.specifier.contains(newest[requirement.name]), requirement


async def run(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """A process of the throwaway venv, awaited so that the gateway in this loop serves."""
    process = await asyncio.create_subprocess_exec(
        *map(str, args),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=180)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


@pytest.mark.parametrize("end", ENDS)
async def test_the_client_alone_against_a_live_gateway(
    end: str, gateway: Gateway, client_wheel: Path, tmp_path: Path
) -> None:
    base = await asyncio.to_thread(locked_venv, f"client-{end}", lock_of(end))
    python = await asyncio.to_thread(install_client, base, tmp_path / "venv", client_wheel)

    code, output = await run(python, "-I", "-c", "import ecr")
    assert code != 0 and "No module named 'ecr'" in output, output

    setup = {
        "target": f"127.0.0.1:{gateway.port}",
        "key": KEY,
        "account": ACCOUNT,
        "other_account": OTHER_ACCOUNT,
        "partner_account": PARTNER_ACCOUNT,
        "policy": POLICY,
        "pins": pins(lock_of(end)),
    }
    env = {**os.environ, "COMPAT_GATEWAY": json.dumps(setup)}
    code, output = await run(python, "-I", CHECKS, "-v", env=env)
    assert code == 0, output[-6000:]
    assert f"Ran {check_count()} tests" in output, output[-2000:]
