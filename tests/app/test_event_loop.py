"""The event loop the gateway serves on (service/app/event_loop.py, `server.event_loop`):
uvloop when it is installed, asyncio's own otherwise or when asked; `uvloop` without it
refused at start as a config error.

The served gateway is the real CLI in its own process (the loop is chosen before anything
else runs), calling the real moto; "not installed" is a `uvloop` package on the process's
PYTHONPATH that fails to import, as a missing one does.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from service.app import event_loop
from service.config import ConfigError, from_mapping
from tests.support.helpers import config_dict, describe_status

BIN = Path(sys.executable).parent
CONSOLE_SCRIPT = str(BIN / "registry-gateway")


@pytest.fixture
def no_uvloop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory whose `uvloop` fails to import (put first on PYTHONPATH); in this process,
    `import uvloop` fails too while the test runs."""
    broken = tmp_path / "no-uvloop" / "uvloop"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('uvloop is not installed here')\n")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    yield broken.parent


async def _running_loop_name() -> str:
    return event_loop.name(asyncio.get_running_loop())


def test_auto_serves_on_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")
    assert event_loop.run(_running_loop_name(), "auto") == "uvloop"
    assert event_loop.run(_running_loop_name(), "uvloop") == "uvloop"


def test_asyncio_is_asyncio_even_with_uvloop_installed() -> None:
    assert event_loop.loop_factory("asyncio") is None
    assert event_loop.run(_running_loop_name(), "asyncio") == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_config_error(no_uvloop: Path) -> None:
    assert event_loop.run(_running_loop_name(), "auto") == "asyncio"
    main = _running_loop_name()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited"
        with pytest.raises(ConfigError, match=r"^config error: server\.event_loop: uvloop"):
            event_loop.run(main, "uvloop")
    assert inspect.getcoroutinestate(main) == inspect.CORO_CLOSED  # closed, never run


def test_the_config_takes_the_three_values_only() -> None:
    def server(**values: Any) -> dict[str, Any]:
        return {"server": values, "aws": {"region": "us-east-1"}}

    assert from_mapping(server(), {}).server.event_loop == "auto"
    for choice in ("auto", "asyncio", "uvloop"):
        assert from_mapping(server(event_loop=choice), {}).server.event_loop == choice
    with pytest.raises(ConfigError, match=r"server\.event_loop"):
        from_mapping(server(event_loop="trio"), {})


def _env(pythonpath: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_GATEWAY")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return env


async def _serve(
    config: dict[str, Any], path: Path, pythonpath: Path | None
) -> tuple[str, grpc.StatusCode]:
    """Serve `config` with the CLI: the loop its start-up line names and a cached read's
    status; then stop it with SIGTERM (it must exit 0)."""
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        CONSOLE_SCRIPT,
        "serve",
        "--config",
        str(path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=_env(pythonpath),
    )
    assert proc.stderr is not None
    loop = None
    try:
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), timeout=60)).decode()
            assert line, "the gateway exited before serving"
            record = json.loads(line)
            message = str(record.get("message", ""))
            if message.startswith("event loop: "):
                loop = message.removeprefix("event loop: ")
            if message.startswith("serving"):
                port = int(str(record["listen"]).rsplit(":", 1)[1])
                break
        assert await describe_status(port) == grpc.StatusCode.OK
        code = await describe_status(port)  # from the cache
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
    assert loop is not None
    return loop, code


async def test_the_served_gateway_runs_on_the_loop_the_config_names(
    aws: str, tmp_path: Path
) -> None:
    pytest.importorskip("uvloop")
    for choice, expected in (("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")):
        config = config_dict(aws, event_loop=choice)
        assert await _serve(config, tmp_path / f"{choice}.yaml", None) == (
            expected,
            grpc.StatusCode.OK,
        ), choice


async def test_without_uvloop_the_gateway_serves_on_asyncio_or_refuses_to_start(
    aws: str, tmp_path: Path, no_uvloop: Path
) -> None:
    config = config_dict(aws, event_loop="auto")
    assert await _serve(config, tmp_path / "auto.yaml", no_uvloop) == (
        "asyncio",
        grpc.StatusCode.OK,
    )
    path = tmp_path / "uvloop.yaml"
    path.write_text(yaml.safe_dump(config_dict(aws, event_loop="uvloop")))
    proc = await asyncio.create_subprocess_exec(
        CONSOLE_SCRIPT,
        "serve",
        "--config",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(no_uvloop),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("config error: server.event_loop: uvloop is not installed")
    assert "Traceback" not in err.decode() + out.decode()
