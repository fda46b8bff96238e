"""The benchmark harness's own arithmetic and parsing (bench/): fast, no server processes
started (the attack scenario's client loops run against one in-process grpc.aio server on
loopback, the Connect+JSON read loop against one in-process uvicorn server, at tiny sizes)."""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import copy
import json
import math
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import uvicorn
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from bench import cli, report
from bench.harness import _gateway_config, attacker_summary
from bench.loadgen import (
    AttackJob,
    HttpJob,
    JobResult,
    UnaryJob,
    _run_attack,
    _run_http,
    _run_unary,
    loopback_only,
    split,
    undecodable_request,
    unknown_field_flood,
)
from bench.processes import HTTP_LISTENING, _listen_ports, _serving_ports
from bench.profile import summarize
from bench.stats import measure, median_of, percentile
from service.config import GatewayConfig
from service.gen.v1 import registry_pb2 as pb


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
            '{"time":"t","message":"listening for HTTP/JSON (Connect), plaintext",'
            '"listen":"127.0.0.1:41900"}',
            "2026-01-01 INFO registry_gateway.server[7] listening for HTTP/JSON (Connect), "
            "plaintext listen=127.0.0.1:5003",
            "not json {",
        ]
    )
    # The HTTP listener's line is no "serving" line: those count gRPC listeners (workers).
    assert _serving_ports(log) == [41899, 5001, 5002]
    assert _listen_ports(log, HTTP_LISTENING) == [41900, 5003]


def test_gateway_config_with_http_is_a_valid_config() -> None:
    config = GatewayConfig.model_validate(_gateway_config("http://127.0.0.1:1", "k", http=True))
    assert config.http.listen == "127.0.0.1:0"
    assert (
        GatewayConfig.model_validate(_gateway_config("http://127.0.0.1:1", "k")).http.listen is None
    )


def test_profile_summary_counts_parts_and_own_samples() -> None:
    raw = "\n".join(
        [
            "run (asyncio/runners.py:1);handle (/w/service/rpc/interceptor.py:9);"
            "identify (/w/service/auth/api_keys.py:3) 3",
            "run (asyncio/runners.py:1);Handle._run (asyncio/events.py:80) 5",
            "Thread.run (threading.py:982) 2",
        ]
    )
    text = summarize(raw)
    assert text.startswith("10 samples")
    assert "30.0%  gateway wrapper (service/rpc/interceptor.py)" in text
    # A stack counts under every part it passes through: the key check runs inside the wrapper.
    assert "30.0%  authentication (service/auth/)" in text
    assert "0.0%  read cache (service/state/cache/)" in text
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


# ---- bystander under attack -------------------------------------------------------------


def test_attack_payloads_fit_the_size_and_are_what_they_claim() -> None:
    undecodable = undecodable_request(1001)
    assert 990 < len(undecodable) <= 1001
    for message in (pb.DescribeRegistryRequest, pb.PutReplicationConfigurationRequest):
        with pytest.raises(DecodeError):
            message.FromString(undecodable)

    flood = unknown_field_flood(64)
    assert len(flood) == 64
    request = pb.PutReplicationConfigurationRequest.FromString(flood)
    assert request.validate_only
    assert request.HasField("replication_configuration")
    assert not request.replication_configuration.rules
    unknown = UnknownFieldSet(request)
    assert len(unknown) == (64 - 4) // 3
    assert {unknown[i].field_number for i in range(len(unknown))} == {127}


def test_attacks_go_to_loopback_only() -> None:
    for target in ("127.0.0.1:5001", "127.3.4.5:1", "[::1]:5001", "localhost:5001"):
        assert loopback_only(target) == target
    for target in ("10.0.0.1:5001", "[2001:db8::1]:443", "example.com:443", "5001"):
        with pytest.raises(ValueError, match="loopback"):
            loopback_only(target)


