"""Medians, ratios and goals from a run's raw figures; written as Markdown, JSON and a PNG."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench.setups import BARE, FULL, WORKER

DIRECT = "upstream"  # the upstream hit directly: added latency is over this
LEDGER_LIMITS, TWO_WORKERS, SCALED = "jwt+limits-ledger", "jwt+limits-ledger-2w", "jwt+redis+pg"


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """Median of the repeats per variant and concurrency, the spread of req/s, and every
    variant's ratios against both baselines (the Worker and the bare pass-through)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for v in raw["variants"]:
        if v["error"]:
            continue
        table[v["name"]] = {}
        for c, rows in v["points"].items():
            if not rows:
                continue
            rps = [r["rps"] for r in rows]
            med = statistics.median
            total = sum(r["requests"] for r in rows)
            table[v["name"]][c] = {
                "rps": med(rps),
                "p50_ms": med(r["p50_ms"] for r in rows),
                "p99_ms": med(r["p99_ms"] for r in rows),
                "cpu_us_per_req": med(r["cpu_us_per_req"] for r in rows),
                "spread_pct": (max(rps) - min(rps)) / med(rps) * 100 if med(rps) else 0.0,
                "non_2xx_pct": sum(r["non_2xx"] for r in rows) / max(1, total) * 100,
                "errors": sum(r["errors"] for r in rows),
            }
    direct = table.get(DIRECT, {})
    for by_c in table.values():
        for c, point in by_c.items():
            if c in direct:
                point["added_p50_ms"] = point["p50_ms"] - direct[c]["p50_ms"]
    for by_c in table.values():
        for c, point in by_c.items():
            for base, key in ((WORKER, "worker"), (BARE, "bare")):
                ref = table.get(base, {}).get(c)
                if not ref:
                    continue
                point[f"rps_x_{key}"] = point["rps"] / ref["rps"] if ref["rps"] else 0.0
                point[f"cpu_x_{key}"] = (
                    point["cpu_us_per_req"] / ref["cpu_us_per_req"]
                    if ref["cpu_us_per_req"]
                    else 0.0
                )
                if "added_p50_ms" in point and "added_p50_ms" in ref:
                    point[f"added_p50_minus_{key}_ms"] = point["added_p50_ms"] - ref["added_p50_ms"]
    return {"table": table, "goals": goals(table)}


def _get(table: dict[str, Any], name: str, c: int, key: str) -> float | None:
    point = table.get(name, {}).get(str(c))
    value = point.get(key) if point else None
    return float(value) if value is not None else None


