"""Event lines of the audit trail (drift, overwritten writes): same sink, marker and bounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.config import AuditConfig
from service.observability.audit import AuditLog


def test_an_event_line_on_stdout_carries_the_marker_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    audit = AuditLog(AuditConfig())
    audit.event("out_of_band_change", registry_id="123456789012", tenants=["payments"])
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith('{"log":"audit",')
    fields = json.loads(line)
    assert fields["event"] == "out_of_band_change"
    assert fields["tenants"] == ["payments"]


def test_an_event_line_is_bounded_and_escaped(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(AuditConfig(path=str(path)))
    audit.event(
        "overwritten",
        description="x" * 10_000,
        diff=[{"path": f"p{i}\n\x1b[31m", "deep": [[[[["too deep"]]]]]} for i in range(1000)],
        time="forged",
        event="forged",
        log="forged",
    )
    audit.close()
    [line] = path.read_text().splitlines()
    fields = json.loads(line)
    assert fields["event"] == "overwritten" and fields["time"] != "forged" and "log" not in fields
    assert len(fields["description"]) <= 128
    assert len(fields["diff"]) == 32
    assert "\n" not in fields["diff"][0]["path"] and "\x1b" not in fields["diff"][0]["path"]
    assert "too deep" not in line
    assert len(line) < 32 * 1024
