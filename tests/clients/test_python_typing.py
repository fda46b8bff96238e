"""The Python client's types hold for a caller's `mypy --strict` (issue 28).

`restore()` was typed `Message`, so `(await client.restore(...)).etag` failed strict mypy;
it now has an `@overload` per resource, each answering the union of what that resource's
restore can write (a slice tenant's write differs from a full reader's, which only the
server knows). grpcio and protobuf ship no stubs: the client's `typing` extra brings
types-protobuf and types-grpcio, without which a caller's mypy sees them as Any, silently.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"

CALLER = """
from registry_gateway_client import (
    RegistryConfigClient,
    RegistryGatewayError,
    SyncRegistryConfigClient,
)
from registry_gateway_client.v1 import registry_pb2 as pb


async def caller(client: RegistryConfigClient) -> list[str]:
    replication = await client.restore("etag", resource="replication")
    reveal_type(replication)
    policy = await client.restore("etag", resource="policy", etag="current")
    reveal_type(policy)
    either = await client.restore("etag", resource=pb.HISTORY_RESOURCE_POLICY)
    async for version in client.iter_configuration_history("policy"):
        reveal_type(version)
    try:
        await client.update_replication_rules(lambda rules: rules)
    except RegistryGatewayError as exc:
        reveal_type(exc.code)
    return [replication.etag, policy.etag, either.etag]


def blocking(client: SyncRegistryConfigClient) -> str:
    restored = client.restore("etag", resource="replication")
    reveal_type(restored)
    return restored.etag
"""


def run_mypy(tmp_path: Path) -> str:
    caller = tmp_path / "caller.py"
    caller.write_text(CALLER)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--config-file",
            "",  # not the project's: a caller's own, strict and nothing else
            str(caller),
        ],
        env={"MYPYPATH": str(CLIENT / "src"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    return done.stdout + done.stderr


def revealed(output: str) -> list[str]:
    return re.findall(r'Revealed type is "([^"]*)"', output)


def test_restore_and_the_helpers_type_check_strictly(tmp_path: Path) -> None:
    output = run_mypy(tmp_path)
    errors = [line for line in output.splitlines() if ": error:" in line]
    assert errors == [], output
    pb = "registry_gateway_client.v1.registry_pb2."
    replication, policy, version, code, blocking = revealed(output)
    assert replication == (
        f"{pb}PutReplicationConfigurationResponse | {pb}PutReplicationRulesResponse"
    )
    assert policy == (
        f"{pb}PutRegistryPolicyResponse | {pb}DeleteRegistryPolicyResponse"
        f" | {pb}PutPolicyStatementsResponse"
    )
    assert version == f"{pb}ConfigurationVersion"
    assert code == "grpc.StatusCode"  # with the stubs: not Any
    assert blocking == replication


def test_the_typing_extra_brings_the_stubs_this_repository_checks_with() -> None:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    typing = {
        Requirement(r).name: Requirement(r) for r in project["optional-dependencies"]["typing"]
    }
    assert set(typing) == {"types-protobuf", "types-grpcio"}
    locked = dict(
        re.findall(
            r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "requirements" / "dev.lock").read_text(), re.M
        )
    )
    for name, requirement in typing.items():
        assert requirement.specifier.contains(locked[name]), (name, locked[name])
    assert project["readme"] == "README.md"
    assert (CLIENT / "README.md").is_file()
