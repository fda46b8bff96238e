"""Every grpcurl command of the README's "Debugging with grpcurl" and of the guides' sections
that use its variables (slices, validation: `GRPCURL_SECTIONS`), as written.

The commands are taken from those sections' `sh` blocks, in order, and run by bash against a
live gateway, as a person following the README would:
- the plaintext ones against `registry-gateway serve --embedded` in a subprocess (what
  `make serve` runs), its port and demo key taken from the banner it prints;
- the TLS and mTLS ones against an in-process gateway with two TLS listeners, in a
  directory holding `ca.pem`, `client.pem` and `client.key` made for the test.
Assignments are kept as written, except the inputs a reader supplies (the key and the
gateway addresses, `NAME=<...>` placeholders or `host:port` values), which the test fills
in. A command must exit 0, except those with `-format-error`, which must fail with the
status they print, and those after a `# exits N` comment, which must exit N. A line of any
other shape fails the test, so the section stays runnable.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.auth.api_keys import hash_key
from tests.conftest import GatewayFactory
from tests.support.certs import client_cert, make_pki
from tests.support.helpers import config_dict
from tests.support.readme_support import GRPCURL_SECTIONS, Ran, bash, read
from tests.support.readme_support import section as readme_section

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
README = read("README.md")
SECTION = "## Debugging with grpcurl"
DEMO_KEY = "readme-demo-key"
SPIFFE_ID = "spiffe://corp.example/ns/payments/sa/deployer"
FIVE = (
    "DescribeRegistry",
    "GetRegistryPolicy",
    "PutRegistryPolicy",
    "DeleteRegistryPolicy",
    "PutReplicationConfiguration",
)


@dataclass(frozen=True)
class Step:
    """One runnable thing in the section: an assignment, or a command (with its heredoc)."""

    kind: str  # "path" | "assign" | "command"
    text: str
    name: str = ""
    exits: int | None = None  # what a `# exits N` comment before the command says


def section(text: str, heading: str = SECTION) -> str:
    """A README section, up to the next `## ` heading."""
    return readme_section(text, heading)


def steps(texts: dict[str, str]) -> list[Step]:
    """The `sh` blocks of the sections, as steps, in order."""
    found: list[Step] = []
    blocks = [
        block
        for document, heading in GRPCURL_SECTIONS
        for block in re.findall(r"```sh\n(.*?)```", section(texts[document], heading), flags=re.S)
    ]
    for block in blocks:
        lines = block.splitlines()
        i = 0
        exits = None
        while i < len(lines):
            line = lines[i]
            i += 1
            said = re.match(r"# exits (\d+)", line)
            if said:
                exits = int(said.group(1))
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            while line.endswith("\\") and i < len(lines):
                line = line[:-1] + lines[i]
                i += 1
            heredoc = re.search(r"<<'(\w+)'", line)
            if heredoc:
                body = []
                while lines[i] != heredoc.group(1):
                    body.append(lines[i])
                    i += 1
                i += 1
                line = "\n".join([line, *body, heredoc.group(1)])
            assignment = re.match(r"([A-Z_]+)=", line)
            if line == "export PATH=$PWD/.venv/bin:$PATH":
                found.append(Step("path", line))
            elif assignment:
                found.append(Step("assign", line, assignment.group(1)))
            elif line.startswith("grpcurl "):
                found.append(Step("command", line, exits=exits))
                exits = None
            else:
                pytest.fail(f"{GRPCURL_SECTIONS}: a line this test cannot run: {line!r}")
    return found


STEPS = steps({document: read(document) for document, _ in GRPCURL_SECTIONS})
COMMANDS = [s.text for s in STEPS if s.kind == "command"]


def test_the_section_shows_every_call_and_flag() -> None:
    text = "\n".join(COMMANDS)
    for rpc in (*FIVE, "GetConfigurationHistory"):
        assert f"$SVC/{rpc}" in text, rpc
    for needed in (" list", " describe ", "-format-error", "-cacert", "-cert ", "-v ", "-d @"):
        assert needed in text, needed
    assert any(s.kind == "path" for s in STEPS)


@pytest.fixture
async def embedded() -> AsyncIterator[str]:
    """`registry-gateway serve --embedded` on a free port; yields its host:port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_GATEWAY")}
    process = await asyncio.create_subprocess_exec(
        str(BIN / "registry-gateway"),
        "serve",
        "--embedded",
        "--listen",
        "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={
            **env,
            "REGISTRY_GATEWAY_DEMO_KEY": DEMO_KEY,
            "REGISTRY_GATEWAY__SERVER__DRAIN_SECONDS": "0",
        },
    )
    assert process.stdout is not None
    try:
        address = None
        while address is None:
            line = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode()
            assert line, "the gateway exited before printing its banner"
            found = re.search(r" on (127\.0\.0\.1:[1-9][0-9]*)$", line.strip())
            address = found.group(1) if found else None
        yield address
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=30)


