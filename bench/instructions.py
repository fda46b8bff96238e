"""`python -m bench.instructions`: instructions per cached read of the gateway's own Python,
a figure this shared machine's load does not move.

CPU time per call moves with whatever else runs on the machine (every figure of the paired
scenario drifts 2x between runs); the number of instructions the CPU executes for the same
work does not. This counts them with valgrind's callgrind (`perf stat` needs a
perf_event_paranoid this machine does not allow): one process builds the real wrapper and
servicer (bench/hotpath.py's build, a cached DescribeRegistry), warms up, then makes N
calls; it runs twice, with N and with 0 calls, and the difference divided by N is the
instructions of one call (start-up and warm-up cancel out). What grpc's C core and the
event loop do per call is not in it (the stand-in context has no network): the paired
scenario measures those. `--tree DIR` counts DIR/service/ (e.g. a copy of the tree before
a change) instead of this tree's. Each run takes a few minutes under valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.common import ROOT

WARMUP = 2000


async def _calls(n: int) -> None:
    from bench.hotpath import KEY, StandInContext, _build
    from service.gen.v1 import registry_pb2 as pb

    handler, _servicer, _interceptor, _gateway = await _build()
    metadata = (("authorization", f"Bearer {KEY}"), ("user-agent", "grpc-python/1.85"))
    context = StandInContext(metadata, pb.DescribeRegistryRequest().SerializeToString())
    handle = handler.stream_unary
    for _ in range(WARMUP + n):
        await handle(None, context)


def _instructions(calls: int, tree: Path, out: Path) -> int:
    """Instructions callgrind counted for a process making `calls` cached reads with
    `tree`'s service package (imported first, so this tree's `bench` cannot shadow it, nor
    `tree`'s bench this one's)."""
    bootstrap = (
        f"import sys; sys.path.insert(0, {str(tree)!r}); import service; "
        f"sys.path.insert(0, {str(ROOT)!r}); from bench.instructions import main; "
        f"sys.exit(main(['--run', '{calls}']))"
    )
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-c",
            bootstrap,
        ],
        cwd=out.parent,
        check=True,
        capture_output=True,
        timeout=3600,
    )
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def main(argv: Sequence[str] | None = None) -> int:
    """Print instructions per cached read (or, with --run N, just make N calls)."""
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument("--tree", type=Path, default=ROOT, help="count DIR/service/")
    parser.add_argument("--run", type=int, metavar="N", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.run is not None:
        asyncio.run(_calls(opts.run))
        return 0
    tree = opts.tree.resolve()
    with tempfile.TemporaryDirectory() as scratch:
        base = _instructions(0, tree, Path(scratch) / "none.out")
        total = _instructions(opts.calls, tree, Path(scratch) / "calls.out")
    per_call = (total - base) / opts.calls
    print(f"{tree}: {per_call:,.0f} instructions per cached read ({opts.calls} calls)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
