"""The benchmark harness's own arithmetic and parsing (bench/): fast, no servers started."""

from __future__ import annotations

import array
import math
from typing import Any

from bench import report
from bench.loadgen import JobResult, split
from bench.processes import _serving_ports
from bench.profile import summarize
from bench.stats import measure, median_of, percentile


def _result(latencies_ms: list[float], started: float, finished: float, cpu: float) -> JobResult:
    values = array.array("d", [ms / 1000 for ms in latencies_ms])
    return JobResult(
        latencies=values.tobytes(),
        started=started,
        finished=finished,
        codes={"OK": len(latencies_ms)},
        client_cpu_seconds=cpu,
    )


def test_percentile_interpolates_and_handles_empty() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert math.isnan(percentile([], 50))


def test_measure_combines_processes_over_the_shared_timed_window() -> None:
    # Two client processes, 1,000 calls in all, over 2 s from the first start to the last end.
    first = _result([1.0] * 500, started=10.0, finished=11.5, cpu=0.2)
    second = _result([3.0] * 500, started=10.5, finished=12.0, cpu=0.3)
    m = measure([first, second], server_cpu_s=0.25)
    assert m.calls == 1000
    assert m.seconds == 2.0
    assert m.calls_per_s == 500.0
    assert m.p50_ms == 2.0  # between the two halves
    assert m.p99_ms == 3.0
    assert m.server_cpu_per_1k == 0.25
    assert m.server_busy == 0.125
    assert m.client_cpu_per_1k == 0.5
    assert m.server_capacity_per_s == 4000.0
    assert m.codes == {"OK": 1000}


def test_median_of_rounds_takes_each_figure_median_and_sums_counts() -> None:
    rounds = [
        measure([_result([ms] * 100, 0.0, seconds, 0.0)], server_cpu_s=cpu)
        for ms, seconds, cpu in ((1.0, 1.0, 0.1), (2.0, 2.0, 0.5), (9.0, 4.0, 0.2))
    ]
    m = median_of(rounds)
    assert m.rounds == 3
    assert m.calls == 300
    assert m.p50_ms == 2.0
    assert m.calls_per_s == 50.0
    assert m.server_cpu_per_1k == 2.0


def test_split_spreads_the_remainder() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert split(1, 2) == [1, 0]


def test_serving_ports_read_json_and_key_value_log_lines() -> None:
    log = "\n".join(
        [
            '{"time":"t","message":"serving plaintext","listen":"127.0.0.1:41899"}',
            '{"time":"t","message":"draining: health is NOT_SERVING"}',
            "2026-01-01 INFO registry_gateway.server[7] serving plaintext listen=127.0.0.1:5001",
            "bare server serving listen=127.0.0.1:5002",
            "not json {",
        ]
    )
    assert _serving_ports(log) == [41899, 5001, 5002]


def test_profile_summary_counts_parts_and_own_samples() -> None:
    raw = "\n".join(
        [
            "run (asyncio/runners.py:1);handle (/w/service/middleware.py:9);"
            "identify (/w/service/auth/api_keys.py:3) 3",
            "run (asyncio/runners.py:1);Handle._run (asyncio/events.py:80) 5",
            "Thread.run (threading.py:982) 2",
        ]
    )
    text = summarize(raw)
    assert text.startswith("10 samples")
    assert "30.0%  gateway wrapper (service/middleware.py)" in text
    # A stack counts under every part it passes through: the key check runs inside the wrapper.
    assert "30.0%  authentication (service/auth/)" in text
    assert "0.0%  read cache (service/cache/)" in text
    assert "50.0%  Handle._run (asyncio/events.py)" in text


def _doc() -> dict[str, Any]:
    row = {
        "key": "cached.describe",
        "group": "cached",
        "title": "cached read: gateway hit, DescribeRegistry",
        "concurrency": 50,
        "setup": "2 client procs x 2 channels; server cpu0, clients cpu1",
        "client_bound": True,
        "bound": "client",
        "calls": 1000,
        "calls_per_s": 2500.0,
        "p50_ms": 15.0,
        "p90_ms": 20.0,
        "p99_ms": 30.0,
        "server_cpu_per_1k": 0.3,
        "server_busy": 0.75,
        "client_cpu_per_1k": 0.2,
        "curve_ms": [[50, 15.0], [99, 30.0]],
        "upstream": {"ecr:DescribeRegistry": 1},
        "extra": {
            "core_busy": [0.99, 0.95],
            "calls_per_s_vs_baseline": 0.9,
            "cpu_per_call_vs_baseline": 1.5,
            "p99_vs_baseline": 1.1,
        },
    }
    return {
        "mode": "quick",
        "started": "2026-01-01T00:00:00",
        "duration_s": 1.0,
        "machine": {
            "cpu_model": "Test CPU",
            "cores": 2,
            "kernel": "6",
            "load_average_1m_5m_at_end": [1.0, 1.0],
            "versions": {"python": "3.11"},
            "git_commit": "abc",
            "git_dirty": False,
        },
        "setup": {
            "pinned": True,
            "server_cpus": [0],
            "client_cpus": [1],
            "client_processes": 2,
            "channels_per_process": 2,
            "client_bound_below_busy": 0.85,
        },
        "rows": [row],
        "verdicts": [
            {"name": "n", "ok": False, "value": "1.50x", "goal": "<= 1.25x", "kind": "target"}
        ],
    }


def test_report_table_and_page_carry_the_figures_and_verdicts() -> None:
    doc = _doc()
    table = report.table(doc)
    assert "cached read: gateway hit, DescribeRegistry" in table
    assert "0.90x calls/s, 1.50x CPU, 1.10x p99" in table
    assert "client-bound" in table
    assert "other work took 24% of the server's core" in table
    assert "[MISS] n: 1.50x (goal <= 1.25x)" in table
    page = report.markdown(doc, "chart.png")
    assert "Test CPU, 2 cores" in page
    assert "| cached read: gateway hit, DescribeRegistry | 50 | 1000 | 2500 |" in page
    assert "**missed**" in page