@dataclass(frozen=True)
class TlsSetup:
    """A gateway with an mTLS and a TLS listener, and the directory holding the PEM files."""

    directory: Path
    mtls: str
    tls: str


@pytest.fixture
async def tls_gateway(gateway_factory: GatewayFactory, aws: str, tmp_path: Path) -> TlsSetup:
    pki = make_pki(tmp_path / "pki")
    client_cert(pki, "client", SPIFFE_ID)  # client.pem and client.key, as the README names
    raw = config_dict(aws)
    raw["tenants"][0]["api_keys"] = [hash_key(DEMO_KEY)]
    raw["tenants"][0]["spiffe_ids"] = [SPIFFE_ID]
    server_tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    raw["listeners"] = [
        {
            "listen": "127.0.0.1:0",
            "tls": {**server_tls, "client_ca_file": str(pki.ca_cert), "client_auth": "require"},
        },
        {"listen": "127.0.0.1:0", "tls": {**server_tls, "client_auth": "none"}},
    ]
    gateway = await gateway_factory(raw)
    mtls_port, tls_port = gateway.ports
    # The server certificate names localhost: the address a reader would use for theirs.
    return TlsSetup(pki.dir, f"localhost:{mtls_port}", f"localhost:{tls_port}")


def check(command: str, ran: Ran, exits: int | None = None) -> None:
    """What a person would see: success, or (with -format-error) the status they asked for,
    or the exit code the document says."""
    shown = f"{command}\n--- exit {ran.returncode}\n{ran.stdout}\n--- stderr\n{ran.stderr}"
    if exits is not None:
        assert ran.returncode == exits, shown
        assert "ERROR:\n  Code: " in ran.stderr and "google.rpc.ErrorInfo" in ran.stderr, shown
        return
    if "-format-error" in command:
        status = json.loads(ran.stderr)
        assert status["code"] > 0, shown
        assert ran.returncode == 64 + status["code"], shown
        infos = [d for d in status["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
        assert len(infos) == 1 and infos[0]["domain"] == "registry-gateway", shown
        assert infos[0]["metadata"]["requestId"], shown
        return
    assert ran.returncode == 0, shown
    assert ran.stdout.strip(), shown
    if " -v " in command:
        assert "x-request-id:" in ran.stdout + ran.stderr, shown
    if '-H "x-request-id: ' in command:
        wanted = re.search(r'-H "x-request-id: ([^"]+)"', command)
        assert wanted and f"x-request-id: {wanted.group(1)}" in ran.stdout, shown
    if "$SVC/" in command and " -v " not in command:
        assert isinstance(json.loads(ran.stdout), dict), shown


async def test_every_readme_grpcurl_command_works_as_written(
    embedded: str, tls_gateway: TlsSetup
) -> None:
    # What a reader supplies: the key make serve printed, and where their gateways listen.
    inputs = {"KEY": DEMO_KEY, "GW": embedded, "GW_TLS": tls_gateway.tls}
    inputs["GW_MTLS"] = tls_gateway.mtls
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_GATEWAY")}
    prelude: list[str] = []
    ran_commands = 0
    for step in STEPS:
        if step.kind == "path":
            # `export PATH=$PWD/.venv/bin:$PATH`, run from the repository root.
            env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
            continue
        if step.kind == "assign" and step.name in inputs:
            value = step.text.split("=", 1)[1]
            assert value.startswith("<") or re.fullmatch(r"[\w.-]+:\d+", value), step.text
            prelude.append(f"{step.name}={shlex.quote(inputs[step.name])}")
            continue
        if step.kind == "assign" and "$(" in step.text:
            # Computed once, where it stands (the etag of a read), as in a person's shell;
            # it must not come out empty.
            shown = await bash(
                "\n".join(["set -euo pipefail", *prelude, step.text, f'printf %s "${step.name}"']),
                ROOT,
                env,
            )
            assert shown.returncode == 0 and shown.stdout, (step.text, shown)
            prelude.append(f"{step.name}={shlex.quote(shown.stdout)}")
            continue
        if step.kind == "assign":
            prelude.append(step.text)
            continue
        tls = "-cacert" in step.text
        script = "\n".join(["set -euo pipefail", *prelude, step.text])
        ran = await bash(script, tls_gateway.directory if tls else ROOT, env)
        check(step.text, ran, step.exits)
        ran_commands += 1
    assert ran_commands == len(COMMANDS) >= 20
