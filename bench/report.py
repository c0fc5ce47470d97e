"""Medians, ratios and goals from a run's raw figures; written as Markdown, JSON and a PNG."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

# name: (description, numerator variant, denominator variant, concurrency, minimum ratio)
RATIO_GOALS = [
    ("auth + limits + ledger keep ≥ 75% of no-policy throughput", "jwt+limits", "open", 16, 0.75),
    ("RS256 JWT auth ≥ 0.85 of no-auth throughput", "jwt", "open", 16, 0.85),
    ("limits + ledger (SQLite) ≥ 0.8 of limits off", "jwt+limits", "jwt", 16, 0.8),
]
FULL = "jwt+limits"


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """Median of the repeats per variant and concurrency, plus the spread of req/s."""
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
                "sim_cpu_us_per_req": med(r["sim_cpu_us_per_req"] for r in rows),
                "spread_pct": (max(rps) - min(rps)) / med(rps) * 100 if med(rps) else 0.0,
                "non_2xx_pct": sum(r["non_2xx"] for r in rows) / max(1, total) * 100,
                "errors": sum(r["errors"] for r in rows),
            }
    direct = table.get("direct", {})
    for by_c in table.values():
        for c, point in by_c.items():
            if c in direct:
                point["added_p50_ms"] = point["p50_ms"] - direct[c]["p50_ms"]
                point["vs_direct"] = point["rps"] / direct[c]["rps"] if direct[c]["rps"] else 0
    return {"table": table, "goals": goals(table)}


def _rps(table: dict[str, Any], name: str, c: int) -> float | None:
    point = table.get(name, {}).get(str(c))
    return point["rps"] if point else None


def goals(table: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    full16 = _rps(table, FULL, 16)
    out.append(
        {
            "goal": "auth + limits + SQLite ledger ≥ 1,500 req/s at 16 connections",
            "achieved": round(full16, 0) if full16 is not None else None,
            "target": 1500,
            "met": full16 is not None and full16 >= 1500,
        }
    )
    added = table.get(FULL, {}).get("1", {}).get("added_p50_ms")
    out.append(
        {
            "goal": "auth + limits + SQLite ledger adds ≤ 1 ms p50 at 1 connection over direct",
            "achieved": round(added, 3) if added is not None else None,
            "target": 1.0,
            "met": added is not None and added <= 1.0,
        }
    )
    for text, num, den, c, minimum in RATIO_GOALS:
        a, b = _rps(table, num, c), _rps(table, den, c)
        ratio = a / b if a is not None and b else None
        out.append(
            {
                "goal": f"{text} (c={c})",
                "achieved": round(ratio, 3) if ratio is not None else None,
                "target": minimum,
                "met": ratio is not None and ratio >= minimum,
            }
        )
    return out


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def markdown(raw: dict[str, Any], summary: dict[str, Any], extras: dict[str, Any]) -> str:
    plan = raw["plan"]
    lines = [
        f"# Benchmark: `python -m bench` ({raw['started']})",
        "",
        f"{plan['repeats']} × {plan['seconds']:g} s per point, medians shown; load generator "
        f"{plan['tool']}; {plan['cpus']} CPUs; pinning {plan['pinning'] or 'none (1 CPU)'}; "
        f"run took {raw['elapsed_seconds']:.0f} s. Load average before "
        f"{raw['load_average']['before']}, after {raw['load_average']['after']}.",
        "",
        "| variant | conns | req/s | p50 ms | p99 ms | added p50 ms | × direct | CPU µs/req"
        " | non-2xx % | req/s spread % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {v["name"]: v["label"] for v in raw["variants"]}
    for name, by_c in summary["table"].items():
        for c, p in by_c.items():
            lines.append(
                f"| {name} | {c} | {p['rps']:,.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | "
                f"{_fmt(p.get('added_p50_ms'))} | {_fmt(p.get('vs_direct'))} | "
                f"{p['cpu_us_per_req']:,.0f} | {p['non_2xx_pct']:.2f} | {p['spread_pct']:.0f} |"
            )
    lines += ["", "| variant | what | peak RSS MB |", "|---|---|---:|"]
    for v in raw["variants"]:
        state = f"failed: {v['error'][:120]}" if v["error"] else f"{v['peak_rss_mb']:.0f}"
        lines.append(f"| {v['name']} | {labels[v['name']]} | {state} |")
    lines.append(
        "\nCPU µs/req is the measured server process only (the simulator for `direct`, nginx for "
        "the nginx rows, the proxy otherwise), from /proc utime+stime. nginx's RSS covers both "
        "nginx rows (one process)."
    )
    lines += ["", "## Goals", "", "| goal | achieved | target | met |", "|---|---:|---:|---|"]
    for g in summary["goals"]:
        met = "yes" if g["met"] else "**no**"
        digits = 0 if g["target"] >= 100 else 3
        lines.append(f"| {g['goal']} | {_fmt(g['achieved'], digits)} | {g['target']} | {met} |")
    lines += ["", "## Other benchmarks", ""]
    for name, result in extras.items():
        lines.append(f"- `{name}`: {_extra_text(result)}")
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
