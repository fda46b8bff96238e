"""Figures of one measured load: calls/s, latency percentiles, CPU per 1,000 calls."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.loadgen import JobResult

# The points of the latency curve kept per scenario (for the chart).
CURVE_PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 98, 99, 99.5, 99.9)
# Under this share of one core busy, the server was not the bottleneck: the figure is
# bound by the client (or by latency), and its calls/s says little about the server.
SERVER_BOUND_BUSY = 0.85


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; nan when there is no value."""
    if not sorted_values:
        return math.nan
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclass
class Measurement:
    """One scenario run (or the median of several rounds of it)."""

    calls: int
    seconds: float
    calls_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_s: float  # CPU seconds of the server processes during the timed part
    server_cpu_per_1k: float  # server CPU seconds per 1,000 calls
    server_busy: float  # server CPU seconds / wall seconds (1.0 = one core busy)
    client_cpu_per_1k: float  # the load generator's CPU seconds per 1,000 calls
    codes: dict[str, int]
    cache: dict[str, int] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)  # first message per failed code
    curve_ms: list[tuple[float, float]] = field(default_factory=list)
    rounds: int = 1

    @property
    def server_capacity_per_s(self) -> float:
        """Calls/s one busy server core would sustain at this CPU per call."""
        return 1000 / self.server_cpu_per_1k if self.server_cpu_per_1k > 0 else math.inf

    def to_json(self) -> dict[str, Any]:
        """A plain dict (rounded) for results JSON."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = round(value, 4)
        data["curve_ms"] = [[q, round(v, 4)] for q, v in self.curve_ms]
        data["server_capacity_per_s"] = round(self.server_capacity_per_s, 1)
        return data


def measure(results: Sequence[JobResult], server_cpu_s: float) -> Measurement:
    """Combine the client processes' results of one timed load with the server's CPU."""
    latencies = sorted(v for r in results for v in r.latency_list())
    started = min(r.started for r in results)
    finished = max(r.finished for r in results)
    codes: Counter[str] = Counter()
    cache: Counter[str] = Counter()
    details: dict[str, str] = {}
    for r in results:
        codes.update(r.codes)
        cache.update(r.cache)
        for code, text in r.details.items():
            details.setdefault(code, text)
    client_cpu = sum(r.client_cpu_seconds for r in results)
    return measured(
        latencies,
        max(finished - started, 1e-9),
        server_cpu_s,
        dict(codes),
        details,
        client_cpu_s=client_cpu,
        cache=dict(cache),
    )


def measured(
    latencies: Sequence[float],
    seconds: float,
    server_cpu_s: float,
    codes: dict[str, int],
    details: dict[str, str],
    *,
    client_cpu_s: float = math.nan,
    cache: dict[str, int] | None = None,
) -> Measurement:
    """The figures of one timed load: its sorted latencies (seconds), how long it took and
    what the server spent (the client's CPU: nan where the load ran in the bench itself)."""
    seconds = max(seconds, 1e-9)
    calls = len(latencies)
    per_1k = 1000 / calls if calls else math.nan
    return Measurement(
        calls=calls,
        seconds=seconds,
        calls_per_s=calls / seconds,
        p50_ms=percentile(latencies, 50) * 1000,
        p90_ms=percentile(latencies, 90) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        max_ms=(latencies[-1] if latencies else math.nan) * 1000,
        server_cpu_s=server_cpu_s,
        server_cpu_per_1k=server_cpu_s * per_1k,
        server_busy=server_cpu_s / seconds,
        client_cpu_per_1k=client_cpu_s * per_1k,
        codes=codes,
        cache={} if cache is None else cache,
        details=details,
        curve_ms=[(q, percentile(latencies, q) * 1000) for q in CURVE_PERCENTILES],
    )


def median_of(rounds: Sequence[Measurement]) -> Measurement:
    """Each figure's median over rounds (robust to one round disturbed by other work)."""
    if len(rounds) == 1:
        return rounds[0]

    def med(name: str) -> float:
        return float(statistics.median(getattr(r, name) for r in rounds))

    # The curve of the round whose calls/s is the median one.
    middle = sorted(rounds, key=lambda r: r.calls_per_s)[len(rounds) // 2]
    codes: Counter[str] = Counter()
    cache: Counter[str] = Counter()
    details: dict[str, str] = {}
    for r in rounds:
        codes.update(r.codes)
        cache.update(r.cache)
        for code, text in r.details.items():
            details.setdefault(code, text)
    return Measurement(
        calls=sum(r.calls for r in rounds),
        seconds=sum(r.seconds for r in rounds),
        calls_per_s=med("calls_per_s"),
        p50_ms=med("p50_ms"),
        p90_ms=med("p90_ms"),
        p99_ms=med("p99_ms"),
        max_ms=max(r.max_ms for r in rounds),
        server_cpu_s=sum(r.server_cpu_s for r in rounds),
        server_cpu_per_1k=med("server_cpu_per_1k"),
        server_busy=med("server_busy"),
        client_cpu_per_1k=med("client_cpu_per_1k"),
        codes=dict(codes),
        cache=dict(cache),
        details=details,
        curve_ms=middle.curve_ms,
        rounds=len(rounds),
    )
