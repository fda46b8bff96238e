"""`python -m bench --profile`: where the server CPU of a cached read goes (py-spy).

Attaches py-spy (Python frames, `--nonblocking`: the server is never paused) to the gateway
and to the bare baseline in turn while each serves the cached-read load, then summarizes
the samples of threads that were running: the share under each part of the gateway (the
wrapper, the servicer, the cache, validation, ...), and the functions with the most samples,
inclusive and of their own. grpcio's Cython and C work shows under the Python frame that
called it (the event loop's `Handle._run`, the poller thread's `Thread.run`). The raw
stacks stay in bench/.scratch/ (`py-spy` raw format: `frame;frame;... count`); the
summaries go to bench/results/profile-*.txt.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from bench.common import DESCRIBE, ROOT, Plan
from bench.harness import running
from bench.processes import BIN

RESULTS = ROOT / "bench" / "results"
RATE = 997  # samples/s; prime, so it does not beat against periodic work
# Parts of the call path, by where a frame's code lives; the first match names a frame.
PARTS = (
    ("gateway wrapper (service/rpc/interceptor.py)", "service/rpc/interceptor.py"),
    ("servicer (service/rpc/servicer.py)", "service/rpc/servicer.py"),
    ("validation (service/registry/rpcs/validation.py)", "service/registry/rpcs/validation.py"),
    ("target authorization (service/auth/targets.py)", "service/auth/targets.py"),
    ("authentication (service/auth/)", "service/auth/"),
    ("read cache (service/state/cache/)", "service/state/cache/"),
    ("operations (service/registry/writes/operations.py)", "service/registry/writes/operations.py"),
    ("logging", "logging/"),
    ("protobuf", "google/protobuf"),
)
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def summarize(raw: str, top: int = 25) -> str:
    """A text summary of py-spy raw output: self time by function, time under each part."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[_name(frames[-1])] += count
        for name in {_name(frame) for frame in frames}:
            inclusive[name] += count
        seen = {part for frame in frames for part in _parts(frame)}
        for part in seen:
            under[part] += count
    if total == 0:
        return "no samples\n"
    lines = [
        f"{total} samples (threads running Python or native code they called)",
        "",
        "share of samples under:",
    ]
    for name, pattern in PARTS:
        lines.append(f"  {under[pattern] / total:6.1%}  {name}")
    lines += ["", f"top {top} functions by inclusive samples:"]
    for name, count in inclusive.most_common(top):
        lines.append(f"  {count / total:6.1%}  {name}")
    lines += ["", f"top {top} functions by own samples:"]
    for name, count in own.most_common(top):
        lines.append(f"  {count / total:6.1%}  {name}")
    return "\n".join(lines) + "\n"


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    return f"{match.group('func')} ({match.group('file')})"


def _parts(frame: str) -> Iterable[str]:
    match = _FRAME.match(frame)
    path = match.group("file") if match else frame
    for _, pattern in PARTS:
        if pattern in path:
            yield pattern
            return


def _record(pid: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(BIN / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(RATE),
            "--format",
            "raw",
            "--nonblocking",
            "--full-filenames",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def profile(plan: Plan, *, pin: bool = True) -> int:
    """Profile gateway and baseline under the cached DescribeRegistry load; print summaries."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with running(plan, pin=pin, only=set()) as run:
        run.start()
        bare = run.start_bare()
        for name, server in (("gateway", run.gateway), ("baseline", bare)):
            raw = run.scratch / f"profile-{name}.raw"
            jobs = run.unary_jobs(
                (server.address,),
                DESCRIBE,
                plan.read_calls * 2,
                plan.read_concurrency,
                warmup=plan.warmup,
            )
            spy = _record(server.pid, raw)
            try:
                load = run.load(jobs, [server.pid])
            finally:
                spy.send_signal(signal.SIGINT)
                _, err = spy.communicate(timeout=60)
            if not raw.exists():
                print(f"py-spy wrote nothing for {name}: {err.decode(errors='replace')[-500:]}")
                return 1
            text = (
                f"# {name}: cached DescribeRegistry, {load.m.calls} calls at "
                f"{plan.read_concurrency} concurrent; {load.m.server_cpu_per_1k * 1000:.0f} us "
                f"server CPU per call (under py-spy)\n" + summarize(raw.read_text())
            )
            out = RESULTS / f"profile-{name}.txt"
            out.write_text(text)
            print(text)
            print(f"wrote {out.relative_to(ROOT)} (raw stacks: {raw.relative_to(ROOT)})\n")
    return 0
