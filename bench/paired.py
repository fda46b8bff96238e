"""Cached reads, paired (issue 25): the gateway's own CPU per cached read over a bare grpc.aio
server of the same contract, round by round.

A cached read's cost moves with this shared machine's state by more than the gateway's own
share of it (one run's ratio to the bare server was 1.2x, another's 1.85x), so a figure from
one run, or from medians of separately disturbed rows, misleads. Here the same load runs
against the bare server (bench/bare_server.py, answering the gateway's bytes) and the
gateway, back to back, `rounds` times, alternating which goes first; each round gives one
difference (gateway minus bare, server CPU per call, from the kernel's per-process CPU clock)
and one calls/s ratio, taken while the machine was in the same state for both. The figures
are the medians of those per-round values, with their range. The load: `CLIENT_PROCESSES`
client processes x `CONCURRENCY_PER_PROCESS` concurrent DescribeRegistry on one cached
entry (every call a hit: none reaches AWS, checked), the server pinned to cpu0 and the load to cpu1.

`python -m bench --only paired` runs it (in a full run: `FULL.rounds` rounds); with
`--gateway-rev REV` the gateway is that commit's. `python -m bench.paired --before REV`
interleaves a third server, the gateway of commit REV, in the same rounds: a before and an
after measured on the same machine state.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import DESCRIBE, FULL, QUICK, ROOT, Loaded, Row, Verdict, _gateway_config
from bench.machine import cpu_model
from bench.processes import clean_env

if TYPE_CHECKING:
    from bench.harness import Run
    from bench.processes import ServerProcess

SCENARIO = "paired"
CLIENT_PROCESSES = 2
CONCURRENCY_PER_PROCESS = 32
# The goals: the gateway's median CPU per cached read over the bare server's, and
# its calls/s against the bare server's (both per round, then the median of the rounds).
CPU_OVER_BARE_GOAL_US = 50.0
CALLS_RATIO_GOAL = 0.8


@dataclass(frozen=True)
class PairedPlan:
    """How many rounds, and calls per server per round."""

    rounds: int
    calls: int
    warmup: int


PLANS = {
    "quick": PairedPlan(rounds=3, calls=6000, warmup=600),
    "full": PairedPlan(rounds=8, calls=16000, warmup=1000),
}


def _us(load: Loaded) -> float:
    """Server CPU microseconds per call."""
    return load.m.server_cpu_per_1k * 1000


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


def _export(run: Run, rev: str) -> dict[str, str]:
    """The environment of a gateway process running commit `rev`'s service/ (read-only:
    `git archive`, as the harness's --gateway-rev does)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "service"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    target = run.scratch / f"paired-{commit[:12]}"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return clean_env({"PYTHONPATH": str(target)})


def _before(run: Run, rev: str) -> ServerProcess:
    """A second gateway, of commit `rev` (or of the `service/` under directory `rev`: a copy
    of a working tree's), configured as the run's own."""
    source = Path(rev)
    before = (
        clean_env({"PYTHONPATH": str(source.resolve())})
        if (source / "service").is_dir()
        else _export(run, rev)
    )
    env, run._gateway_env = run._gateway_env, before
    try:
        return run._start_gateway("gateway-before", _gateway_config(run.aws.proxy_url, run.key))
    finally:
        run._gateway_env = env


def run_scenario(run: Run, before: str | None = None) -> None:
    """Rounds of (bare, gateway[, gateway of `before`]), each order alternating; rows of the
    medians, the per-round differences, and the goals' verdicts."""
    plan = PLANS.get(run.plan.name, PLANS["quick"])
    concurrency = CLIENT_PROCESSES * CONCURRENCY_PER_PROCESS
    bare = run.bare if run.bare is not None else run.start_bare()
    servers: dict[str, ServerProcess] = {"bare": bare, "gateway": run.gateway}
    if before is not None:
        servers["before"] = _before(run, before)
    run.log(
        f"paired cached reads: {' / '.join(servers)}, {CLIENT_PROCESSES} client procs x "
        f"{CONCURRENCY_PER_PROCESS} concurrent DescribeRegistry hits, {plan.calls} calls x "
        f"{plan.rounds} rounds"
    )
    loads: dict[str, list[Loaded]] = {name: [] for name in servers}
    names = list(servers)
    for i in range(plan.rounds):
        # Alternate the order: a drift of the machine's state within a round favours neither.
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            server = servers[name]
            jobs = run.unary_jobs(
                (server.address,),
                DESCRIBE,
                plan.calls,
                concurrency,
                processes=CLIENT_PROCESSES,
                warmup=plan.warmup,
            )
            loads[name].append(run.load(jobs, [server.pid]))
        line = "  ".join(
            f"{name} {_us(loads[name][-1]):5.0f} us {loads[name][-1].m.calls_per_s:6.0f}/s"
            for name in servers
        )
        run.log(f"  round {i + 1}: {line}")
    _report(run, servers, loads, plan)
    if run.bare is None:
        bare.stop()
    if "before" in servers:
        servers["before"].stop()
    hits = {name: run._row(f"{SCENARIO}.{name}") for name in servers if name != "bare"}
    run.verdicts.append(
        Verdict(
            "paired cached reads: every gateway call answered OK, none reached AWS",
            all(set(row.m.codes) == {"OK"} and not row.upstream for row in hits.values()),
            "; ".join(
                f"{name}: codes {row.m.codes}, upstream {row.upstream or 0}"
                for name, row in hits.items()
            ),
            "all OK, 0 upstream",
            "check",
        )
    )
    _verdicts(run, run._row(f"{SCENARIO}.gateway").extra)


