"""bench/paired.py's figures: per-round differences from the bare server, their medians,
the goals' verdicts and the docs section (no servers: a results document made up here)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from bench import cli, paired, report
from bench.common import Verdict
from tests.bench.test_bench import _doc


def paired_doc(over: list[float], ratio: list[float]) -> dict[str, Any]:
    bare = [200.0 + i for i in range(len(over))]
    extra = {
        "rounds": len(over),
        "cpu_model": "Test CPU",
        "bare_cpu_us_per_call": bare,
        "cpu_us_per_call": [b + d for b, d in zip(bare, over, strict=True)],
        "cpu_over_bare_us": over,
        "cpu_over_bare": {
            "median": sorted(over)[len(over) // 2],
            "min": min(over),
            "max": max(over),
        },
        "calls_per_s_vs_bare": ratio,
        "calls_ratio": {
            "median": sorted(ratio)[len(ratio) // 2],
            "min": min(ratio),
            "max": max(ratio),
        },
    }
    return {
        "rows": [
            {"key": "paired.bare", "group": "paired", "server_busy": 0.9, "extra": {}},
            {"key": "paired.gateway", "group": "paired", "server_busy": 0.99, "extra": extra},
        ]
    }


def test_the_section_shows_every_round_and_the_medians_against_the_goals() -> None:
    doc = paired_doc([40.0, 45.0, 60.0], [0.82, 0.85, 0.79])
    text = paired.markdown(doc)
    assert text.startswith("## Cached reads, paired with the bare server")
    assert "Test CPU" in text and "3 rounds" in text
    assert "| 3 | 202 | 262 | +60 | 0.79x |" in text
    assert "+45 us CPU per cached read" in text and "rounds +40..+60" in text
    assert "goal <= +50 us: met" in text and "goal >= 0.80x: met" in text
    assert "bare 90%, gateway 99%" in text


def test_the_goals_are_judged_on_the_medians_of_the_rounds() -> None:
    run = SimpleNamespace(verdicts=[])
    paired._verdicts(run, paired_doc([30.0, 70.0, 80.0], [0.9, 0.7, 0.75])["rows"][1]["extra"])  # type: ignore[arg-type]
    cpu, calls = run.verdicts
    assert isinstance(cpu, Verdict) and not cpu.ok and cpu.value.startswith("+70 us")
    assert not calls.ok and calls.value.startswith("0.75x")


def test_no_section_without_the_scenario_and_it_is_on_the_page_with_it() -> None:
    assert paired.markdown({"rows": []}) == ""
    assert "paired" in cli.SCENARIOS
    # The page renders the section from a run's results.
    doc = _doc()
    template = doc["rows"][0]
    doc["rows"] += [
        template | {"key": row["key"], "group": "paired", "extra": row["extra"]}
        for row in paired_doc([40.0], [0.9])["rows"]
    ]
    page = report.markdown(doc, "chart.png")
    assert "## Cached reads, paired with the bare server" in page
