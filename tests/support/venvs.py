"""Throwaway venvs for the install tests, made cheaply and reused while their lock holds.

`locked_venv` installs a hashed lock into a clean venv once per lock: the lock's digest is in
the venv's name (.venv-tests/NAME-DIGEST) and a stamp file marks it complete, so a warm run
reuses it and a changed lock makes a new one. No pip inside (the dev venv's pip installs
into it with `--python`), the pip cache, no byte-compiling. `layered_venv` is a fresh venv
per test that sees a locked venv's packages through a .pth file and installs its own package
(the wheel under test) into itself: the cached venv is never changed, so concurrent runs do
not meet, and pip still counts the locked packages as installed when it resolves.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".venv-tests"
STAMP = ".installed"


def pip(*args: str | Path) -> None:
    """The dev venv's pip; fails the test with pip's output."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"pip {' '.join(map(str, args))}:\n{done.stdout}{done.stderr}"


def site_packages(home: Path) -> Path:
    relative = Path(sysconfig.get_path("purelib")).relative_to(sys.prefix)
    return home / relative


def locked_venv(name: str, lock: Path) -> Path:
    """A venv holding exactly `lock` (hash-checked), made unless one for this lock exists."""
    home = CACHE / f"{name}-{hashlib.sha256(lock.read_bytes()).hexdigest()[:16]}"
    if (home / STAMP).exists():
        return home
    CACHE.mkdir(exist_ok=True)
    # Made aside and renamed into place: another run may be making the same one.
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=CACHE))
    venv.create(scratch, with_pip=False, symlinks=True)
    python = scratch / "bin" / "python"
    pip("--python", python, "install", "--no-compile", "--require-hashes", "-r", lock)
    (scratch / STAMP).write_text(lock.read_text())
    for stale in CACHE.glob(f"{name}-*"):  # made for an older lock
        shutil.rmtree(stale, ignore_errors=True)
    try:
        scratch.rename(home)
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
    return home


def layered_venv(base: Path, home: Path) -> Path:
    """A new venv at `home` that also sees `base`'s packages; returns its python."""
    venv.create(home, with_pip=False, symlinks=True)
    (site_packages(home) / "_locked_base.pth").write_text(f"{site_packages(base.resolve())}\n")
    return home / "bin" / "python"
