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

from bench import cli, edge_attacks, many_accounts, report
from bench.common import EDGE_SCENARIOS, SELF_CONTAINED, _gateway_config, attacker_summary
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
from service.config import GatewayConfig, ServerConfig
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


# ---- bystander under edge attacks (bench/edge_attacks.py) ---------------------------------


def test_edge_scenarios_are_named_self_contained_and_left_out_of_quick_runs() -> None:
    assert set(EDGE_SCENARIOS) == set(edge_attacks.ATTACKS)
    assert set(EDGE_SCENARIOS) <= set(cli.SCENARIOS)
    assert set(EDGE_SCENARIOS) <= SELF_CONTAINED
    assert cli._default_out(True, {"edge-json"}).name == "quick-edge-json.json"
    merge = argparse.Namespace(merge=True, quick=False, docs=None)
    assert cli._partial_problem(merge, {"edge-body", "edge-idle"}) is None
    for name in EDGE_SCENARIOS:
        assert set(edge_attacks.EDGE_PLANS) == {"quick", "full"}
        job = edge_attacks.attacker_job(name, "127.0.0.1:1", "127.0.0.1:2", "k", 1.0)
        assert callable(job.run)


def test_edge_gateway_config_is_valid_with_fewer_slots_than_the_attacks() -> None:
    config = GatewayConfig.model_validate(
        edge_attacks.edge_config("http://127.0.0.1:1", "bystander", "attacker")
    )
    assert config.http.listen == "127.0.0.1:0"
    slots = config.server.max_concurrent_rpcs
    assert slots < edge_attacks.IDLE_CONNECTIONS
    assert slots < edge_attacks.STREAM_CHANNELS * edge_attacks.STREAM_CALLS
    attacker = config.tenants[1].registries[0]
    assert "PutReplicationRules" in attacker.operations
    # The idle connections spread over the stranger addresses stay under the HTTP listener's
    # per-address cap, so what the scenario measures is connections held, not the cap.
    addresses = len(edge_attacks.STRANGERS)
    held = -(-(edge_attacks.IDLE_CONNECTIONS + edge_attacks.SLOWLORIS) // addresses)
    assert held <= ServerConfig.model_fields["http_max_connections_per_address"].default
    assert len(set(edge_attacks.STRANGERS)) == addresses
    assert "127.0.0.1" not in edge_attacks.STRANGERS  # the bystander's


def test_rules_flood_is_the_findings_body() -> None:
    body = edge_attacks.rules_flood(680_000)
    assert 2_000_000 < len(body) < 2_100_000
    assert json.loads(edge_attacks.rules_flood(3)) == {"rules": [{}, {}, {}], "validateOnly": True}


@contextlib.asynccontextmanager
async def _raw_http_server(
    answer: bytes, hold: str | None = None
) -> AsyncIterator[tuple[int, list[tuple[str, bytes]]]]:
    """A TCP server that reads a request head (as much as comes within 0.2 s), records the
    peer and what came, writes `answer` and closes; with `hold`, it holds the connections
    from that address and says nothing, and answers the others at once (a cap's refusal)."""
    seen: list[tuple[str, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        if hold is not None:
            seen.append((peer, b""))
            if peer != hold:
                writer.write(answer)
                writer.close()
                return
            with contextlib.suppress(OSError):
                while await reader.read(65536):
                    pass
            writer.close()
            return
        head = b""
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(0.2):
                while b"\r\n\r\n" not in head:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    head += chunk
        seen.append((peer, head.split(b"\r\n\r\n")[0]))
        writer.write(answer)
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()


UNAUTHORIZED = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


async def test_endless_bodies_write_until_the_server_ends_them() -> None:
    async with _raw_http_server(UNAUTHORIZED) as (port, seen):
        job = edge_attacks.EndlessBodies(
            target=f"127.0.0.1:{port}",
            path=DESCRIBE_PATH,
            sources=("127.0.0.2",),
            connections=1,
            seconds=0.5,
            declared_bytes=10_000,
            chunk_bytes=4096,
            timeout=5.0,
        )
        result = await job.run(_go)
        with pytest.raises(ValueError, match="loopback"):
            await edge_attacks.EndlessBodies(**{**job.__dict__, "target": "10.0.0.1:1"}).run(_go)
    assert isinstance(result, edge_attacks.EdgeResult)
    kinds = {label.split(" ", 1)[0] for label in result.codes}
    assert kinds == {"chunked", "length"}
    # Each answered 401 and was ended by the server; the last may still be open at the end.
    assert set(result.codes) <= {
        f"{kind} {outcome}"
        for kind in ("chunked", "length")
        for outcome in (
            "answered 401, closed by the server",
            "answered 401, open at the end",
            "no answer, open at the end",
        )
    }
    assert result.codes.get("chunked answered 401, closed by the server", 0) >= 1
    assert result.codes.get("length answered 401, closed by the server", 0) >= 1
    for kind in ("chunked", "length"):
        assert result.stats[kind]["connections"] >= 1
        assert result.stats[kind]["bytes_sent"] > 0
        assert result.stats[kind]["peak_held"] == 1
    # From the stranger's own address, with no credentials and the framing of its kind.
    assert {peer for peer, _ in seen} == {"127.0.0.2"}
    heads = [head.lower() for _, head in seen]
    assert all(head.startswith(b"post " + DESCRIBE_PATH.lower().encode()) for head in heads)
    assert not any(b"authorization" in head for head in heads)
    assert any(b"transfer-encoding: chunked" in head for head in heads)
    assert any(b"content-length: 10000" in head for head in heads)


async def test_json_flood_sends_the_same_body_back_to_back() -> None:
    async with _tiny_connect_gateway() as (port, seen):
        job = edge_attacks.JsonFlood(
            url=f"http://127.0.0.1:{port}/ecr.registry.v1.RegistryConfigService/PutReplicationRules",
            headers=(("authorization", "Bearer attacker"),),
            rules=5,
            source="127.0.0.3",
            connections=1,
            seconds=0.3,
            timeout=5.0,
        )
        result = await job.run(_go)
    calls = result.codes["json HTTP 200"]  # the tiny server serves it; the gateway must not
    assert calls >= 2
    assert result.stats["json"]["bytes_sent"] == calls * len(edge_attacks.rules_flood(5))
    assert {c["body"] for c in seen} == {edge_attacks.rules_flood(5)}
    assert {c["peer"][0] for c in seen} == {"127.0.0.3"}
    assert len({c["peer"] for c in seen}) == 1  # one keep-alive connection


async def test_held_connections_hold_until_the_server_ends_them() -> None:
    refused = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    # 127.0.0.2's connections are held; 127.0.0.3's are answered 503 at once.
    async with _raw_http_server(refused, hold="127.0.0.2") as (port, seen):
        job = edge_attacks.HeldConnections(
            target=f"127.0.0.1:{port}",
            path=DESCRIBE_PATH,
            sources=("127.0.0.2", "127.0.0.3"),
            idle=4,
            slowloris=2,
            seconds=0.5,
            trickle_seconds=0.05,
            reopen_seconds=0.1,
            timeout=5.0,
        )
        result = await job.run(_go)
    assert isinstance(result, edge_attacks.EdgeResult)
    assert result.codes["idle held to the end"] == 2
    assert result.codes["slowloris held to the end"] == 1
    assert result.codes["idle answered 503, closed by the server"] >= 2
    assert result.stats["idle"]["held_at_start"] >= 2
    assert result.stats["slowloris"]["bytes_sent"] >= 2  # a byte at a time
    assert {peer for peer, _ in seen} == {"127.0.0.2", "127.0.0.3"}


async def test_held_streams_send_headers_and_never_the_message() -> None:
    messages: list[bytes] = []

    async def handle(requests: Any, context: Any) -> bytes:
        if not any(k == "authorization" for k, _ in context.invocation_metadata()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no credentials")
        try:
            async with asyncio.timeout(0.2):
                async for message in requests:
                    messages.append(message)
        except TimeoutError:
            await context.abort(grpc.StatusCode.CANCELLED, "no message in time")
        return b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "ecr.registry.v1.RegistryConfigService",
                {"DescribeRegistry": grpc.stream_unary_rpc_method_handler(handle)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        job = edge_attacks.HeldStreams(
            target=f"127.0.0.1:{port}",
            method=DESCRIBE_PATH,
            channels=1,
            calls=3,
            tenant_metadata=(("authorization", "Bearer attacker"),),
            tenant_channels=1,
            seconds=0.6,
            reopen_seconds=0.1,
            settle_seconds=0.1,
            timeout=5.0,
        )
        result = await job.run(_go)
    finally:
        await server.stop(None)
    assert messages == []
    assert result.codes["stranger UNAUTHENTICATED"] >= 3
    assert result.codes["tenant CANCELLED"] >= 3
    assert set(result.codes) <= {
        "stranger UNAUTHENTICATED",
        "stranger held to the end",
        "tenant CANCELLED",
        "tenant held to the end",
    }
    assert isinstance(result, edge_attacks.EdgeResult)
    assert result.stats["tenant"]["held_at_start"] == 3
    assert result.stats["tenant"]["peak_held"] == 3


async def test_paced_http_reads_count_answers_and_hits() -> None:
    async with _tiny_connect_gateway() as (port, seen):
        job = edge_attacks.PacedHttpReads(
            url=f"http://127.0.0.1:{port}{DESCRIBE_PATH}",
            body=b"{}",
            headers=(("authorization", "Bearer bench"),),
            calls=20,
            rate=200.0,
            connections=2,
            warmup=4,
            timeout=5.0,
        )
        read = await job.run(_go)
    assert read.codes == {"OK": 20}
    assert read.cache == {"hit": 20}  # the miss was the first call, in the warm-up
    assert len(read.latency_list()) == 20
    assert read.finished - read.started >= 19 / 200
    assert len({c["peer"] for c in seen}) == 2  # kept alive


def test_edge_summary_adds_counters_to_the_attacker_summary() -> None:
    def phase(held: float) -> edge_attacks.EdgeResult:
        return edge_attacks.EdgeResult(
            latencies=array.array("d", [0.001, 3.0]).tobytes(),
            started=0.0,
            finished=3.0,
            codes={"idle held to the end": 1, "idle answered 503, closed by the server": 1},
            kind_latencies={"idle": array.array("d", [0.001, 3.0]).tobytes()},
            stats={"idle": {"connections": 2.0, "peak_held": held, "bytes_sent": 10.0}},
        )

    attack = edge_attacks.ATTACKS["edge-idle"]
    summary = edge_attacks.edge_summary([phase(2.0), phase(5.0)], 6.0, attack)
    idle = summary["idle"]
    assert idle["calls"] == 4
    assert idle["codes"] == {"held to the end": 2, "answered 503, closed by the server": 2}
    assert idle["connections"] == 4  # summed over phases
    assert idle["peak_held"] == 5  # the largest
    assert idle["bytes_sent"] == 20
    assert idle["unit"] == "connections"
    assert idle["what"] == attack.kinds["idle"][0]
    assert idle["max_ms"] == 3000.0


def _edge_doc() -> dict[str, Any]:
    doc = _doc()
    doc["scenarios"] = ["edge-idle"]
    base = doc["rows"][0]
    rows = []
    attacker = {
        "idle": {
            "calls": 1000,
            "calls_per_s": 333.3,
            "codes": {"held to the end": 1000},
            "p50_ms": 3000.0,
            "p99_ms": 3001.0,
            "max_ms": 3002.0,
            "connections": 1000,
            "peak_held": 1000,
            "unit": "connections",
            "what": "a connection that sends nothing",
        }
    }
    for transport, quiet_p99, attacked_p99, failed in (
        ("gRPC", 2.0, 3.0, 0.0),
        ("HTTP", 2.0, 9000.0, 0.5),
    ):
        for phase, p99 in (("quiet", quiet_p99), ("attacked", attacked_p99)):
            row = copy.deepcopy(base)
            row.update(
                key=f"edge-idle.{transport.lower()}.{phase}",
                group="edge",
                title=f"edge-idle: bystander {transport} cached DescribeRegistry, {phase}",
                p99_ms=p99,
                rounds=1,
                scenario="edge-idle",
                server_busy=0.3,
            )
            row["extra"] = {"rate_per_s": 250.0, "transport": transport, "phase_seconds": 3.0}
            row["codes"] = {"OK": 750}
            if phase == "attacked":
                row["extra"].update(
                    p99_goal=2.0,
                    failed_share=failed,
                    attack="1,000 TCP connections that send nothing",
                    attack_label="idle and slowloris connections, no credentials",
                    attacker=attacker,
                )
                if not failed:
                    row["extra"]["p99_vs_no_attack"] = p99 / quiet_p99
                else:
                    row["codes"] = {"OK": 375, "HTTP 503": 375}
            rows.append(row)
    doc["rows"] = rows
    return doc


def test_edge_rows_in_table_and_page() -> None:
    doc = _edge_doc()
    table = report.table(doc)
    assert "1.50x p99 vs no attack" in table
    assert "p99 unbounded: 50.0% of reads not answered OK" in table
    assert "attacker idle: 1000 connections (held to the end 1000)" in table
    page = report.markdown(doc, "chart.png")
    assert "## Bystander under edge attacks" in page
    assert "- **edge-idle** (idle and slowloris connections, no credentials): 1,000 TCP" in page
    assert "| edge-idle | gRPC | 2.00 | 3.00 | **1.50x** (met) | OK 750 | 30% / 30% |" in page
    assert "| edge-idle | HTTP | 2.00 | 9000.00 | **unbounded** (50.0% not OK) |" in page
    assert (
        "| edge-idle | idle: a connection that sends nothing | 1000 connections "
        "| held to the end 1000 | - | 1000 | 3000.0 / 3002.0 |"
    ) in page
    # No edge rows (an older run's results): no section.
    assert "## Bystander under edge attacks" not in report.markdown(_doc(), "chart.png")


def _accounts_doc() -> dict[str, Any]:
    doc = _doc()
    doc["scenarios"] = ["accounts"]
    base = doc["rows"][0]
    rows = []
    for accounts, regions, serving, rss in ((1, 2, 1.2, 135.0), (150, 2, 6.5, 204.0)):
        row = copy.deepcopy(base)
        clients = accounts * regions
        row.update(
            key=f"accounts.{accounts}x{regions}",
            group="accounts",
            title=f"many accounts: {accounts} x {regions} = {clients} clients",
            codes={"OK": clients},
            setup="gateway cpu0; 1 bench thread pool x 16, 1 channel",
        )
        row["extra"] = {
            "accounts": accounts,
            "regions": regions,
            "clients": clients,
            "serving_s": serving,
            "rss_serving_mb": rss - 5,
            "rss_after_mb": rss,
            "start_cpu_s": serving / 2,
            "stand_in_cpu_s": 0.5,
            "cpu_wait_s": 0.25,
            "upstream_start": {"sts:AssumeRole": accounts, "ecr:GetAccountSetting": clients},
        }
        rows.append(row)
    slope, intercept = many_accounts.fit([2.0, 300.0], [135.0, 204.0])
    rows[-1]["extra"]["growth"] = {
        "rss_mb_per_client": round(slope, 3),
        "rss_mb_intercept": round(intercept, 1),
        "serving_ms_per_client": 17.8,
        "serving_s_intercept": 1.2,
        "start_cpu_ms_per_client": 9.0,
    }
    doc["rows"] = rows
    doc["verdicts"] = [
        {
            "name": "many accounts: 150 x 2 (300 clients) SERVING after",
            "ok": True,
            "value": "6.50 s",
            "goal": "<= 8 s",
            "kind": "target",
            "scenario": "accounts",
        }
    ]
    return doc


def test_many_accounts_rows_in_table_and_page() -> None:
    assert "accounts" in cli.SCENARIOS and "accounts" in SELF_CONTAINED
    doc = _accounts_doc()
    assert "SERVING after 6.50 s, RSS 204 MB after the calls" in report.table(doc)
    page = report.markdown(doc, "chart.png")
    assert "## Many accounts: memory and start-up against (account, region) clients" in page
    assert "| 150 x 2 | 300 | 6.50 | 3.25 | 0.25 | 0.50 | 199 | 204 | OK 300 |" in page
    # (204 - 135) MB over (300 - 2) clients, from 134.5 MB at none.
    assert "**0.23 MB** of RSS (from 134 MB), **17.8 ms** to SERVING" in page
    assert "- **met**: 150 x 2 (300 clients) SERVING after: 6.50 s (goal <= 8 s)" in page
    assert "## Many accounts" not in report.markdown(_doc(), "chart.png")


def test_many_accounts_config_is_a_valid_config() -> None:
    raw = many_accounts.accounts_config("http://127.0.0.1:1", "sha256:" + "0" * 64, 3, 2)
    config = GatewayConfig.model_validate(raw)
    [registry] = {r.role_arn for r in config.tenants[0].registries[:1]}
    assert registry == "arn:aws:iam::210000000000:role/registry-gateway"
    assert [len(r.regions) for r in config.tenants[0].registries] == [2, 2, 2]


def test_a_later_merge_keeps_what_an_earlier_one_brought_that_it_does_not_replace() -> None:
    both = {**_edge_doc(), "scenarios": ["edge-idle", "edge-body"]}
    one = {**_edge_doc(), "scenarios": ["edge-idle"], "started": "2026-01-03T00:00:00"}
    merged = report.merge(report.merge(_doc(), both), one)
    assert [(e["scenarios"], e["started"]) for e in merged["merged"]] == [
        (["edge-body"], both["started"]),
        (["edge-idle"], one["started"]),
    ]
