"""`serve --workers N`: N processes on one port, all serving, all stopped by one SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import grpc
import yaml

from tests.conftest import GatewayFactory
from tests.support.helpers import config_dict, describe_status
from tests.support.processes import serving_event

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_two_workers_share_one_port_and_stop_together(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path
) -> None:
    port = free_port()
    path = tmp_path / "gateway.yaml"
    raw = config_dict(aws)
    raw["listen"] = f"127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(raw))
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "registry-gateway"),
        "serve",
        "--config",
        str(path),
        "--workers",
        "2",
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "PATH": ""},
    )
    assert proc.stderr is not None
    try:
        pids: set[int] = set()
        while len(pids) < 2:
            line = (await asyncio.wait_for(proc.stderr.readline(), timeout=60)).decode()
            assert line, "the workers exited before serving"
            event = serving_event(line)
            if event is not None:
                assert event[1] == port
                pids.add(event[0])
        assert proc.pid not in pids  # the parent only supervises
        codes = await asyncio.gather(*(describe_status(port) for _ in range(20)))
        assert set(codes) == {grpc.StatusCode.OK}
    finally:
        proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
    for pid in pids:  # every worker is gone
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
