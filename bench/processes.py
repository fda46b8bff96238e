"""Server processes of the benchmark: started (pinned with taskset), found ready, measured, stopped.

Server CPU time is read from the kernel (psutil: /proc/<pid>/stat, all threads, and every
child for `--workers`), not from wall time: the load generator shares this machine's cores,
and other work on the machine stretches wall time far more than it changes CPU per call.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

BIN = Path(sys.executable).parent
# The gateway's log line for its HTTP (Connect) listener (service/app/server.py), not a
# "serving" line: those count the gRPC listeners, one per worker.
HTTP_LISTENING = "listening for HTTP"
_READY_TIMEOUT_SECONDS = 90.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for `--workers`, which needs a fixed port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(command: list[str], cpus: str | None) -> list[str]:
    """`command` under `taskset -c CPUS` when pinning is asked for and taskset exists."""
    if cpus is None or shutil.which("taskset") is None:
        return command
    return ["taskset", "-c", cpus, *command]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without the gateway's own variables, with moto's placeholder keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_GATEWAY")}
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        env.pop(name, None)
    env["AWS_ACCESS_KEY_ID"] = "testing"
    env["AWS_SECRET_ACCESS_KEY"] = "testing"  # noqa: S105 - moto's placeholder
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds of one process, all its threads (dead ones too), in nanoseconds' precision.

    The kernel's per-process CPU clock (what clock_getcpuclockid(3) returns) read from
    outside; /proc/<pid>/stat counts in 10 ms ticks, too coarse for a run of a few hundred
    calls. Falls back to psutil where the clock cannot be read.
    """
    clock = ((~pid) << 3) | 2  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    try:
        return time.clock_gettime(clock)
    except OSError:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            return 0.0
        return float(times.user + times.system)


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live children (the workers of `--workers`)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    return process_cpu_seconds(pid) + sum(process_cpu_seconds(c.pid) for c in children)


def core_times() -> list[tuple[float, float]]:
    """Per core, (busy, total) jiffies from /proc/stat: how busy each core was, by anyone."""
    cores = []
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            values = [float(v) for v in fields]
            idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
            total = sum(values[:8])
            cores.append((total - idle, total))
    return cores


def core_busy(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> list[float]:
    """Each core's busy share between two `core_times()` readings."""
    return [
        (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
        for (b0, t0), (b1, t1) in zip(before, after, strict=True)
    ]


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Pin every thread of a process and of its children (taskset -a, recursively).

    sched_setaffinity on a pid moves only that one thread; grpcio's threads keep theirs.
    """
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        for task in Path(f"/proc/{proc.pid}/task").glob("*"):
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except (ProcessLookupError, PermissionError, ValueError):
                continue


@dataclass
class ServerProcess:
    """A server started as a subprocess, its log in a file, found ready by its log line."""

    name: str
    command: list[str]
    log_path: Path
    ready_lines: int = 1  # how many "serving ... listen=" lines mean ready (one per worker)
    env: dict[str, str] = field(default_factory=clean_env)
    # A gateway with an HTTP listener: ready once it has logged that one's port as well.
    http: bool = False
    proc: subprocess.Popen[bytes] | None = None
    ports: list[int] = field(default_factory=list)
    http_port: int = 0
    _log: IO[bytes] | None = None

    def start(self) -> ServerProcess:
        """Start it and wait until it serves; raise with the log's tail if it does not."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            log = self.log_path.read_text(errors="replace")
            ports = _serving_ports(log)
            http = _listen_ports(log, HTTP_LISTENING) if self.http else [0]
            if len(ports) >= self.ready_lines and http:
                self.ports, self.http_port = ports, http[0]
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"{self.name} did not start serving:\n{tail}")

    @property
    def pid(self) -> int:
        """The server's pid (the parent of its workers)."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def address(self) -> str:
        """host:port of the first listener."""
        return f"127.0.0.1:{self.ports[0]}"

    @property
    def http_address(self) -> str:
        """host:port of the HTTP (Connect) listener."""
        assert self.http_port, f"{self.name} has no HTTP listener"
        return f"127.0.0.1:{self.http_port}"

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the server and its workers."""
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        """SIGTERM the server's process group; SIGKILL it if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None


def _serving_ports(log: str) -> list[int]:
    """Ports of the "serving" log lines (gRPC listeners: one per worker)."""
    return _listen_ports(log, "serving")


def _listen_ports(log: str, marker: str) -> list[int]:
    """Ports of the log lines whose message has `marker`: JSON lines (`"listen":
    "host:port"`) or key=value (`listen=host:port`)."""
    ports = []
    for line in log.splitlines():
        if marker not in line or "listen" not in line:
            continue
        listen = ""
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if marker in str(record.get("message", "")):
                listen = str(record.get("listen", ""))
        elif "listen=" in line:
            listen = line.rsplit("listen=", 1)[1].split()[0]
        if listen.rpartition(":")[2].isdigit():
            ports.append(int(listen.rpartition(":")[2]))
    return ports


@dataclass
class AwsStandIn:
    """moto and the counting proxy (`bench.aws_stand_in`) in their own process."""

    cpus: str | None
    log_path: Path
    proc: subprocess.Popen[str] | None = None
    moto_url: str = ""
    proxy_url: str = ""

    def start(self) -> AwsStandIn:
        """Start the process and read its URLs."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            # moto's web server logs every request on stderr: into the file, not the terminal.
            self.proc = subprocess.Popen(
                pinned([sys.executable, "-m", "bench.aws_stand_in"], self.cpus),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=clean_env(),
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the AWS stand-in (moto) did not start")
        urls = json.loads(line)
        self.moto_url, self.proxy_url = urls["moto"], urls["proxy"]
        return self

    @property
    def pid(self) -> int:
        """The stand-in's pid."""
        assert self.proc is not None
        return self.proc.pid

    def control(self, command: str) -> dict[str, Any]:
        """One control request to the proxy: counts, reset, hold?op=..&ms=.."""
        url = f"{self.proxy_url}/__bench/{command}"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            answer: dict[str, Any] = json.loads(response.read())
        return answer

    def stop(self) -> None:
        """Close its stdin (it exits) and wait."""
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
