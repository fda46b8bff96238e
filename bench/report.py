"""The results as a terminal table, a Markdown page with a latency chart, and a JSON file."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from bench.paired import markdown as paired_markdown

ROOT = Path(__file__).resolve().parent.parent
FINDINGS = ROOT / "bench" / "findings.md"

_COLUMNS = (
    ("scenario", "title", "{}"),
    ("conc", "concurrency", "{}"),
    ("calls", "calls", "{}"),
    ("calls/s", "calls_per_s", "{:.0f}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p90 ms", "p90_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("srv CPU s/1k", "server_cpu_per_1k", "{:.3f}"),
    ("srv busy", "server_busy", "{:.0%}"),
    ("cli CPU s/1k", "client_cpu_per_1k", "{:.3f}"),
)


def _cell(row: dict[str, Any], field: str, fmt: str) -> str:
    value = row.get(field)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if field == "concurrency" and "rate_per_s" in row.get("extra", {}):
        return f"{row['extra']['rate_per_s']:g}/s"  # open loop: a rate, not a concurrency
    return fmt.format(value)


def _upstream(row: dict[str, Any]) -> str:
    counts = row.get("upstream") or {}
    return ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in sorted(counts.items())) or "0"


def _remark(row: dict[str, Any]) -> str:
    parts = []
    x = row.get("extra", {})
    if "calls_per_s_vs_baseline" in x:
        parts.append(
            f"{x['calls_per_s_vs_baseline']:.2f}x calls/s, "
            f"{x['cpu_per_call_vs_baseline']:.2f}x CPU, {x['p99_vs_baseline']:.2f}x p99"
        )
    if "calls_per_s_vs_grpc" in x:
        parts.append(
            f"{x['calls_per_s_vs_grpc']:.2f}x calls/s, {x['cpu_per_call_vs_grpc']:.2f}x CPU, "
            f"{x['p99_vs_grpc']:.2f}x p99 vs gRPC hit"
        )
    if row["group"] == "writes":
        parts.append(f"{x['successful_writes']} ok, {x['aborted']} ABORTED")
    if row["group"] == "storm":
        parts.append(f"x-cache {x.get('x_cache')}")
    if "redis_cpu_s_per_1k" in x:
        parts.append(f"redis-server {x['redis_cpu_s_per_1k']:.3f} s/1k")
    if row["group"] == "accounts":
        parts.append(
            f"SERVING after {x['serving_s']:.2f} s, RSS {x['rss_after_mb']:.0f} MB after the calls"
        )
    if row["group"] == "edge" and "attack_label" in x:
        parts.append(_edge_ratio(x))
        for kind, entry in sorted(x.get("attacker", {}).items()):
            codes = ", ".join(f"{c} {n}" for c, n in sorted(entry["codes"].items()))
            parts.append(f"attacker {kind}: {entry['calls']} {entry['unit']} ({codes})")
    elif "p99_vs_no_attack" in x:
        parts.append(f"{x['p99_vs_no_attack']:.2f}x p99 vs no attack")
        for kind, entry in sorted(x.get("attacker", {}).items()):
            codes = ", ".join(f"{c} {n}" for c, n in sorted(entry["codes"].items()))
            parts.append(
                f"attacker {kind}: {entry['calls']} calls ({codes}), p50 {entry['p50_ms']} ms"
            )
    bound = row.get("bound", "server")
    if bound != "server" and row["group"] in ("baseline", "cached", "http", "scale", "ablation"):
        parts.append(f"{bound}-bound")
    cores = x.get("core_busy") or []
    if "cpu0" in row.get("setup", "") and cores:
        other = cores[0] - row["server_busy"]
        if other > 0.15:
            parts.append(f"other work took {other:.0%} of the server's core")
    if "added_us_per_call_min" in x:
        parts.append(f"+{x['added_us_per_call_min']:.0f} us/call (best round vs bare)")
    return "; ".join(parts)


def _edge_ratio(x: dict[str, Any]) -> str:
    """An edge attack's p99 under attack vs alone; unbounded when reads were refused."""
    ratio = x.get("p99_vs_no_attack")
    if ratio is None:
        return f"p99 unbounded: {x['failed_share']:.1%} of reads not answered OK"
    return f"{ratio:.2f}x p99 vs no attack"