async def _tiny_gateway() -> tuple[grpc.aio.Server, int, list[tuple[str, int]]]:
    """Answers DescribeRegistry with credentials (a hit); refuses everything else."""
    seen: list[tuple[str, int]] = []

    def handler(rpc: str) -> Any:
        async def handle(request: bytes, context: Any) -> bytes:
            seen.append((rpc, len(request)))
            if not any(k == "authorization" for k, _ in context.invocation_metadata()):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no credentials")
            if rpc != "DescribeRegistry":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown fields")
            context.set_trailing_metadata((("x-cache", "hit"),))
            return b""

        return grpc.unary_unary_rpc_method_handler(handle)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "ecr.registry.v1.RegistryConfigService",
                {rpc: handler(rpc) for rpc in ("DescribeRegistry", "PutReplicationConfiguration")},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, seen


async def _go() -> None:
    return None


async def test_attack_scenario_client_loops_at_tiny_sizes() -> None:
    server, port, seen = await _tiny_gateway()
    target = f"127.0.0.1:{port}"
    service = "/ecr.registry.v1.RegistryConfigService/"
    try:
        attacker = AttackJob(
            target=target,
            undecodable_method=service + "DescribeRegistry",
            flood_method=service + "PutReplicationConfiguration",
            flood_metadata=(("authorization", "Bearer attacker"),),
            message_bytes=256,
            seconds=5.0,
            max_calls=4,  # the count ends it, long before the time
            timeout=5.0,
        )
        bystander = UnaryJob(
            targets=(target,),
            method=service + "DescribeRegistry",
            request=b"",
            metadata=(("authorization", "Bearer bystander"),),
            calls=10,
            concurrency=2,
            channels=1,
            warmup=2,
            trailers=True,
            rate=200.0,
            timeout=5.0,
        )
        attacked, read = await asyncio.gather(
            _run_attack(attacker, _go), _run_unary(bystander, _go)
        )
        with pytest.raises(ValueError, match="loopback"):
            await _run_attack(AttackJob(**{**attacker.__dict__, "target": "10.0.0.1:1"}), _go)
    finally:
        await server.stop(None)

    assert attacked.codes == {"undecodable UNAUTHENTICATED": 4, "flood INVALID_ARGUMENT": 4}
    sizes = {rpc: size for rpc, size in seen if size > 0}
    assert 250 <= sizes["DescribeRegistry"] <= 256
    assert sizes["PutReplicationConfiguration"] == 256
    summary = attacker_summary([attacked], seconds=1.0)
    assert {k: v["calls"] for k, v in summary.items()} == {"undecodable": 4, "flood": 4}
    assert summary["flood"]["codes"] == {"INVALID_ARGUMENT": 4}
    assert summary["undecodable"]["calls_per_s"] == 4.0
    # The bystander: its timed calls only (warm-up dropped), paced, every one a hit.
    assert read.codes == {"OK": 10}
    assert read.cache == {"hit": 10}
    assert len(read.latency_list()) == 10
    assert read.finished - read.started >= 9 / 200


# ---- cached reads over Connect+JSON ------------------------------------------------------

DESCRIBE_PATH = "/ecr.registry.v1.RegistryConfigService/DescribeRegistry"


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers (pytest keeps its own)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def _tiny_connect_gateway() -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """Answers DescribeRegistry as the gateway's HTTP listener does: 401 without credentials,
    else 200 JSON with `x-cache` (a miss the first time, hits after)."""
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        seen.append(
            {
                "method": scope["method"],
                "path": scope["path"],
                "headers": headers,
                "body": body,
                "peer": tuple(scope["client"]),
            }
        )
        if "authorization" not in headers:
            answer = json.dumps({"code": "unauthenticated", "message": "no credentials"})
            extra: list[tuple[bytes, bytes]] = []
            status = 401
        else:
            answer = json.dumps({"registryId": "123456789012"})
            extra = [(b"x-cache", b"miss" if len(seen) == 1 else b"hit")]
            status = 200
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), *extra],
            }
        )
        await send({"type": "http.response.body", "body": answer.encode()})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="off", loop="none", log_config=None, access_log=False, http="h11"
    )
    server = _QuietServer(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), task.result()
            await asyncio.sleep(0.005)
        yield port, seen
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_connect_read_loop_at_tiny_sizes() -> None:
    async with _tiny_connect_gateway() as (port, seen):
        url = f"http://127.0.0.1:{port}{DESCRIBE_PATH}"
        job = HttpJob(
            url=url,
            body=b"{}",
            headers=(("authorization", "Bearer bench"),),
            calls=12,
            concurrency=3,
            warmup=4,
            timeout=5.0,
        )
        read = await _run_http(job, _go)
        stranger = await _run_http(
            HttpJob(url=url, body=b"{}", headers=(), calls=2, concurrency=1, timeout=5.0), _go
        )
    # Timed calls only: the first call on each connection and the warm-up (the miss) dropped.
    assert read.codes == {"OK": 12}
    assert read.cache == {"hit": 12}
    assert len(read.latency_list()) == 12
    assert read.finished >= read.started
    calls = seen[: 3 + 4 + 12]
    assert {c["method"] for c in calls} == {"POST"}
    assert {c["path"] for c in calls} == {DESCRIBE_PATH}
    assert {c["body"] for c in calls} == {b"{}"}
    assert {c["headers"]["content-type"] for c in calls} == {"application/json"}
    assert {c["headers"]["authorization"] for c in calls} == {"Bearer bench"}
    # Keep-alive: one connection per call in flight, each kept for every call.
    assert len({c["peer"] for c in calls}) == 3
    # A refusal is counted by its status, with what the server said.
    assert stranger.codes == {"HTTP 401": 2}
    assert stranger.cache == {"none": 2}
    assert "no credentials" in stranger.details["HTTP 401"]


