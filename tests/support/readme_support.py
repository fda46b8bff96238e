"""What the tests of the README and its guides share: the documents, finding a section, where
each runnable block is run, and running bash off the loop.

The README and every guide under `docs/` hold commands; each fenced block of a runnable kind
(`sh`, `python`, `ts`, `go`, `yaml`) is run by one of the tests named below, or is listed in
SHOWN_NOT_RUN with the reason. `tests/test_docs.py` checks that every block is one or the other,
so a command moved into a guide is still run.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = "README.md"


def documents() -> list[str]:
    """The README and its guides, as paths relative to the repository root."""
    return [README, *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]


def read(document: str) -> str:
    return (ROOT / document).read_text()


# (document, `## ` heading) of the sections whose blocks each test runs, in the order run.
# tests/e2e/test_readme_grpcurl.py: every `sh` block, as a shell session.
GRPCURL_SECTIONS = (
    (README, "## Debugging with grpcurl"),
    ("docs/security-and-isolation.md", "## Shared registries: tenant-owned slices"),
    ("docs/validation.md", "## Validation"),
)
# tests/e2e/test_readme_curl.py: every `sh` block, as a shell session (the README's short
# tour first, then the guide's).
CURL_SECTIONS = (
    (README, "## Calling over HTTP with curl"),
    ("docs/http.md", "## Calling over HTTP with curl"),
)
# tests/clients/test_readme_examples.py, test_typescript_readme.py, test_go_readme.py.
CLIENTS = "docs/clients.md"
PYTHON_SECTION = (CLIENTS, "## Python client")
TYPESCRIPT_SECTION = (CLIENTS, "## TypeScript client")
GO_SECTION = (CLIENTS, "## Go")
# tests/test_readme.py validates every `yaml` block of every document as a gateway config.

# (document, heading) -> why its `sh` blocks are shown but not run here.
SHOWN_NOT_RUN = {
    (README, "## Quick start"): "`make serve` and `make test` are what the suite itself is run by",
    (CLIENTS, "## Python client"): "pip installs from the package index; tests/clients/test_python_"
    "client_package.py installs the package itself",
    (CLIENTS, "## TypeScript client"): "npm ci/pack/publish and buf generate reach registries; "
    "tests/clients/test_typescript_*.py build and pack the package",
}


def section(text: str, heading: str) -> str:
    """A document's section, up to the next `## ` heading."""
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def blocks(text: str, language: str) -> list[str]:
    """The fenced blocks of one language, in order."""
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


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
