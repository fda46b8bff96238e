"""What the figures were measured on: CPU, cores, load, versions, commit."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

PACKAGES = ("grpcio", "protobuf", "aioboto3", "botocore", "moto", "redis", "psutil", "matplotlib")
ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def _redis_version(url: str) -> str | None:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        version = str(client.info("server").get("redis_version"))
        client.close()
    except (redis.RedisError, OSError):
        return None
    return version


def describe(redis_url: str) -> dict[str, Any]:
    """The machine and software the run used."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["redis-server"] = _redis_version(redis_url)
    load1, load5, _ = os.getloadavg()
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "load_average_1m_5m_at_end": [round(load1, 2), round(load5, 2)],
        "versions": versions,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
