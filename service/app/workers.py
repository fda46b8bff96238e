"""`--workers N`: N gateway processes on one port (SO_REUSEPORT), one event loop each.

Python serves on one core per process. The children are forked before any gRPC object
exists (grpcio does not survive a fork with live channels or servers); the kernel spreads
connections over them. The parent only forwards signals and waits.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType


def run_workers(count: int, work: Callable[[int], int]) -> int:
    """Run `work(index)` in `count` forked processes; return the worst exit status."""
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_child, args=(work, index), name=f"registry-gateway-{index}")
        for index in range(count)
    ]

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    # SIGTERM and SIGHUP reach only the parent (kill, Kubernetes): pass them on. Ctrl-C
    # already reaches the whole process group, so forwarding SIGINT would deliver it twice
    # (and a second signal means "stop at once").
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for child in children:
        child.start()
    for child in children:
        child.join()
    codes = [child.exitcode or 0 for child in children]
    return max((abs(code) for code in codes), default=0)


def _child(work: Callable[[int], int], index: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    sys.exit(work(index))
