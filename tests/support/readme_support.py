"""What the README-command tests share: finding a section, and running bash off the loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path


def section(text: str, heading: str) -> str:
    """A README section, up to the next `## ` heading."""
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


@dataclass(frozen=True)
class Ran:
    """What one bash run left behind."""

    returncode: int
    stdout: str
    stderr: str


async def bash(script: str, cwd: Path, env: dict[str, str]) -> Ran:
    """Run a bash script without blocking the loop the in-process gateway serves from."""
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())
