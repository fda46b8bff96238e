"""Every curl command of the README's "Calling over HTTP with curl" and of the HTTP guide's
(docs/http.md; `CURL_SECTIONS`), as written, with the real `curl` binary, and the curl the
`--embedded` banner prints, as pasted.

The commands are taken from the sections' `sh` blocks, in order, and run by bash:
- the plaintext ones against `registry-gateway serve --embedded` in a subprocess (what
  `make serve` runs), its HTTP address and demo key taken from the banner it prints;
- the HTTPS one against an in-process gateway with `http.tls`, in a directory holding the
  `ca.pem` the README names.
Assignments are kept as written, except the inputs a reader supplies (the key and the
addresses), which the test fills in. Every command must exit 0. What it prints must be
what the section says: a JSON answer, the status line of `-i` (304 for a matching
`If-None-Match`), and under "Reading errors" a Connect error with its google.rpc details.
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
from tests.support.certs import make_pki
from tests.support.helpers import config_dict
from tests.support.readme_support import CURL_SECTIONS, Ran, bash, read
from tests.support.readme_support import section as readme_section

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
README = read("README.md")
SECTION = "## Calling over HTTP with curl"
ERRORS = "### Reading errors"
DEMO_KEY = "readme-demo-key"
CALLS = (
    "DescribeRegistry",
    "GetRegistryPolicy",
    "PutRegistryPolicy",
    "DeleteRegistryPolicy",
    "PutReplicationConfiguration",
    "GetReplicationRules",
    "PutReplicationRules",
    "GetPolicyStatements",
    "PutPolicyStatements",
    "GetConfigurationHistory",
)


@dataclass(frozen=True)
class Step:
    """One runnable thing in the section: an assignment, or a command (with its heredoc)."""

    kind: str  # "assign" | "command"
    text: str
    name: str = ""
    subsection: str = ""


def section(text: str, heading: str = SECTION) -> str:
    """A README section, up to the next `## ` heading."""
    return readme_section(text, heading)


def steps(texts: dict[str, str]) -> list[Step]:
    """The `sh` blocks of the sections as steps, in order, each with its `###` heading."""
    found: list[Step] = []
    parts: list[str] = []
    headings: list[str] = []
    for document, title in CURL_SECTIONS:
        split = re.split(r"\n(### [^\n]*)\n", section(texts[document], title))
        parts += split[0::2]
        headings += ["", *split[1::2]]
    for heading, body in zip(headings, parts, strict=True):
        for block in re.findall(r"```sh\n(.*?)```", body, flags=re.S):
            lines = block.splitlines()
            i = 0
            while i < len(lines):
                line = lines[i]
                i += 1
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                heredoc = re.search(r"<<'(\w+)'", line)
                if heredoc:
                    body_lines = []
                    while lines[i] != heredoc.group(1):
                        body_lines.append(lines[i])
                        i += 1
                    i += 1
                    line = "\n".join([line, *body_lines, heredoc.group(1)])
                assignment = re.match(r"([A-Z_]+)=", line)
                if assignment:
                    found.append(Step("assign", line, assignment.group(1), heading))
                elif line.startswith("curl "):
                    found.append(Step("command", line, subsection=heading))
                else:
                    pytest.fail(f"{CURL_SECTIONS}: a line this test cannot run: {line!r}")
    return found


STEPS = steps({document: read(document) for document, _ in CURL_SECTIONS})
COMMANDS = [s.text for s in STEPS if s.kind == "command"]


def test_the_section_shows_every_call_beside_grpcurl() -> None:
    text = "\n".join(COMMANDS)
    for rpc in CALLS:
        assert f"$URL/{rpc}" in text, rpc
    for needed in ("-d @-", "if-none-match", "x-request-id", "connect-timeout-ms", "--cacert"):
        assert needed in text, needed
    assert README.index(SECTION) > README.index("## Debugging with grpcurl")


@pytest.fixture
async def embedded() -> AsyncIterator[tuple[str, list[str]]]:
    """`registry-gateway serve --embedded` on free ports: its HTTP host:port, and the
    curl its banner prints (as argv)."""
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
        curl = None
        while curl is None:
            line = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode()
            assert line, "the gateway exited before printing its banner"
            found = re.search(r" on http://(127\.0\.0\.1:[1-9][0-9]*)$", line.strip())
            address = found.group(1) if found else address
            if line.strip().startswith("curl "):
                curl = shlex.split(line.strip())
        assert address is not None
        yield address, curl
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        # Both listeners drained and closed: the process exits cleanly.
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0


@pytest.fixture
async def https_gateway(gateway_factory: GatewayFactory, aws: str, tmp_path: Path) -> Path:
    """A gateway serving HTTPS; writes `https` (its host:port) beside the CA it trusts."""
    pki = make_pki(tmp_path / "pki")
    raw = config_dict(aws)
    raw["tenants"][0]["api_keys"] = [hash_key(DEMO_KEY)]
    raw["http"] = {
        "listen": "127.0.0.1:0",
        "tls": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)},
    }
    gateway = await gateway_factory(raw)
    ca = pki.dir / "ca.pem"
    if not ca.exists():
        ca.write_bytes(pki.ca_cert.read_bytes())
    # The server certificate names localhost: the address a reader would use for theirs.
    (pki.dir / "https").write_text(f"localhost:{gateway.http_port}")
    return pki.dir


def status_and_body(output: str) -> tuple[int, str]:
    """The status line and body of `curl -i`'s output."""
    head, _, body = output.partition("\r\n\r\n")
    status = int(head.split(" ", 2)[1])
    return status, body


