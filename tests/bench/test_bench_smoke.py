"""The bench harness works: the Python load generator counts requests against a real simulator,
and a run's figures become medians, goals and a Markdown table (no nginx or wrk needed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.profile import aggregate

from bench import load, report, setups
from vapi_proxy.sandbox import SandboxSettings, run_sandbox


def test_python_load_generator_counts_requests_against_the_simulator() -> None:
    settings = SandboxSettings(**setups.sandbox_config())
    with run_sandbox(settings) as sim:
        result = asyncio.run(
            load.pyload(
                sim.url + "/call/web",
                setups.DIRECT_BODY,
                setups.simulator_headers(),
                connections=4,
                seconds=1.0,
                max_requests=2_000,
            )
        )
    assert set(result.as_dict()) == {
        "requests",
        "seconds",
        "rps",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "non_2xx",
        "errors",
        "tool",
    }
    assert result.requests > 10
    assert result.non_2xx == 0 and result.errors == 0
    assert 0 < result.p50_ms <= result.p99_ms
    assert result.rps > 0


def test_wrk_script_posts_the_body_with_headers() -> None:
    script = load.wrk_script(b'{"assistantId": "a\\"b"}', {"Authorization": "Bearer t"})
    assert 'wrk.method = "POST"' in script
    assert 'wrk.headers["Authorization"] = "Bearer t"' in script
    assert load.MARK in script


def _row(rps: float, p50: float) -> dict[str, float]:
    return {
        "requests": rps * 5,
        "seconds": 5,
        "rps": rps,
        "p50_ms": p50,
        "p90_ms": p50,
        "p99_ms": p50,
        "non_2xx": 0,
        "errors": 0,
        "cpu_us_per_req": 500,
        "sim_cpu_us_per_req": 200,
        "repeat": 0,
    }


def test_summary_reports_medians_added_latency_and_goals(tmp_path: Path) -> None:
    def variant(name: str, rps: float, p50: float) -> dict[str, object]:
        points = {"1": [_row(rps, p50), _row(rps * 1.1, p50)], "16": [_row(rps * 3, p50 * 4)]}
        return {
            "name": name,
            "label": name,
            "kind": "x",
            "error": None,
            "peak_rss_mb": 90,
            "points": points,
        }

    raw = {
        "plan": {
            "concurrencies": [1, 16],
            "repeats": 2,
            "seconds": 5,
            "cpus": 2,
            "pinning": None,
            "tool": "python",
        },
        "started": "now",
        "elapsed_seconds": 1,
        "load_average": {"before": 0, "after": 0},
        "variants": [
            variant("direct", 1000, 0.5),
            variant("open", 800, 1.0),
            variant("jwt", 700, 1.1),
            variant("jwt+limits", 600, 1.2),
        ],
        "notes": {},
    }
    summary = report.summarise(raw)
    point = summary["table"]["open"]["1"]
    assert point["rps"] == 840  # median of 800 and 880
    assert round(point["added_p50_ms"], 6) == 0.5
    goals = {g["goal"]: g for g in summary["goals"]}
    assert len(goals) == 5
    text = report.markdown(raw, summary, {"stream_bench": {"skipped": "absent"}})
    assert "| jwt+limits | 16 |" in text and "absent" in text


def test_profile_aggregation_of_folded_stacks(tmp_path: Path) -> None:
    folded = tmp_path / "p.txt"
    folded.write_text("main (a.py:1);f (b.py:2) 3\nmain (a.py:1);g (c.py:3) 1\n")
    agg = aggregate(folded)
    assert agg["self"][0] == ("f (b.py:2)", 75.0)
    assert ("main (a.py:1)", 100.0) in agg["inclusive"]