def _report(
    run: Run,
    servers: dict[str, ServerProcess],
    loads: dict[str, list[Loaded]],
    plan: PairedPlan,
) -> None:
    """One row per server (medians of its rounds); on each gateway row, the per-round
    differences from the bare server of the same round."""
    bare_us = [_us(load) for load in loads["bare"]]
    bare_rate = [load.m.calls_per_s for load in loads["bare"]]
    titles = {
        "bare": "paired: bare grpc.aio, DescribeRegistry",
        "gateway": "paired: gateway hit, DescribeRegistry",
        "before": "paired: gateway hit, DescribeRegistry (before)",
    }
    for name in servers:
        row: Row = run._row_of(
            f"{SCENARIO}.{name}",
            SCENARIO,
            titles[name],
            CLIENT_PROCESSES * CONCURRENCY_PER_PROCESS,
            loads[name],
            f"{CLIENT_PROCESSES} client procs x {CONCURRENCY_PER_PROCESS} concurrent, "
            f"{run.plan.channels_per_process} channels each; server cpu0, clients cpu1",
        )
        row.extra.update(rounds=plan.rounds, cpu_model=cpu_model())
        if name != "bare":
            us = [_us(load) for load in loads[name]]
            rate = [load.m.calls_per_s for load in loads[name]]
            over = [g - b for g, b in zip(us, bare_us, strict=True)]
            ratio = [g / b for g, b in zip(rate, bare_rate, strict=True)]
            row.extra.update(
                cpu_us_per_call=[round(v, 1) for v in us],
                bare_cpu_us_per_call=[round(v, 1) for v in bare_us],
                cpu_over_bare_us=[round(v, 1) for v in over],
                cpu_over_bare=_spread(over),
                calls_per_s_vs_bare=[round(v, 3) for v in ratio],
                calls_ratio={
                    "median": round(statistics.median(ratio), 3),
                    "min": round(min(ratio), 3),
                    "max": round(max(ratio), 3),
                },
                cpu_ratio=round(statistics.median(us) / statistics.median(bare_us), 3),
            )
        run._add(row)


def _verdicts(run: Run, x: dict[str, Any]) -> None:
    over, ratio = x["cpu_over_bare"], x["calls_ratio"]
    run.verdicts += [
        Verdict(
            "paired cached reads: gateway CPU per call over bare (median of per-round differences)",
            over["median"] <= CPU_OVER_BARE_GOAL_US,
            f"+{over['median']:.0f} us (rounds +{over['min']:.0f}..+{over['max']:.0f})",
            f"<= +{CPU_OVER_BARE_GOAL_US:.0f} us",
            "target",
        ),
        Verdict(
            "paired cached reads: gateway calls/s vs bare (median of per-round ratios)",
            ratio["median"] >= CALLS_RATIO_GOAL,
            f"{ratio['median']:.2f}x (rounds {ratio['min']:.2f}..{ratio['max']:.2f})",
            f">= {CALLS_RATIO_GOAL:.2f}x",
            "target",
        ),
    ]