def check(step: Step, ran: Ran) -> None:
    """What the section says each command shows."""
    command = step.text
    shown = f"{command}\n--- exit {ran.returncode}\n{ran.stdout}\n--- stderr\n{ran.stderr}"
    assert ran.returncode == 0, shown
    body = ran.stdout
    if " -i " in command:
        status, body = status_and_body(ran.stdout)
        if "if-none-match" in command:
            assert status == 304 and body == "", shown
            return
        assert status == 200, shown
        assert re.search(r"^x-request-id: \S+\r$", ran.stdout, flags=re.M), shown
        assert re.search(r"^x-cache: (hit|miss|stale)\r$", ran.stdout, flags=re.M), shown
        if '-H "x-request-id: ' in command:
            wanted = re.search(r'-H "x-request-id: ([^"]+)"', command)
            assert wanted and f"x-request-id: {wanted.group(1)}\r" in ran.stdout, shown
    answer = json.loads(body)
    assert isinstance(answer, dict), shown
    if step.subsection == ERRORS:
        assert answer["code"] in (
            "permission_denied",
            "invalid_argument",
            "failed_precondition",
        ), shown
        infos = [d for d in answer["details"] if d["type"] == "google.rpc.ErrorInfo"]
        assert len(infos) == 1 and infos[0]["debug"]["domain"] == "registry-gateway", shown
        assert infos[0]["debug"]["metadata"]["requestId"], shown
        return
    assert "code" not in answer, shown


async def test_the_banner_curl_works_as_pasted(embedded: tuple[str, list[str]]) -> None:
    _, curl = embedded
    assert f"Bearer {DEMO_KEY}" in " ".join(curl)
    process = await asyncio.create_subprocess_exec(
        *curl, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err
    assert json.loads(out)["registryId"] == "123456789012"


async def test_every_readme_curl_command_works_as_written(
    embedded: tuple[str, list[str]], https_gateway: Path
) -> None:
    address, _ = embedded
    inputs = {
        "KEY": DEMO_KEY,
        "HTTP": address,
        "HTTPS": (https_gateway / "https").read_text(),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_GATEWAY")}
    prelude: list[str] = []
    ran_commands = 0
    for step in STEPS:
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
        tls = "--cacert" in step.text
        script = "\n".join(["set -euo pipefail", *prelude, step.text])
        ran = await bash(script, https_gateway if tls else ROOT, env)
        check(step, ran)
        ran_commands += 1
    assert ran_commands == len(COMMANDS) >= 18