def _goal(
    text: str, achieved: float | None, target: float, at_most: bool, digits: int = 2
) -> dict[str, Any]:
    met = achieved is not None and (achieved <= target if at_most else achieved >= target)
    return {
        "goal": text,
        "achieved": round(achieved, digits) if achieved is not None else None,
        "target": f"{'≤' if at_most else '≥'} {target:g}",
        "met": met,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def goals(table: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 17's goals (and issue 18's worker ratio), as ratios within this run."""
    out = []
    for name in (FULL, LEDGER_LIMITS):
        what = "memory limits" if name == FULL else "default durable limits"
        out.append(
            _goal(
                f"`{name}` ({what}): CPU per request ÷ bare pass-through's (c=16)",
                _get(table, name, 16, "cpu_x_bare"),
                1.6,
                at_most=True,
            )
        )
        out.append(
            _goal(
                f"`{name}`: req/s ÷ the Worker's (c=16)",
                _get(table, name, 16, "rps_x_worker"),
                0.6,
                at_most=False,
            )
        )
        out.append(
            _goal(
                f"`{name}`: added p50 at c=1 minus the Worker's, ms",
                _get(table, name, 1, "added_p50_minus_worker_ms"),
                0.3,
                at_most=True,
            )
        )
        out.append(
            _goal(
                f"`{name}`: p99 ÷ p50 at c=16",
                _ratio(_get(table, name, 16, "p99_ms"), _get(table, name, 16, "p50_ms")),
                4,
                at_most=True,
                digits=1,
            )
        )
    out.append(
        _goal(
            f"`{SCALED}` req/s ÷ `{FULL}`'s (c=16)",
            _ratio(_get(table, SCALED, 16, "rps"), _get(table, FULL, 16, "rps")),
            0.7,
            at_most=False,
        )
    )
    out.append(
        _goal(
            f"issue 18: `{TWO_WORKERS}` CPU per request ÷ `{FULL}`'s (one worker, in-process"
            " counters), c=16",
            _ratio(
                _get(table, TWO_WORKERS, 16, "cpu_us_per_req"),
                _get(table, FULL, 16, "cpu_us_per_req"),
            ),
            1.25,
            at_most=True,
        )
    )
    # Not a goal: the same ratio with no limits at all, so the share of the one above that
    # comes from running two processes (smaller batches, two event loops on one CPU) shows.
    control = _ratio(
        _get(table, "jwt-2w", 16, "cpu_us_per_req"), _get(table, "jwt", 16, "cpu_us_per_req")
    )
    if control is not None:
        out.append(
            {
                "goal": "control, not a goal: `jwt-2w` CPU per request ÷ `jwt`'s (no limits), c=16",
                "achieved": round(control, 2),
                "target": "–",
                "met": None,
            }
        )
    return out


def _pins(plan: dict[str, Any]) -> str:
    if plan["pinning"]:
        return str(plan["pinning"])
    if plan["cpus"] < 2:
        return "none (1 CPU)"
    return "none (`--no-pin`: every process on every CPU; latency figures include wrk's share)"


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _signed(x: float | None) -> str:
    return "–" if x is None else f"{x:+.1f}"


def markdown(raw: dict[str, Any], summary: dict[str, Any], extras: dict[str, Any]) -> str:
    plan = raw["plan"]
    lines = [
        f"# Benchmark: `python -m bench` ({raw['started']})",
        "",
        f"{plan['repeats']} × {plan['seconds']:g} s per point, medians shown; load generator "
        f"{plan['tool']}; {plan['cpus']} CPUs; pinning {_pins(plan)}; "
        f"upstream {raw.get('notes', {}).get('upstream', '?')}; "
        f"run took {raw['elapsed_seconds']:.0f} s. Load average before "
        f"{raw['load_average']['before']}, after {raw['load_average']['after']}.",
        "",
        "## Ratios against both baselines",
        "",
        f"× Worker / × bare: this variant's figure divided by `{WORKER}`'s (the guide's Worker"
        f" in workerd) and by `{BARE}`'s (Starlette + uvicorn + aiohttp, the same stack), at the"
        " same concurrency in the same run. req/s: higher is better; CPU: lower is better.",
        "",
        "| variant | conns | req/s × Worker | req/s × bare | CPU × Worker | CPU × bare"
        " | added p50 − Worker's, ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, by_c in summary["table"].items():
        if name == DIRECT:
            continue
        for c, p in by_c.items():
            lines.append(
                f"| {name} | {c} | {_fmt(p.get('rps_x_worker'))} | {_fmt(p.get('rps_x_bare'))}"
                f" | {_fmt(p.get('cpu_x_worker'))} | {_fmt(p.get('cpu_x_bare'))}"
                f" | {_fmt(p.get('added_p50_minus_worker_ms'))} |"
            )
    lines += [
        "",
        "## Absolute figures",
        "",
        "| variant | conns | req/s | p50 ms | p99 ms | added p50 ms | CPU µs/req"
        " | non-2xx % | req/s spread % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {v["name"]: v["label"] for v in raw["variants"]}
    for name, by_c in summary["table"].items():
        for c, p in by_c.items():
            lines.append(
                f"| {name} | {c} | {p['rps']:,.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | "
                f"{_fmt(p.get('added_p50_ms'))} | "
                f"{p['cpu_us_per_req']:,.0f} | {p['non_2xx_pct']:.2f} | {p['spread_pct']:.0f} |"
            )
    lines += [
        "",
        "| variant | what | processes | RSS MB (largest) | of which RssAnon MB | RssFile MB"
        " | peak RSS MB | supervisor RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in raw["variants"]:
        if v["error"]:
            lines.append(f"| {v['name']} | {labels[v['name']]} (failed: {v['error'][:120]}) |")
            continue
        lines.append(
            f"| {v['name']} | {labels[v['name']]} | {v.get('processes') or '–'} | "
            f"{_fmt(v.get('rss_mb'), 0)} | {_fmt(v.get('rss_anon_mb'), 0)} | "
            f"{_fmt(v.get('rss_file_mb'), 0)} | {_fmt(v.get('peak_rss_mb'), 0)} | "
            f"{_fmt(v.get('supervisor_rss_mb'), 0)} |"
        )
    lines.append(
        "\nCPU µs/req is the measured server process tree only (the nginx stub for `upstream`,"
        " workerd for `worker`, the proxy with its supervisor and workers otherwise), from /proc"
        " utime+stime over all threads. RSS: VmRSS of the largest process of the tree at the end"
        " of the run, split into RssAnon (the heap) and RssFile (mapped files: shared libraries"
        " and, in the proxy, the ledger's SQLite file under its mmap); supervisor: `vapi-proxy"
        " serve`'s own process, which starts the workers."
    )
    split = [
        (v["name"], c, rows)
        for v in raw["variants"]
        if not v["error"]
        for c, rows in v["points"].items()
        if any(r.get("busiest_share") is not None for r in rows)
    ]
    if split:
        lines += [
            "",
            "## How the workers split the load",
            "",
            "Variants with several workers: per round, the share of the process tree's CPU that"
            " its busiest process took, and the round's CPU per request. Two workers splitting"
            " the load evenly take about 50 % each; near 100 % one worker served (nearly) every"
            " connection: the kernel hands each new connection to whichever worker accepts first,"
            " and a kept-alive connection stays where it landed. `python -m bench.path_cost"
            " --processes 2` measures the workers' sharing with the load split evenly.",
            "",
            "| variant | conns | busiest process's share, by round | CPU µs/req, by round |",
            "|---|---:|---|---|",
        ]
        for name, c, rows in split:
            shares = " ".join(
                "–" if r.get("busiest_share") is None else f"{r['busiest_share']:.0%}" for r in rows
            )
            cpus = " ".join(f"{r['cpu_us_per_req']:,.0f}" for r in rows)
            lines.append(f"| {name} | {c} | {shares} | {cpus} |")
    sustained = [v for v in raw["variants"] if v.get("sustained")]
    if sustained:
        lines += [
            "",
            "## Memory over a sustained run (c=16)",
            "",
            "Sampled every 2 s. Growth: median of the 2nd half of the samples − the 1st's."
            " A leak shows in RssAnon (the heap); VmRSS = RssAnon + RssFile (+ shared), and"
            " RssFile grows with the ledger's file, mapped by SQLite up to `mmap_size`.",
            "",
            "| variant | seconds | requests | RssAnon MB | RssAnon growth MB"
            " | KB per 1,000 requests (RssAnon) | VmRSS MB | VmRSS growth MB"
            " | RssFile growth MB |",
            "|---|---:|---:|---|---:|---:|---|---:|---:|",
        ]
        for v in sustained:
            s_ = v["sustained"]
            rss = " ".join(f"{x:g}" for x in s_["rss_mb"])
            anon = " ".join(f"{x:g}" for x in s_.get("rss_anon_mb", [])) or "–"
            lines.append(
                f"| {v['name']} | {s_['seconds']:g} | {s_['requests']:,} | {anon} | "
                f"{_signed(s_.get('anon_growth_mb'))} | "
                f"{_fmt(s_.get('anon_kb_per_1000_requests'))} | {rss} | "
                f"{_signed(s_['growth_mb'])} | {_signed(s_.get('file_growth_mb'))} |"
            )
    lines += ["", "## Goals", "", "| goal | achieved | target | met |", "|---|---:|---:|---|"]
    for g in summary["goals"]:
        met = "–" if g["met"] is None else "yes" if g["met"] else "**no**"
        lines.append(f"| {g['goal']} | {_fmt(g['achieved'])} | {g['target']} | {met} |")
    lines += ["", "## Other benchmarks", ""]
    for name, result in extras.items():
        lines.append(f"- `{name}`: {_extra_text(result)}")
    if raw.get("profiles"):
        lines += ["", "## Profiles (py-spy, c=16)", ""]
        lines += [f"- `{k}`: {v}" for k, v in raw["profiles"].items()]
    if raw.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {k}: {v}" for k, v in raw["notes"].items()]
    return "\n".join(lines) + "\n"


def _extra_text(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return str(result["skipped"])
    if "error" in result:
        return f"failed: {result['error']}"
    if result.get("result") is None:
        printed = result.get("output") or "(nothing)"
        return "its main() returns no dict; what it printed:\n\n```\n" + printed + "\n```"
    return "`" + json.dumps(result["result"], default=str)[:1500] + "`"


def plot(summary: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no PNG (pip install matplotlib)"
    table = summary["table"]
    names = list(table)
    conns = sorted({int(c) for by_c in table.values() for c in by_c})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(1, len(conns))
    for i, c in enumerate(conns):
        xs = [n + (i - (len(conns) - 1) / 2) * width for n in range(len(names))]
        ax1.bar(xs, [table[n].get(str(c), {}).get("rps", 0) for n in names], width, label=f"c={c}")
        ax2.bar(
            xs, [table[n].get(str(c), {}).get("p50_ms", 0) for n in names], width, label=f"c={c}"
        )
    for ax, title in ((ax1, "requests/s (median, log)"), (ax2, "p50 latency, ms (median, log)")):
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.set_yscale("log")  # the nginx stub and the proxy differ a hundredfold
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return None