async def test_connect_read_loop_counts_calls_that_get_no_answer() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        job = HttpJob(
            url=f"http://127.0.0.1:{port}{DESCRIBE_PATH}",
            body=b"{}",
            headers=(),
            calls=3,
            concurrency=2,
            timeout=5.0,
        )
        result = await _run_http(job, _go)
    assert result.codes == {"ConnectError": 3}
    assert "ConnectError" in result.details
    assert len(result.latency_list()) == 3


def _http_doc() -> dict[str, Any]:
    doc = _doc()
    grpc_row = doc["rows"][0]
    row = copy.deepcopy(grpc_row)
    row.update(
        key="http.describe",
        group="http",
        title="cached read, Connect+JSON: gateway hit, DescribeRegistry",
        setup="2 client procs x 25 keep-alive HTTP/1.1 connections; server cpu0, clients cpu1",
        bound="server",
        client_bound=False,
        calls_per_s=1250.0,
        p50_ms=30.0,
        p99_ms=45.0,
        server_cpu_per_1k=0.6,
        server_busy=0.95,
        upstream={},
    )
    row["extra"] = {
        "core_busy": [0.99, 0.7],
        "response_bytes": 120,
        "grpc_row": "cached.describe",
        "calls_per_s_vs_grpc": 0.5,
        "cpu_per_call_vs_grpc": 2.0,
        "p50_vs_grpc": 2.0,
        "p99_vs_grpc": 1.5,
    }
    grpc_row["extra"]["response_bytes"] = 60
    doc["rows"].append(row)
    return doc


def test_connect_row_in_table_and_page() -> None:
    doc = _http_doc()
    table = report.table(doc)
    assert "cached read, Connect+JSON: gateway hit, DescribeRegistry" in table
    assert "0.50x calls/s, 2.00x CPU, 1.50x p99 vs gRPC hit" in table
    page = report.markdown(doc, "chart.png")
    assert "## Cached reads over HTTP/1.1 + JSON (Connect)" in page
    assert "| gRPC (protobuf) | 2500 | 15.00 | 30.00 | 300 | 75% | client | 60 |" in page
    assert "| Connect (JSON) | 1250 | 30.00 | 45.00 | 600 | 95% | server | 120 |" in page
    assert "**Connect+JSON / gRPC: 0.50x calls/s, 2.00x server CPU per call" in page
    # No Connect row (an older run's results): no section.
    assert "## Cached reads over HTTP" not in report.markdown(_doc(), "chart.png")


