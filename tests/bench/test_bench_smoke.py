"""The bench harness works: the Python load generator counts requests against a real simulator,
the baselines pass a real request through to it, and a run's figures become medians, ratios
against both baselines, goals and a Markdown table.

What runs here without the bench setup: the two Python baselines (their stack is the
package's own), the nginx stub's reply and config as text. nginx and workerd themselves
(scripts/bench-setup) run only where installed: their tests skip, saying so, elsewhere."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.profile import aggregate, parts

from bench import load, procs, report, setups
from vapi_proxy.sandbox import SandboxSettings, run_sandbox

ROOT = Path(__file__).resolve().parents[2]


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


def _row(rps: float, p50: float, cpu: float = 500) -> dict[str, float]:
    return {
        "requests": rps * 5,
        "seconds": 5,
        "rps": rps,
        "p50_ms": p50,
        "p90_ms": p50,
        "p99_ms": p50,
        "non_2xx": 0,
        "errors": 0,
        "cpu_us_per_req": cpu,
        "upstream_cpu_us_per_req": 10,
        "repeat": 0,
    }


def test_summary_reports_ratios_against_both_baselines_and_the_goals() -> None:
    def variant(name: str, rps: float, p50: float, cpu: float) -> dict[str, object]:
        points = {
            "1": [_row(rps, p50, cpu), _row(rps * 1.1, p50, cpu)],
            "16": [_row(rps * 3, p50 * 4, cpu)],
        }
        return {
            "name": name,
            "label": name,
            "kind": "x",
            "error": None,
            "peak_rss_mb": 90,
            "rss_mb": 80,
            "rss_anon_mb": 60,
            "rss_file_mb": 19,
            "supervisor_rss_mb": 30,
            "processes": 2,
            "points": points,
            "sustained": {
                "seconds": 4,
                "requests": 100,
                "rss_mb": [80, 80, 81],
                "rss_anon_mb": [61, 62, 62],
                "rss_file_mb": [18, 19, 20],
                "growth_mb": 0.5,
                "kb_per_1000_requests": 5.0,
                "anon_growth_mb": 0.0,
                "anon_kb_per_1000_requests": 0.0,
                "file_growth_mb": 0.5,
            }
            if name == "jwt+limits"
            else None,
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
            variant("upstream", 5000, 0.1, 10),
            variant("worker", 2000, 0.4, 160),
            variant("bare-starlette", 1600, 0.5, 200),
            variant("open", 800, 1.0, 400),
            variant("jwt+limits", 600, 1.2, 480),
        ],
        "notes": {},
    }
    summary = report.summarise(raw)
    point = summary["table"]["open"]["1"]
    assert point["rps"] == 840  # median of 800 and 880
    assert round(point["added_p50_ms"], 6) == 0.9
    full = summary["table"]["jwt+limits"]["16"]
    assert round(full["rps_x_worker"], 6) == 0.3  # 1800 / 6000
    assert round(full["cpu_x_bare"], 6) == 2.4  # 480 / 200
    assert round(summary["table"]["jwt+limits"]["1"]["added_p50_minus_worker_ms"], 6) == 0.8
    goals = {g["goal"]: g for g in summary["goals"]}
    cpu_goal = next(g for k, g in goals.items() if k.startswith("`jwt+limits` (memory"))
    assert cpu_goal["achieved"] == 2.4 and cpu_goal["met"] is False
    missing = [g for g in goals.values() if g["achieved"] is None]
    assert missing and not any(g["met"] for g in missing)  # variants not run never "meet" a goal
    text = report.markdown(raw, summary, {"stream_bench": {"skipped": "absent"}})
    assert "| jwt+limits | 16 | 0.30 | 0.38 | 3.00 | 2.40 |" in text
    assert "80 80 81" in text and "absent" in text
    assert "| jwt+limits | 4 | 100 | 61 62 62 | +0.0 | 0.00 | 80 80 81 | +0.5 | +0.5 |" in text
    assert "| 2 | 80 | 60 | 19 | 90 | 30 |" in text  # VmRSS, RssAnon, RssFile, peak, supervisor
    # A report saved before RssAnon was sampled still renders, with dashes.
    for v in raw["variants"]:
        sustained = v["sustained"]
        if sustained:
            for key in list(sustained):
                if "anon" in key or "file" in key:
                    del sustained[key]
    old = report.markdown(raw, summary, {})
    assert "| jwt+limits | 4 | 100 | – | – | – | 80 80 81 | +0.5 | – |" in old


def test_the_report_shows_how_each_round_split_the_load_between_workers() -> None:
    def variant(name: str, rows: list[dict[str, float]]) -> dict[str, object]:
        return {"name": name, "label": name, "kind": "x", "error": None, "points": {"16": rows}}

    def split(cpu: float, share: float) -> dict[str, float]:
        return {**_row(1000, 5, cpu), "busiest_share": share}

    raw = {
        "plan": {
            "concurrencies": [16],
            "repeats": 3,
            "seconds": 5,
            "cpus": 2,
            "pinning": None,
            "tool": "wrk",
        },
        "started": "now",
        "elapsed_seconds": 1,
        "load_average": {"before": 0, "after": 0},
        "variants": [
            variant("jwt+limits", [_row(1000, 5, 300)] * 3),
            variant("jwt+limits-ledger-2w", [split(300, 0.97), split(390, 0.52), split(380, 0.6)]),
        ],
        "notes": {},
    }
    text = report.markdown(raw, report.summarise(raw), {})
    assert "| jwt+limits-ledger-2w | 16 | 97% 52% 60% | 300 390 380 |" in text
    assert "| jwt+limits | 16 |" not in text.split("How the workers split")[1]
    # One worker only (or a run saved before the split was sampled): no such section.
    for row in raw["variants"][1]["points"]["16"]:
        del row["busiest_share"]
    assert "How the workers split" not in report.markdown(raw, report.summarise(raw), {})


def test_busiest_share_is_the_largest_process_share_of_the_cpu_spent() -> None:
    before = procs.ProcSample(3.0, 0, 0, 3, cpu_by_pid={1: 1.0, 2: 1.0, 3: 1.0})
    after = procs.ProcSample(7.0, 0, 0, 3, cpu_by_pid={1: 1.0, 2: 4.0, 3: 2.0})
    assert procs.busiest_share(before, after) == 0.75  # 3 of the 4 seconds spent
    assert procs.busiest_share(after, after) is None  # nothing spent
    sample = procs.sample(os.getpid())
    assert sample.cpu_by_pid[os.getpid()] > 0
    assert sum(sample.cpu_by_pid.values()) == pytest.approx(sample.cpu_seconds)


def test_path_cost_processes_need_a_share_of_the_concurrency_each() -> None:
    from bench import path_cost

    for argv in (
        ["--processes", "3", "--concurrency", "2"],
        ["--processes", "0"],
        ["--processes", "2", "--profile"],
    ):
        with pytest.raises(SystemExit) as exc:
            path_cost.main(argv)
        assert exc.value.code == 2


def test_no_pin_lets_every_process_run_on_every_cpu() -> None:
    from bench.run import Plan, pinning

    assert pinning(Plan(pin=False)) is None
    pins = pinning(Plan())
    if procs.cpu_count() >= 2:
        assert pins == {"server": 0, "load": 1, "upstream": 1}
    else:
        assert pins is None
    # The report says which layout the figures come from.
    plan = {"cpus": 2, "pinning": None}
    assert "--no-pin" in report._pins(plan)
    assert report._pins({**plan, "cpus": 1}) == "none (1 CPU)"
    assert report._pins({**plan, "pinning": {"server": 0}}) == "{'server': 0}"


def test_memory_splits_vmrss_into_the_heap_and_mapped_files() -> None:
    mem = procs.memory(os.getpid())
    assert mem.rss > 0 and mem.anon > 0 and mem.file > 0
    assert mem.anon + mem.file <= mem.rss <= mem.peak
    sample = procs.sample(os.getpid())
    assert sample.rss_anon_kb > 0 and sample.rss_file_kb > 0


def test_granian_variants_are_experiments_skipped_without_granian(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench import granian_app

    assert all(v.server == "uvicorn" for v in setups.baselines())
    granian = [v for v in setups.baselines(experiments=True) if v.server == "granian"]
    assert [v.name for v in granian] == [setups.GRANIAN_BARE]
    if granian_app.available():
        cmd = setups.baseline_command(granian[0], None, 8080)
        assert cmd[1:3] == ["-m", "granian"] and cmd[-1] == "bench.bare_starlette:app"
    monkeypatch.setattr(granian_app, "available", lambda: False)
    assert granian_app.granian_command("bench.granian_app:app", 8080, factory=True) is None
    with pytest.raises(RuntimeError, match="granian is not importable"):
        setups.baseline_command(granian[0], None, 8080)


def test_stub_call_is_a_call_of_about_1_5_kb_with_nginx_request_id() -> None:
    text = setups.stub_call()
    filled = text.replace("$request_id", "f" * 32)
    call = json.loads(filled)
    assert call["id"] == "f" * 32 and call["webCallUrl"].endswith("f" * 32)
    assert 1400 <= len(filled) <= 1700
    assert "$" not in text.replace("$request_id", "")  # no other nginx variable by accident
    conf = setups.nginx_config(Path("nginx-dir"), 8080, text)
    assert "listen 127.0.0.1:8080;" in conf and "return 201 '" in conf


@pytest.fixture
def simulator() -> Iterator[str]:
    with run_sandbox(SandboxSettings(**setups.sandbox_config())) as sim:
        yield sim.url


def _serve(cmd: list[str], port: int, env: dict[str, str], log: Path) -> procs.Service:
    svc = procs.Service("baseline", cmd, port=port, log=log, env=env, cwd=ROOT)
    try:
        svc.wait_ready(30)
    except Exception:
        svc.stop()
        raise
    return svc


def _post(url: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(  # noqa: S310 - loopback
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()


def _baseline_env(upstream: str) -> dict[str, str]:
    return {
        "VAPI_API_KEY": setups.PRIVATE_KEY,
        "VAPI_BASE_URL": upstream,
        "BENCH_ASSISTANT_ID": setups.ASSISTANT_ID,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }


@pytest.mark.parametrize("module", ["bench.bare_starlette", "bench.bare_aiohttp"])
def test_python_baselines_pass_a_web_call_through(
    module: str, simulator: str, tmp_path: Path
) -> None:
    port = procs.free_port()
    svc = _serve(
        [sys.executable, "-m", module, str(port)],
        port,
        _baseline_env(simulator),
        tmp_path / "log",
    )
    try:
        status, headers, body = _post(f"{svc.url}/call/web", setups.CLIENT_BODY)
    finally:
        svc.stop()
    assert status == 201, body
    call = json.loads(body)
    assert call["assistantId"] == setups.ASSISTANT_ID and call["webCallUrl"]
    assert headers["access-control-allow-origin"] == "*"


@pytest.mark.skipif(
    setups.workerd_binary() is None, reason="workerd not installed (scripts/bench-setup)"
)
def test_the_guides_worker_passes_a_web_call_through_in_workerd(
    simulator: str, tmp_path: Path
) -> None:
    port = procs.free_port()
    config = setups.workerd_files(tmp_path, port)
    variant = setups.baselines()[0]
    cmd = setups.baseline_command(variant, config, port)
    svc = _serve(cmd, port, _baseline_env(simulator), tmp_path / "log")
    try:
        status, headers, body = _post(f"{svc.url}/call/web", setups.CLIENT_BODY)
    finally:
        svc.stop()
    assert status == 201, body
    assert json.loads(body)["assistantId"] == setups.ASSISTANT_ID
    assert headers["access-control-allow-origin"] == "*"


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed (bench-setup)")
def test_nginx_stub_answers_a_fresh_call_id_per_request(tmp_path: Path) -> None:
    port = procs.free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(setups.nginx_config(tmp_path, port, setups.stub_call()))
    cmd = ["nginx", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "err.log")]
    svc = _serve(cmd, port, {}, tmp_path / "log")
    try:
        ids = {json.loads(_post(f"{svc.url}/call/web", b"{}")[2])["id"] for _ in range(3)}
    finally:
        svc.stop()
    assert len(ids) == 3


def test_profile_aggregation_of_folded_stacks(tmp_path: Path) -> None:
    folded = tmp_path / "p.txt"
    folded.write_text("main (a.py:1);f (b.py:2) 3\nmain (a.py:1);g (c.py:3) 1\n")
    agg = aggregate(folded)
    assert agg["self"][0] == ("f (b.py:2)", 75.0)
    assert ("main (a.py:1)", 100.0) in agg["inclusive"]


def test_profile_parts_charge_each_sample_to_its_innermost_known_part(tmp_path: Path) -> None:
    folded = tmp_path / "p.txt"
    folded.write_text(
        "run (uvicorn/server.py:1);record (vapi_proxy/ledger/batch.py:9);"
        "execute (sqlalchemy/engine/base.py:3) 3\n"
        "run (uvicorn/server.py:1);decode (jwt/api_jwt.py:5) 1\n"
    )
    shares = dict(parts(folded))
    assert shares["SQLite ledger and limit store (SQLAlchemy, aiosqlite, sqlite3)"] == 75.0
    assert shares["JWT verification (PyJWT, cryptography)"] == 25.0


@pytest.mark.skipif(procs.dies_with_us(["x"]) == ["x"], reason="no setpriv --pdeathsig here")
def test_a_service_stops_when_the_bench_that_started_it_is_killed(tmp_path: Path) -> None:
    """Services run in sessions of their own, so a bench killed by `timeout` or SIGKILL (no
    `finally` runs) left its nginx stub and proxies running."""
    import signal
    import subprocess
    import time

    starter = (
        "import sys, time; from pathlib import Path; from bench import procs; "
        "svc = procs.Service('sleeper', [sys.executable, '-c', 'import time; time.sleep(120)'], "
        f"port=procs.free_port(), log=Path({str(tmp_path / 'svc.log')!r})); "
        "print(svc.pid, flush=True); time.sleep(120)"
    )
    bench = subprocess.Popen(
        [sys.executable, "-c", starter], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert bench.stdout is not None
        child = int(bench.stdout.readline())
        os.kill(child, 0)  # running
        bench.send_signal(signal.SIGKILL)
        bench.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            with open(f"/proc/{child}/stat") as stat:  # a zombie of init's has stopped too
                if stat.read().split(") ")[-1].startswith("Z"):
                    break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            raise AssertionError("the service outlived the bench that started it")
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(10)
        if bench.stdout is not None:
            bench.stdout.close()


@pytest.mark.skipif(procs.dies_with_us(["x"]) == ["x"], reason="no setpriv --pdeathsig here")
def test_a_service_whose_starter_died_before_the_signal_was_armed_never_runs(
    tmp_path: Path,
) -> None:
    """A bench killed between the fork and `setpriv`'s `prctl` left an orphan that no signal
    would ever stop (CI saw it on 2 of 4 legs). Here the process that asked for the service is
    not the one that starts it, as it is when the asker has died by the time the signal is
    armed: the service must not run."""
    import subprocess

    ran = tmp_path / "ran"
    cmd = procs.dies_with_us([sys.executable, "-c", f"open({str(ran)!r}, 'w').close()"])

    orphaned = subprocess.run(
        ["sh", "-c", '"$@"; exit $?', "sh", *cmd], capture_output=True, text=True, timeout=30
    )
    assert orphaned.returncode == 1
    assert "has exited" in orphaned.stderr
    assert not ran.exists()

    ours = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert ours.returncode == 0, ours.stderr
    assert ran.exists()
