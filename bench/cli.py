"""`python -m bench`: run the benchmark, print the table, write the JSON and the docs page.

    python -m bench            full run (make bench): bench/results/latest.json,
                               docs/performance.md, docs/performance-latency.png
    python -m bench --quick    under a minute (make bench-quick): bench/results/quick.json
                               only; the published page is left alone
    python -m bench --only reads,storm       some scenarios: reads paired cold storm writes
                                             scale ablation attack edge-body edge-json
                                             edge-idle edge-streams accounts teams
                                             (ablation, paired, edge-*, accounts and teams
                                             are not in --quick by default); writes
                                             bench/results/<mode>-<names>.json only, never
                                             latest.json or the page
    python -m bench --quick --only attack --gateway-rev HEAD
                                             the gateway from a commit's service/, not the
                                             working tree's (a before figure)
    python -m bench --only attack --merge    a full run of self-contained scenarios (attack,
                                             edge-*, accounts, teams), their rows and verdicts put
                                             in place of those scenarios' in
                                             bench/results/latest.json (the page says so),
                                             and the page re-rendered
    python -m bench --profile                py-spy profiles of the cached-read hot path
    python -m bench --hotpath                the gateway's Python work per hit, step by step
    python -m bench --render bench/results/latest.json   re-render the docs page only

Exit status 1 when a correctness check fails (the storm's single upstream call, the final
state after writes, calls that should not fail); performance targets are reported, not
enforced (this machine is shared: a noisy minute must not fail a build).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import report
from bench.common import (
    EDGE_SCENARIOS,
    FULL,
    MANY_ACCOUNTS,
    MANY_TEAMS,
    QUICK,
    ROOT,
    SELF_CONTAINED,
)
from bench.harness import running

RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
CHART = "performance-latency.png"
SCENARIOS = (
    "reads",
    "paired",
    "cold",
    "storm",
    "writes",
    "scale",
    "ablation",
    "attack",
    *EDGE_SCENARIOS,
    MANY_ACCOUNTS,
    MANY_TEAMS,
)
LATEST = RESULTS / "latest.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument(
        "--only", metavar="NAMES", help=f"comma-separated scenarios of {', '.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin server and load to different cores"
    )
    parser.add_argument("--out", metavar="PATH", help="results JSON (default by mode)")
    parser.add_argument(
        "--gateway-rev",
        metavar="REV",
        help="run the gateway processes on another commit's service/ (git archive REV, "
        "read-only; the generated client stays this tree's), e.g. HEAD for a before figure",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help=f"with --only of {', '.join(sorted(SELF_CONTAINED))} (full mode): also put the "
        "results in place of that scenario's in bench/results/latest.json and re-render the page",
    )
    parser.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write docs/performance.md and the chart (default: on for full runs)",
    )
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="only re-render docs/performance.md and the chart from a results JSON",
    )
    parser.add_argument(
        "--hotpath",
        action="store_true",
        help="time the gateway's own Python work per cached read, in-process, step by step",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the gateway and the baseline under cached-read load (py-spy)",
    )
    return parser


def _write_docs(doc: dict[str, Any]) -> None:
    report.chart(doc, DOCS / CHART)
    (DOCS / "performance.md").write_text(report.markdown(doc, CHART))
    print(f"wrote docs/performance.md and docs/{CHART}")


def _default_out(quick: bool, only: set[str] | None) -> Path:
    if only is None:
        return RESULTS / ("quick.json" if quick else "latest.json")
    # A partial run never replaces the full run's results the page is made from.
    names = "+".join(name for name in SCENARIOS if name in only) or "none"
    return RESULTS / f"{'quick' if quick else 'full'}-{names}.json"


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def _partial_problem(opts: argparse.Namespace, only: set[str] | None) -> str | None:
    """Why the page cannot be written from this run, if it cannot."""
    if opts.merge:
        if not only or only - SELF_CONTAINED:
            names = ", ".join(sorted(SELF_CONTAINED))
            return (
                f"--merge takes --only of self-contained scenarios ({names}): the others' "
                "figures compare with rows of the same run"
            )
        if opts.quick:
            return "--merge puts results in a full run's: run it without --quick"
        if not LATEST.exists():
            return f"--merge: no {LATEST.relative_to(ROOT)} to merge into; run `make bench`"
        if json.loads(LATEST.read_text()).get("mode") != "full":
            return f"--merge: {LATEST.relative_to(ROOT)} is not a full run's"
    elif only is not None and opts.docs:
        return "--docs with --only would publish a partial page: use --merge or a full run"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run, report, write; the exit status tells whether the correctness checks held."""
    opts = _parser().parse_args(argv)
    plan = QUICK if opts.quick else FULL
    if opts.render:
        _write_docs(json.loads(Path(opts.render).read_text()))
        return 0
    if opts.hotpath:
        from bench.hotpath import main as hotpath

        return hotpath(2000 if opts.quick else 20000)
    if opts.profile:
        from bench.profile import profile

        return int(profile(plan, pin=not opts.no_pin))
    only = set(opts.only.split(",")) if opts.only else None
    unknown = (only or set()) - set(SCENARIOS)
    if unknown:
        print(f"unknown scenarios: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    problem = _partial_problem(opts, only)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    with running(plan, pin=not opts.no_pin, only=only, gateway_rev=opts.gateway_rev) as run:
        doc = run.execute()
    print()
    print(report.table(doc))
    out = Path(opts.out) if opts.out else _default_out(opts.quick, only)
    _write_json(out, doc)
    if opts.merge:
        base = json.loads(LATEST.read_text())
        merged = report.merge(base, doc)
        _write_json(LATEST, merged)
        if opts.docs is not False:
            _write_docs(merged)
    elif opts.docs if opts.docs is not None else not opts.quick and only is None:
        _write_docs(doc)
    failed = [v for v in doc["verdicts"] if v["kind"] == "check" and not v["ok"]]
    failed += [v for v in doc["verdicts"] if v["name"].startswith("cold storm") and not v["ok"]]
    return 1 if failed else 0