def markdown(doc: dict[str, Any]) -> str:
    """The paired cached-read section of docs/performance.md ('' when the run had none)."""
    rows = {r["key"]: r for r in doc["rows"] if r["group"] == SCENARIO}
    gateway = rows.get(f"{SCENARIO}.gateway")
    bare = rows.get(f"{SCENARIO}.bare")
    if gateway is None or bare is None:
        return ""
    x = gateway["extra"]
    over, ratio = x["cpu_over_bare"], x["calls_ratio"]
    before = rows.get(f"{SCENARIO}.before")
    out = [
        "## Cached reads, paired with the bare server",
        "",
        f"The gateway's own cost per cached read (issue 25): {CLIENT_PROCESSES} client "
        f"processes x {CONCURRENCY_PER_PROCESS} concurrent DescribeRegistry on one cached "
        "entry (every call a hit: none reaches AWS, checked), the server pinned to cpu0, "
        "the load to cpu1; "
        f"{x['rounds']} rounds, each running the same load against the bare grpc.aio server "
        "(bench/bare_server.py) and the gateway back to back, in alternating order. Each "
        "round gives one difference of server CPU per call (kernel per-process CPU clock, "
        "all threads) and one calls/s ratio, measured in the same machine state; the "
        "figures are their medians, with the range over rounds. CPU: "
        f"{x.get('cpu_model', 'unknown')}. `python -m bench --only paired` "
        "(bench/paired.py).",
        "",
        "| round | bare us/call | gateway us/call | over bare, us | calls/s vs bare |"
        + (" before us/call | before over bare, us |" if before is not None else ""),
        "|---|---|---|---|---|" + ("---|---|" if before is not None else ""),
    ]
    columns = [
        x["bare_cpu_us_per_call"],
        x["cpu_us_per_call"],
        x["cpu_over_bare_us"],
        x["calls_per_s_vs_bare"],
    ]
    if before is not None:
        columns += [before["extra"]["cpu_us_per_call"], before["extra"]["cpu_over_bare_us"]]
    for i, values in enumerate(zip(*columns, strict=True), start=1):
        b, g, d, r, *old = values
        tail = f" {old[0]:.0f} | +{old[1]:.0f} |" if old else ""
        out.append(f"| {i} | {b:.0f} | {g:.0f} | +{d:.0f} | {r:.2f}x |{tail}")
    out += [
        "",
        f"**Gateway over bare: +{over['median']:.0f} us CPU per cached read** (median; rounds "
        f"+{over['min']:.0f}..+{over['max']:.0f}; goal <= +{CPU_OVER_BARE_GOAL_US:.0f} us: "
        f"{'met' if over['median'] <= CPU_OVER_BARE_GOAL_US else 'missed'}), "
        f"**{ratio['median']:.2f}x its calls/s** (rounds {ratio['min']:.2f}..{ratio['max']:.2f}; "
        f"goal >= {CALLS_RATIO_GOAL:.2f}x: "
        f"{'met' if ratio['median'] >= CALLS_RATIO_GOAL else 'missed'}). Server busy (median "
        f"of rounds): bare {bare['server_busy']:.0%}, gateway {gateway['server_busy']:.0%}; "
        "calls/s is the server's limit only where its core was full (otherwise the load "
        "generator's core, shared with other work on this machine, was): compare by CPU.",
    ]
    if before is not None:
        y = before["extra"]
        out.append(
            f"The gateway before, in the same rounds: +{y['cpu_over_bare']['median']:.0f} us "
            f"(rounds +{y['cpu_over_bare']['min']:.0f}..+{y['cpu_over_bare']['max']:.0f}), "
            f"{y['calls_ratio']['median']:.2f}x calls/s (server busy "
            f"{before['server_busy']:.0%})."
        )
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.paired [--quick] [--before REV]`: this scenario alone, printed and
    written to bench/results/paired-<mode>.json (never the published page)."""
    import json

    # The run itself (an entry point of its own: the harness imports this module only
    # when it runs the scenario, so this is no circle at import time).
    from bench.harness import running

    parser = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{PLANS['quick'].rounds} rounds")
    parser.add_argument("--rounds", type=int, help="rounds (default by mode)")
    parser.add_argument(
        "--before",
        metavar="REV",
        help="also the gateway of commit REV (or of REV/service/, a directory)",
    )
    parser.add_argument(
        "--after",
        metavar="DIR",
        help="the gateway under test runs DIR/service/ (a copy of a tree), not this tree's",
    )
    parser.add_argument(
        "--event-loop",
        choices=("auto", "asyncio", "uvloop"),
        help="the gateway under test's server.event_loop (default: its config's, auto)",
    )
    opts = parser.parse_args(argv)
    plan = QUICK if opts.quick else FULL
    if opts.rounds:
        PLANS[plan.name] = PairedPlan(opts.rounds, PLANS[plan.name].calls, PLANS[plan.name].warmup)
    with running(plan, only={SCENARIO}) as run:
        extra: dict[str, str] = {}
        if opts.after:
            extra["PYTHONPATH"] = str(Path(opts.after).resolve())
            run.log(f"the gateway under test runs {opts.after}/service/")
        if opts.event_loop:
            # An env override (docs/configuration.md): the config file stays the run's own.
            extra["REGISTRY_GATEWAY__SERVER__EVENT_LOOP"] = opts.event_loop
        run._gateway_env = clean_env(extra)
        run.start()
        run_scenario(run, before=opts.before)
        doc = {
            "rows": [row.to_json() for row in run.rows],
            "verdicts": [v.to_json() for v in run.verdicts],
        }
    print(markdown(doc))
    for verdict in doc["verdicts"]:
        print(f"{'met' if verdict['ok'] else 'MISSED'}: {verdict['name']}: {verdict['value']}")
    out = ROOT / "bench" / "results" / f"paired-{plan.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