def table(doc: dict[str, Any]) -> str:
    """A fixed-width table for the terminal."""
    headers = [c[0] for c in _COLUMNS] + ["upstream", "remarks"]
    lines = [
        [_cell(row, field, fmt) for _, field, fmt in _COLUMNS] + [_upstream(row), _remark(row)]
        for row in doc["rows"]
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    for line in lines:
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
    out.append("")
    for v in doc["verdicts"]:
        mark = "MET " if v["ok"] else "MISS"
        if v["kind"] == "check":
            mark = "OK  " if v["ok"] else "FAIL"
        out.append(f"[{mark}] {v['name']}: {v['value']} (goal {v['goal']})")
    return "\n".join(out)


def markdown_table(doc: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    headers = [c[0] for c in _COLUMNS] + ["upstream calls", "remarks"]
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in doc["rows"]:
        cells = [_cell(row, field, fmt) for _, field, fmt in _COLUMNS]
        cells += [_upstream(row), _remark(row)]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out)


def verdicts_markdown(doc: dict[str, Any]) -> str:
    """Targets and checks as a Markdown list."""
    out = []
    for v in doc["verdicts"]:
        if v["kind"] == "target":
            mark = "**met**" if v["ok"] else "**missed**"
        else:
            mark = "ok" if v["ok"] else "**FAILED**"
        out.append(f"- {mark}: {v['name']}: {v['value']} (goal {v['goal']})")
    return "\n".join(out)


def chart(doc: dict[str, Any], path: Path) -> None:
    """Latency chart: p50/p90/p99 per scenario, and the baseline vs cached curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    # The edge attacks' and many accounts' rows have sections of their own (and would crowd
    # the bars).
    rows = [r for r in doc["rows"] if r["group"] not in ("edge", "accounts", "teams")]
    fig, (bars, curves) = plt.subplots(
        1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [1.6, 1]}
    )
    names = [r["title"] for r in rows]
    ys = range(len(rows))
    height = 0.27
    for i, (label, field, color) in enumerate(
        (("p50", "p50_ms", "#4c72b0"), ("p90", "p90_ms", "#dd8452"), ("p99", "p99_ms", "#c44e52"))
    ):
        bars.barh(
            [y + (i - 1) * height for y in ys],
            [r[field] for r in rows],
            height=height,
            label=label,
            color=color,
        )
    bars.set_yticks(list(ys), names, fontsize=8)
    bars.invert_yaxis()
    bars.set_xscale("log")
    bars.set_xlabel("latency, ms (log scale)")
    bars.set_title("Latency per scenario")
    bars.grid(axis="x", which="both", alpha=0.3)
    bars.legend(loc="upper right")  # the top rows are short; the attack rows last are long

    styles = {"baseline": "--", "cached": "-", "http": ":"}
    for row in rows:
        if row["group"] not in styles:
            continue
        qs = [q / 100 for q, _ in row["curve_ms"]]  # logit scale: fractions in (0, 1)
        ms = [v for _, v in row["curve_ms"]]
        curves.plot(qs, ms, styles[row["group"]], marker="o", markersize=3, label=row["title"])
    curves.set_xscale("logit")
    curves.xaxis.set_major_formatter(
        matplotlib.ticker.FuncFormatter(lambda q, _pos: f"p{q * 100:g}")
    )
    curves.set_xlabel("percentile")
    curves.set_ylabel("latency, ms")
    curves.set_title(f"Cached reads vs baseline, {_read_concurrency(rows)} concurrent calls")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)
    m = doc["machine"]
    fig.suptitle(
        f"Registry Config Gateway, {doc['mode']} run {doc['started']} - {m['cpu_model']}, "
        f"{m['cores']} cores",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _read_concurrency(rows: list[dict[str, Any]]) -> int:
    return next((int(r["concurrency"]) for r in rows if r["group"] == "cached"), 0)


def merge(base: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """`base` (a full run's results) with the rows and verdicts of `part`'s scenarios in place
    of its own for them; `merged` in the result says which came from which run."""
    scenarios = set(part.get("scenarios") or ())
    if not scenarios:
        raise ValueError("the partial results name no scenario")
    doc = copy.deepcopy(base)

    def kept(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [item for item in items if item.get("scenario") not in scenarios]

    doc["rows"] = kept(doc["rows"]) + copy.deepcopy(part["rows"])
    doc["verdicts"] = kept(doc["verdicts"]) + copy.deepcopy(part["verdicts"])
    m = part["machine"]
    # An earlier merge keeps the scenarios this one does not replace (its rows stay).
    earlier = [
        {**e, "scenarios": [name for name in e["scenarios"] if name not in scenarios]}
        for e in doc.get("merged", [])
        if set(e["scenarios"]) - scenarios
    ]
    doc["merged"] = [
        *earlier,
        {
            "scenarios": [name for name in part["scenarios"] if name in scenarios],
            "mode": part["mode"],
            "started": part["started"],
            "duration_s": part["duration_s"],
            "git_commit": m["git_commit"],
            "git_dirty": m["git_dirty"],
            "load_average_1m_5m_at_end": m["load_average_1m_5m_at_end"],
            "gateway_source": part["setup"].get("gateway_source"),
        },
    ]
    return doc


def _source(source: dict[str, str] | None) -> str:
    if not source:
        return ""
    return (
        f"; the gateway ran `service/` of `{source['rev']}` ({source['commit']}, "
        "`--gateway-rev`), not the working tree's"
    )


def _merged_lines(doc: dict[str, Any]) -> str:
    lines = []
    for e in doc.get("merged", []):
        lines.append(
            f"- **Merged in**: the {', '.join(e['scenarios'])} rows and verdicts come from a "
            f"later {e['mode']} run of just that (`python -m bench --only "
            f"{','.join(e['scenarios'])} --merge`), {e['started']}, {e['duration_s']} s, commit "
            f"`{e['git_commit']}`{' (with uncommitted changes)' if e['git_dirty'] else ''}"
            f"{_source(e.get('gateway_source'))}; load average at its end "
            f"{e['load_average_1m_5m_at_end'][0]}"
        )
    return "".join(line + "\n" for line in lines)


def attack_markdown(doc: dict[str, Any]) -> str:
    """The bystander-under-attack section: the two p99s, their ratio, what the attacker did."""
    rows = {r["key"]: r for r in doc["rows"] if r["group"] == "attack"}
    quiet, attacked = rows.get("attack.quiet"), rows.get("attack.attacked")
    if quiet is None or attacked is None:
        return ""
    x = attacked["extra"]
    ratio = x["p99_vs_no_attack"]
    goal = x.get("p99_goal", 2.0)
    out = [
        "## Bystander under attack",
        "",
        f"One tenant's cached DescribeRegistry reads at {x['rate_per_s']:g}/s (open loop), "
        f"alone and while one connection sends {x['message_bytes']:,}-byte messages the "
        "gateway must refuse; the median of "
        f"{attacked['rounds']} round{'s' * (attacked['rounds'] > 1)} each.",
        "",
        "| bystander | calls | answers | p50 ms | p99 ms | max ms | p99 per round, ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in (("no attack", quiet), ("under attack", attacked)):
        rounds = ", ".join(f"{v:.2f}" for v in row["extra"].get("p99_ms_per_round", []))
        codes = ", ".join(f"{c} {n}" for c, n in sorted(row.get("codes", {}).items()))
        out.append(
            f"| {label} | {row['calls']} | {codes} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
            f"| {row['max_ms']:.2f} | {rounds} |"
        )
    out += [
        "",
        f"**p99 under attack / p99 alone: {ratio:.2f}x** (goal <= {goal:.2f}x: "
        f"{'met' if ratio <= goal else 'missed'}).",
        "",
        "| attacker loop | calls | calls/s | answers | refused in p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {
        "undecodable": "undecodable bytes, no credentials",
        "flood": "validate_only write + unknown fields, as a tenant",
    }
    for kind, e in sorted(x.get("attacker", {}).items(), reverse=True):
        codes = ", ".join(f"{c} {n}" for c, n in sorted(e["codes"].items()))
        out.append(
            f"| {names.get(kind, kind)} | {e['calls']} | {e['calls_per_s']} | {codes} "
            f"| {e['p50_ms']} | {e['p99_ms']} | {e['max_ms']} |"
        )
    return "\n".join(out) + "\n"


def _edge_number(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:g}"


def edge_markdown(doc: dict[str, Any]) -> str:
    """The bystander-under-edge-attacks section: per attack, the bystander's p99 over gRPC
    and over HTTP alone and under attack, their ratio, and what the attacker did."""
    rows = {r["key"]: r for r in doc["rows"] if r["group"] == "edge"}
    attacked = [r for r in rows.values() if "attack_label" in r["extra"]]
    if not attacked:
        return ""
    first = attacked[0]
    x = first["extra"]
    goal = x.get("p99_goal", 2.0)
    phase = x.get("phase_seconds")
    out = [
        "## Bystander under edge attacks",
        "",
        "The listeners themselves attacked (issue 21's findings 1-4), one scenario each "
        "(`python -m bench --only edge-body,edge-json,edge-idle,edge-streams`, "
        "bench/edge_attacks.py). Each starts a gateway of its own: two tenants, the gRPC and "
        "the HTTP listener, memory cache, `server.max_concurrent_rpcs` 500 (fewer than the "
        "attacks' connections or streams), every other limit at its default. The bystander "
        "tenant reads DescribeRegistry (every call a cache hit) from 127.0.0.1 in an open "
        f"loop at {x['rate_per_s']:g}/s over gRPC (one channel) and at the same rate over "
        "HTTP/1.1 + JSON (POST `{}`, a pool of keep-alive connections), each call's latency "
        "counted from its planned start; alone, then under attack, "
        f"{first['rounds']} round{'s' * (first['rounds'] > 1)}"
        + (f" of {phase:g} s each" if phase else "")
        + ", medians. The attacker is a process of its own at nice 19 on the load "
        "generator's core; strangers connect from 127.0.0.2-6, as other hosts would, so "
        "that no per-address cap of the bystander's is spent by them. The ratio is the p99 "
        f"under attack over the p99 alone, goal <= {goal:.2f}x; when more than 1% of the "
        "reads under attack were not answered OK, the p99 is counted unbounded (a refused "
        "read is never served, however fast the refusal). Server busy is the gateway "
        "process's CPU over the phase (both bystanders, and the attack), where 100% is one "
        "core.",
        "",
    ]
    scenarios: list[str] = []
    for row in attacked:
        name = row["key"].split(".", 1)[0]
        if name not in scenarios:
            scenarios.append(name)
    for name in scenarios:
        some = rows.get(f"{name}.grpc.attacked") or rows.get(f"{name}.http.attacked")
        if some is not None:
            e = some["extra"]
            out.append(f"- **{name}** ({e['attack_label']}): {e['attack']}.")
    out += [
        "",
        "| attack | bystander | p99 alone, ms | p99 under attack, ms | ratio | answers under "
        "attack | server busy alone / under attack |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in scenarios:
        for transport in ("grpc", "http"):
            quiet = rows.get(f"{name}.{transport}.quiet")
            hit = rows.get(f"{name}.{transport}.attacked")
            if quiet is None or hit is None:
                continue
            e = hit["extra"]
            ratio = e.get("p99_vs_no_attack")
            verdict = (
                f"**{ratio:.2f}x** ({'met' if ratio <= goal else 'missed'})"
                if ratio is not None
                else f"**unbounded** ({e['failed_share']:.1%} not OK)"
            )
            codes = ", ".join(f"{c} {n}" for c, n in sorted(hit.get("codes", {}).items()))
            out.append(
                f"| {name} | {e['transport']} | {quiet['p99_ms']:.2f} | {hit['p99_ms']:.2f} "
                f"| {verdict} | {codes} | {quiet['server_busy']:.0%} / "
                f"{hit['server_busy']:.0%} |"
            )
    out += [
        "",
        "What the attacker did, over every attacked phase: each of its connections or calls "
        "ended one way (the outcomes), after the time shown (a refusal's, or how long it was "
        "held; `held to the end` = still open when the phase ended). Bytes sent are what the "
        "attacker's sockets took, kernel buffers included, not what the gateway read.",
        "",
        "| attack | attacker | connections or calls | outcomes | bytes sent | most held at "
        "once | time to outcome p50 / max, ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in scenarios:
        some = rows.get(f"{name}.grpc.attacked") or rows.get(f"{name}.http.attacked")
        if some is None:
            continue
        for kind, a in sorted(some["extra"].get("attacker", {}).items()):
            codes = ", ".join(f"{c} {n}" for c, n in sorted(a["codes"].items()))
            sent = _edge_number(a["bytes_sent"]) if "bytes_sent" in a else "-"
            held = a.get("peak_held", "-")
            out.append(
                f"| {name} | {kind}: {a.get('what', kind)} | {a['calls']} {a.get('unit', '')} "
                f"| {codes} | {sent} | {held} | {a['p50_ms']} / {a['max_ms']} |"
            )
    return "\n".join(out) + "\n"


def http_markdown(doc: dict[str, Any]) -> str:
    """The cached read over HTTP/1.1 + JSON (Connect) beside the same read over gRPC."""
    rows = {r["key"]: r for r in doc["rows"]}
    out: list[str] = []
    for http in (r for r in doc["rows"] if r["group"] == "http"):
        x = http["extra"]
        grpc = rows.get(x.get("grpc_row", ""))
        if grpc is None:
            continue
        name = http["title"].rpartition(", ")[2]
        if not out:
            out += [
                "## Cached reads over HTTP/1.1 + JSON (Connect)",
                "",
                "The same gateway process, the same cached read (every call a hit, checked), "
                "the same concurrency and client processes, over its HTTP listener: "
                "`POST /ecr.registry.v1.RegistryConfigService/<Method>`, "
                "`content-type: application/json`, body `{}`, one keep-alive connection per "
                "call in flight (HTTP/1.1 carries one call at a time; the gRPC calls share "
                f"{doc['setup']['channels_per_process']} HTTP/2 connections per client "
                "process). Rounds interleaved with the gRPC rows', medians. A figure, not a "
                "target.",
                "",
            ]
        out += [
            f"| {name} | calls/s | p50 ms | p99 ms | srv CPU us/call | srv busy | bound "
            "| response bytes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, row in (("gRPC (protobuf)", grpc), ("Connect (JSON)", http)):
            out.append(
                f"| {label} | {row['calls_per_s']:.0f} | {row['p50_ms']:.2f} "
                f"| {row['p99_ms']:.2f} | {row['server_cpu_per_1k'] * 1000:.0f} "
                f"| {row['server_busy']:.0%} | {row.get('bound', 'server')} "
                f"| {row['extra'].get('response_bytes', '-')} |"
            )
        out += [
            "",
            f"**Connect+JSON / gRPC: {x['calls_per_s_vs_grpc']:.2f}x calls/s, "
            f"{x['cpu_per_call_vs_grpc']:.2f}x server CPU per call, "
            f"{x['p50_vs_grpc']:.2f}x p50, {x['p99_vs_grpc']:.2f}x p99.**",
            "",
        ]
    return "\n".join(out) + "\n" if out else ""


def _calls(counts: dict[str, int]) -> str:
    return ", ".join(f"{k.split(':', 1)[-1]} {v}" for k, v in sorted(counts.items())) or "0"


def accounts_markdown(doc: dict[str, Any]) -> str:
    """Many accounts (bench/many_accounts.py): memory and time to SERVING against the
    number of (account, region) clients, and the growth per added one."""
    rows = [r for r in doc["rows"] if r["group"] == "accounts"]
    if not rows:
        return ""
    out = [
        "## Many accounts: memory and start-up against (account, region) clients",
        "",
        "One gateway process per size (`registry-gateway serve`, "
        + ("pinned to cpu 0" if "cpu0" in rows[0]["setup"] else "unpinned")
        + "), one tenant, one registry per account reached through its role (`role_arn`, "
        "assumed in moto's STS), in each of the regions; moto and its counting proxy as AWS. "
        "**SERVING after**: from the process's start (interpreter, imports, the start-up "
        "probes and the policy scope of every (account, region)) to the health service's "
        "SERVING. **RSS**: the process's resident set at SERVING, and after one "
        "DescribeRegistry per (account, region) (each a cache miss, so one AWS call on every "
        "client), every one answered OK (checked). From the start to SERVING: the gateway's "
        "CPU, how long its threads waited for a CPU held by other work on this shared "
        "machine (the kernel's run delay), and the AWS stand-in's CPU.",
        "",
        "| accounts x regions | clients | SERVING after, s | gateway CPU, s | waited for a "
        "CPU, s | AWS stand-in CPU, s | RSS at SERVING, MB | RSS after one call each, MB "
        "| calls answered | AWS calls before SERVING |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        x = row["extra"]
        codes = ", ".join(f"{c} {n}" for c, n in sorted(row["codes"].items()))
        out.append(
            f"| {x['accounts']} x {x['regions']} | {x['clients']} | {x['serving_s']:.2f} "
            f"| {x['start_cpu_s']:.2f} | {x.get('cpu_wait_s', float('nan')):.2f} "
            f"| {x.get('stand_in_cpu_s', float('nan')):.2f} "
            f"| {x['rss_serving_mb']:.0f} | {x['rss_after_mb']:.0f} | {codes} "
            f"| {_calls(x['upstream_start'])} |"
        )
    growth = rows[-1]["extra"].get("growth", {})
    if growth:
        out += [
            "",
            f"**Growth per added (account, region)** (least squares over the sizes): "
            f"**{growth['rss_mb_per_client']:.2f} MB** of RSS (from "
            f"{growth['rss_mb_intercept']:.0f} MB), **{growth['serving_ms_per_client']:.1f} ms** "
            f"to SERVING ({growth['start_cpu_ms_per_client']:.1f} ms of the gateway's CPU).",
        ]
    prefix = "many accounts: "
    goals = [v for v in doc["verdicts"] if v["name"].startswith(prefix) and v["kind"] == "target"]
    if goals:
        out.append("")
        for v in goals:
            name = v["name"].removeprefix(prefix)
            mark = "met" if v["ok"] else "missed"
            out.append(f"- **{mark}**: {name}: {v['value']} (goal {v['goal']})")
    return "\n".join(out) + "\n"


def markdown(doc: dict[str, Any], chart_name: str) -> str:
    """docs/performance.md: how it was measured, the table, the targets, the findings."""
    m = doc["machine"]
    s = doc["setup"]
    v = m["versions"]
    versions = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    findings = FINDINGS.read_text() if FINDINGS.exists() else ""
    source = _source(s.get("gateway_source"))
    attack = attack_markdown(doc)
    attack += "\n" if attack else ""
    edge = edge_markdown(doc)
    edge += "\n" if edge else ""
    accounts = accounts_markdown(doc)
    accounts += "\n" if accounts else ""
    http = http_markdown(doc)
    paired = paired_markdown(doc)
    paired += "\n" if paired else ""
    pinning = (
        f"server on cpu {s['server_cpus']}, load generator and AWS stand-in on cpu "
        f"{s['client_cpus']} (taskset / sched_setaffinity)"
        if s["pinned"]
        else "nothing pinned"
    )
    return f"""# Performance

Generated by `make bench` (`python -m bench`) from `bench/results/latest.json`; edit
`bench/findings.md` for the prose at the end, not this file.

- **Run**: {doc["mode"]}, {doc["started"]}, {doc["duration_s"]} s, commit
  `{m["git_commit"]}`{" (with uncommitted changes)" if m["git_dirty"] else ""}{source}
- **Machine**: {m["cpu_model"]}, {m["cores"]} cores, Linux {m["kernel"]}; load average
  at the end {m["load_average_1m_5m_at_end"][0]} (1 min) — the machine is shared
- **Versions**: {versions}
- **Pinning**: {pinning}; {s["client_processes"]} client processes,
  {s["channels_per_process"]} channels each (one TCP connection per channel)
{_merged_lines(doc)}
## Results

{markdown_table(doc)}

Columns: calls/s over the timed part (after warm-up); latency as the client saw it;
**srv CPU s/1k** = CPU seconds of the server process(es) (all threads, from the kernel's
per-process CPU clock, as `clock_getcpuclockid(3)` gives it; workers summed) per 1,000
calls; **srv busy** = server CPU seconds per wall second (100% = one core); **cli CPU s/1k**
= the load generator's own CPU per 1,000 calls. When the server was busy under
{s["client_bound_below_busy"]:.0%} of a core, its calls/s is not the server's limit, and
the remarks say what was: **client-bound** (the load
generator's core was full), **other work-bound** (the server's core was taken by other
processes on this shared machine), **latency-bound** (the calls waited, e.g. on AWS).
Compare such rows by CPU per call, which holds steadier.

![latency per scenario]({chart_name})

## Targets and checks

{verdicts_markdown(doc)}

{paired}{http}{attack}{edge}{accounts}{findings}
"""
