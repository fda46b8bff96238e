"""A throw-away redis-server of a test's own that can be paused (SIGSTOP) and resumed
(SIGCONT): a Redis that accepts connections but answers nothing, as a long fork, a slow
script or a partition looks to its clients. The machine's shared Redis is never paused."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.e2e.test_redis_down import OwnRedis


class PausableRedis(OwnRedis):
    """OwnRedis (tests/e2e/test_redis_down.py) with pause and resume."""

    def _signal(self, sig: signal.Signals) -> None:
        process = self._process
        assert process is not None and process.poll() is None, "the redis-server is not running"
        os.kill(process.pid, sig)

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, nothing is answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: it reads what was sent meanwhile and answers again."""
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # a stopped process would not see SIGTERM
        super().stop()


@contextmanager
def pausable_redis(workdir: Path) -> Iterator[PausableRedis]:
    """A started PausableRedis, stopped (resumed first) at the end."""
    binary = shutil.which("redis-server")
    # A failure, not a skip (as tests/support/redis_server.py): a missing Redis must not pass CI.
    assert binary, "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)"
    server = PausableRedis(binary, workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
