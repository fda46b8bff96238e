"""`serve --workers N` serves both listeners in every worker: the HTTP listener shares its
port (SO_REUSEPORT) as the gRPC one does, and one SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import httpx
import yaml

from tests.e2e.test_workers import free_port
from tests.http.support import SERVICE
from tests.support.helpers import KEY, config_dict
from tests.support.processes import serving_event

BIN = Path(sys.executable).parent


async def test_every_worker_serves_http_too(aws: str, tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    path = tmp_path / "gateway.yaml"
    raw = config_dict(aws)
    raw["listen"] = f"127.0.0.1:{port}"
    raw["http"] = {"listen": f"127.0.0.1:{http_port}"}
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
    stderr = proc.stderr
    lines: list[str] = []

    async def read(until: int) -> None:
        while len(lines) < until:
            line = (await asyncio.wait_for(stderr.readline(), timeout=60)).decode()
            assert line, "the workers exited"
            lines.append(line)

    try:
        workers: set[int] = set()
        while len(workers) < 2:
            await read(len(lines) + 1)
            event = serving_event(lines[-1])
            if event is not None:
                workers.add(event[0])
        url = f"http://127.0.0.1:{http_port}/{SERVICE}/DescribeRegistry"
        json_type = {"content-type": "application/json"}
        answered: list[int] = []
        for _ in range(24):
            # A connection each, so the kernel spreads them over the workers.
            async with httpx.AsyncClient() as http:
                ok = await http.post(
                    url, content=b"{}", headers={**json_type, "authorization": f"Bearer {KEY}"}
                )
                bad = await http.post(
                    url, content=b"{}", headers={**json_type, "authorization": "Bearer nope"}
                )
            answered += [ok.status_code, bad.status_code]
        assert set(answered) == {200, 401}
        # Every failed authentication is logged (within a peer's budget), with its pid.
        seen: set[int] = set()
        for _ in range(200):
            seen = {
                record["pid"]
                for record in map(json.loads, filter(str.strip, lines))
                if record.get("reason") == "INVALID_CREDENTIALS"
            }
            if len(seen) == 2 or len([r for r in lines if "INVALID_CREDENTIALS" in r]) >= 24:
                break
            await read(len(lines) + 1)
        assert seen == workers
    finally:
        proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
