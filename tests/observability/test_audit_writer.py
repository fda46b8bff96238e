"""The audit trail is written off the event loop (issue 25): a slow or stuck sink delays no
call; every line queued is in the sink once the trail is closed; what cannot be written is
counted, never waited for on the loop."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections import Counter
from pathlib import Path

import grpc
import pytest

from service.auth.tenancy import TenancyHolder, build_tenancy
from service.config import AuditConfig, ServerConfig, from_mapping
from service.observability.audit import AuditLog, WriteRecord
from service.pipeline.pipeline import Pipeline
from tests.conftest import wait_until
from tests.support.helpers import KEY, config_dict, metadata

PUT = "/ecr.registry.v1.RegistryConfigService/PutRegistryPolicy"
# How long a held sink waits before letting a write through on its own: on the original code
# (written on the loop) the test would otherwise hang; past it, the write is known to have
# blocked its caller.
HOLD_SECONDS = 10.0


class HeldStream(io.StringIO):
    """A sink whose writes wait until `release` is set (a full disk, a pipe nobody reads);
    `waited_out` says a write gave up waiting, so it blocked its caller that long."""

    def __init__(self, fail_on: int | None = None) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()
        self.waited_out = False
        self.writers: set[str] = set()
        self._fail_on = fail_on
        self._writes = 0

    def write(self, text: str) -> int:
        self.entered.set()
        self.writers.add(threading.current_thread().name)
        if not self.release.wait(HOLD_SECONDS):
            self.waited_out = True
        self._writes += 1
        if self._writes == self._fail_on:
            raise OSError(28, "No space left on device")
        return super().write(text)

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(x) for x in self.getvalue().splitlines()]


def write(audit: AuditLog, request_id: str) -> None:
    audit.write(
        request_id=request_id,
        tenant="payments",
        identity="api_key:sha256:0123456789ab",
        rpc="PutRegistryPolicy",
        outcome="OK",
        reason=None,
        record=WriteRecord(registry_id="123456789012", region="us-east-1"),
    )


def held_stdout(monkeypatch: pytest.MonkeyPatch, fail_on: int | None = None) -> HeldStream:
    """stdout (audit.path "-") replaced in the test's body: pytest puts its own capture back
    on sys.stdout when the test's call begins."""
    stream = HeldStream(fail_on)
    monkeypatch.setattr("sys.stdout", stream)
    return stream


async def test_a_call_completes_while_the_audit_sink_is_stuck(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = held_stdout(monkeypatch)
    audit = AuditLog(AuditConfig())
    tenancy = build_tenancy(from_mapping(config_dict("http://127.0.0.1:1"), environ={}), {})
    pipeline = Pipeline(ServerConfig(), TenancyHolder(tenancy), audit=audit)
    outcome = pipeline.started(PUT, metadata(KEY))
    outcome.code, outcome.reason = grpc.StatusCode.OK, None
    pipeline.ended(outcome)  # the write's audit line: queued, not written here
    assert not held.waited_out, "the audit line was written on the event loop"
    await wait_until(held.entered.is_set, what="the writer thread at the sink")
    # The loop goes on serving while the sink holds the line.
    await asyncio.sleep(0)
    assert held.getvalue() == "" and asyncio.get_running_loop().is_running()
    assert threading.current_thread().name not in held.writers
    held.release.set()
    audit.close()
    [line] = held.lines()
    assert line["log"] == "audit" and line["request_id"] == outcome.request_id


async def test_every_line_queued_is_in_the_file_once_closed_in_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(AuditConfig(path=str(path)))
    for i in range(500):
        write(audit, f"r-{i}")
    audit.event("out_of_band_change", registry_id="123456789012")
    audit.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x.get("request_id") for x in lines[:-1]] == [f"r-{i}" for i in range(500)]
    assert lines[-1]["event"] == "out_of_band_change"


async def test_a_full_queue_drops_and_counts_lines_without_waiting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    held = held_stdout(monkeypatch)
    lost: Counter[str] = Counter()
    audit = AuditLog(AuditConfig(), lost=lambda why, n: lost.update({why: n}), queue_lines=3)
    caplog.set_level(logging.ERROR, logger="registry_gateway.audit")
    write(audit, "r-0")
    await wait_until(held.entered.is_set, what="the writer thread at the sink")
    for i in range(1, 10):
        write(audit, f"r-{i}")  # the thread holds r-0; three fit in the queue
    assert not held.waited_out
    assert lost == {"queue_full": 6}
    assert sum("dropped" in r.getMessage() for r in caplog.records) == 1  # once per episode
    held.release.set()
    audit.close()
    assert [x["request_id"] for x in held.lines()] == ["r-0", "r-1", "r-2", "r-3"]


async def test_closing_over_a_stuck_sink_gives_up_and_counts_what_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = held_stdout(monkeypatch)
    lost: Counter[str] = Counter()
    audit = AuditLog(AuditConfig(), lost=lambda why, n: lost.update({why: n}))
    for i in range(4):
        write(audit, f"r-{i}")
    await wait_until(held.entered.is_set, what="the writer thread at the sink")
    audit.close(timeout=0.2)  # bounded: the shutdown goes on
    assert lost == {"not_written": 3}  # one is in the sink's hands, three still queued
    held.release.set()


async def test_a_line_the_sink_refuses_is_lost_alone_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = held_stdout(monkeypatch, fail_on=2)
    stream.release.set()
    lost: Counter[str] = Counter()
    audit = AuditLog(AuditConfig(), lost=lambda why, n: lost.update({why: n}))
    for i in range(3):
        write(audit, f"r-{i}")
    audit.close()
    assert [x["request_id"] for x in stream.lines()] == ["r-0", "r-2"]
    assert lost == {"write_failed": 1}


async def test_a_line_after_close_is_counted_not_written(tmp_path: Path) -> None:
    lost: Counter[str] = Counter()
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(AuditConfig(path=str(path)), lost=lambda why, n: lost.update({why: n}))
    write(audit, "r-0")
    audit.close()
    write(audit, "r-1")
    assert [json.loads(x)["request_id"] for x in path.read_text().splitlines()] == ["r-0"]
    assert lost == {"closed": 1}
