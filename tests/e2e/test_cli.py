"""The `registry-gateway` command as operators run it, in a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
CONSOLE_SCRIPT = str(BIN / "registry-gateway")


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_GATEWAY")}
    return {**base, "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}", **extra}


async def run(*args: str, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ or env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_serve_without_config_or_embedded_refuses() -> None:
    code, out, err = await run(CONSOLE_SCRIPT, "serve")
    assert code == 2
    assert "--config" in err and "--embedded" in err
    assert "Traceback" not in err + out


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("server:\n  max_deadline_seconds: soon\n", "server.max_deadline_seconds"),
        ("tenants:\n  - name: a\n    registries: [{registry_id: '12'}]\n", "registry_id"),
        ("listen: [not, an, address\n", "not valid YAML"),
        ("tracing:\n  otlp_endpoint: ''\n", "tracing.otlp_endpoint"),
    ],
    ids=["wrong-type", "bad-registry-id", "broken-yaml", "empty-endpoint"],
)
async def test_bad_config_is_one_line_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    code, out, err = await run(sys.executable, "-m", "service", "serve", "--config", str(path))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("config error:") and key in lines[0]
    assert "Traceback" not in err + out


async def test_config_path_from_env(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("aws:\n  max_attempts: many\n")
    code, _, err = await run(
        CONSOLE_SCRIPT, "serve", environ=env(REGISTRY_GATEWAY_CONFIG=str(path))
    )
    assert code == 2 and "aws.max_attempts" in err


async def test_embedded_prints_a_grpcurl_that_works_then_stops_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        CONSOLE_SCRIPT,
        "serve",
        "--embedded",
        "--listen",
        "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env(
            REGISTRY_GATEWAY_DEMO_KEY="demo-key-for-tests",
            REGISTRY_GATEWAY__SERVER__DRAIN_SECONDS="0",
        ),
    )
    assert proc.stdout is not None
    try:
        command = None
        while command is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), timeout=60)).decode()
            assert line, "the gateway exited before printing its banner"
            if line.strip().startswith("grpcurl "):
                command = shlex.split(line.strip())
        assert "demo-key-for-tests" in " ".join(command)
        assert re.search(r"127\.0\.0\.1:[1-9][0-9]*", " ".join(command))
        code, out, err = await run(*command)
        assert code == 0, err
        assert json.loads(out)["registryId"] == "123456789012"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
