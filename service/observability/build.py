"""Which build is running: the package's version and, when known, its git commit.

`registry-gateway --version` prints both and `registry_gateway_build_info{version,commit}`
exports them. The commit comes from env `REGISTRY_GATEWAY_COMMIT` (set when the image is
built: there is no .git in an image), else from `git rev-parse` when running from a
checkout of this repository; else it is unknown. Finding it never fails and never waits
long: a missing git, a foreign repository or a slow one all answer "unknown".
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

DISTRIBUTION = "registry-config-gateway"
COMMIT_ENV = "REGISTRY_GATEWAY_COMMIT"
UNKNOWN = "unknown"
# A commit as a label value: a hash (maybe abbreviated, maybe marked dirty) or a tag-like
# name; anything else in the variable is ignored rather than exported.
_COMMIT = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$")
# The repository root, if this package runs from a checkout: service/observability/ -> root.
_ROOT = Path(__file__).resolve().parent.parent.parent
_GIT_SECONDS = 2.0


@functools.cache
def version() -> str:
    """The installed distribution's version (pyproject.toml's), or "unknown"."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN


def commit(environ: Mapping[str, str] | None = None) -> str:
    """The git commit this build is of: the env var, else the checkout's HEAD, else "unknown"."""
    env = os.environ if environ is None else environ
    given = env.get(COMMIT_ENV, "").strip()
    if given and _COMMIT.match(given):
        return given
    return _checkout_commit() or UNKNOWN


def describe(environ: Mapping[str, str] | None = None) -> str:
    """One line for `--version`: `registry-gateway 0.3.0 (commit 0123abcd4567)`."""
    return f"registry-gateway {version()} (commit {commit(environ)})"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=_GIT_SECONDS,
            check=False,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout if done.returncode == 0 else None


@functools.cache
def _checkout_commit() -> str | None:
    # Only this repository's own checkout: an installed package living inside some other
    # repository (a venv in another project) must not report that project's commit.
    if not (_ROOT / ".git").exists() or not (_ROOT / "service" / "__init__.py").exists():
        return None
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != _ROOT:
        return None
    head = _git("rev-parse", "--short=12", "HEAD")
    if head is None or not _COMMIT.match(head.strip()):
        return None
    # Uncommitted changes to tracked files: the commit alone would not be this code.
    changes = _git("status", "--porcelain", "--untracked-files=no")
    return head.strip() + ("-dirty" if changes else "")