def _attack_doc() -> dict[str, Any]:
    doc = _doc()
    doc["scenarios"] = ["attack"]
    doc["started"] = "2026-01-02T00:00:00"
    base = doc["rows"][0]
    rows = []
    for key, title, p99, extra in (
        ("attack.quiet", "bystander: cached DescribeRegistry, no attack", 2.0, {}),
        (
            "attack.attacked",
            "bystander: cached DescribeRegistry, under attack",
            3000.0,
            {
                "p99_vs_no_attack": 1500.0,
                "p99_goal": 2.0,
                "message_bytes": 4194304,
                "attacker": {
                    "undecodable": {
                        "calls": 2,
                        "calls_per_s": 0.8,
                        "codes": {"UNAUTHENTICATED": 2},
                        "p50_ms": 2900.0,
                        "p99_ms": 2950.0,
                        "max_ms": 2950.0,
                    }
                },
            },
        ),
    ):
        row = copy.deepcopy(base)
        row.update(
            key=key,
            group="attack",
            title=title,
            p99_ms=p99,
            max_ms=p99,
            rounds=1,
            scenario="attack",
        )
        row["extra"] = {"rate_per_s": 250.0, "p99_ms_per_round": [p99], **extra}
        row["codes"] = {"OK": 950, "CANCELLED": 50} if extra else {"OK": 1000}
        rows.append(row)
    doc["rows"] = rows
    doc["verdicts"] = [
        {
            "name": "bystander under attack: cached-read p99 vs no attack",
            "ok": False,
            "value": "1500.00x",
            "goal": "<= 2.00x",
            "kind": "target",
            "scenario": "attack",
        }
    ]
    doc["setup"]["gateway_source"] = {"rev": "HEAD", "commit": "cd4c7c13b9da", "path": "/x"}
    return doc


def test_attack_rows_in_table_and_page() -> None:
    doc = _attack_doc()
    table = report.table(doc)
    assert "250/s" in table  # open loop: the rate, not a concurrency
    assert "1500.00x p99 vs no attack" in table
    assert "attacker undecodable: 2 calls (UNAUTHENTICATED 2)" in table
    page = report.markdown(doc, "chart.png")
    assert "## Bystander under attack" in page
    assert "**p99 under attack / p99 alone: 1500.00x** (goal <= 2.00x: missed)" in page
    assert "| under attack | 1000 | CANCELLED 50, OK 950 | 15.00 | 3000.00 |" in page
    assert "| undecodable bytes, no credentials | 2 | 0.8 | UNAUTHENTICATED 2 |" in page
    assert "service/` of `HEAD` (cd4c7c13b9da" in page


def test_merge_puts_a_partial_run_in_place_of_its_scenarios_rows() -> None:
    base = _doc()
    part = _attack_doc()
    merged = report.merge(base, part)
    assert [r["key"] for r in merged["rows"]] == [
        "cached.describe",
        "attack.quiet",
        "attack.attacked",
    ]
    assert len(merged["verdicts"]) == 2
    assert merged["started"] == base["started"]  # the full run's, not the part's
    assert merged["merged"][0]["scenarios"] == ["attack"]
    again = report.merge(merged, part)  # a second merge replaces, never adds
    assert [r["key"] for r in again["rows"]] == [r["key"] for r in merged["rows"]]
    assert len(again["verdicts"]) == 2 and len(again["merged"]) == 1
    page = report.markdown(again, "chart.png")
    assert "- **Merged in**: the attack rows and verdicts come from a later quick run" in page
    assert base == _doc()  # the inputs are left alone
    with pytest.raises(ValueError):
        report.merge(base, {**part, "scenarios": []})


def test_partial_runs_never_write_the_full_runs_results_or_page() -> None:
    assert cli._default_out(False, None).name == "latest.json"
    assert cli._default_out(True, None).name == "quick.json"
    assert cli._default_out(False, {"attack"}).name == "full-attack.json"
    assert cli._default_out(True, {"storm", "reads"}).name == "quick-reads+storm.json"

    def problem(only: set[str] | None, **opts: Any) -> str | None:
        defaults = {"merge": False, "quick": False, "docs": None}
        return cli._partial_problem(argparse.Namespace(**{**defaults, **opts}), only)

    assert problem({"attack"}) is None
    assert problem({"attack"}, docs=True) is not None
    assert problem({"reads"}, merge=True) is not None
    assert problem(None, merge=True) is not None
    assert problem({"attack"}, merge=True, quick=True) is not None
