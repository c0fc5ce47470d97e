"""The measurement plan: start every target once, then interleave repeats (round r measures
every variant at every concurrency before round r+1), so drift on a noisy machine spreads
over all variants instead of landing on one."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import granian_app, load, procs, setups
from bench.procs import Service

# The server under test (a proxy or a baseline) gets CPU 0 to itself; the load generator and
# the upstream share CPU 1, for every variant alike.
SERVER_CPU, LOAD_CPU, UPSTREAM_CPU = 0, 1, 1
SIM_CPU = UPSTREAM_CPU  # the simulator, when it is the upstream (and for bench.profile)
ROOT = Path(__file__).resolve().parents[1]
GRANIAN_SKIPPED = "granian is not importable (pip install granian): experiment skipped"


@dataclass(frozen=True)
class Plan:
    concurrencies: tuple[int, ...] = (1, 16, 64)
    repeats: int = 3
    seconds: float = 5.0
    warmup_seconds: float = 1.0
    services: bool = True
    only: tuple[str, ...] = ()
    tool: str = "auto"  # auto | wrk | python
    ref: str | None = None  # a git ref to run instead of the working tree's src/
    experiments: bool = False  # add the proxy with its ledger write skipped
    upstream: str = "auto"  # auto (the nginx stub when nginx exists) | stub | simulator
    baselines_always: bool = True  # run the baselines even with --only (ratios need them)
    sustain_seconds: float = 30.0  # the RSS run of the full variants (0: none)
    pin: bool = True  # False (--no-pin): every process may run on every CPU


def pinning(plan: Plan) -> dict[str, int] | None:
    """Which CPU the server, the load generator and the upstream are pinned to, or None: one
    CPU, or `--no-pin` (what `serve --workers N` on N CPUs looks like, wrk and the upstream
    sharing them)."""
    if not plan.pin or procs.cpu_count() < 2:
        return None
    return {"server": SERVER_CPU, "load": LOAD_CPU, "upstream": UPSTREAM_CPU}


def _cpu(plan: Plan, role: str) -> int | None:
    pins = pinning(plan)
    return None if pins is None else pins[role]


def source_tree(ref: str | None, tmp: Path) -> tuple[dict[str, str], str]:
    """Environment that makes child processes import `ref`'s src/ (from `git archive`, which
    leaves the repository untouched), and a description of what runs."""
    if ref is None:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
        )
        return {}, f"working tree {out.stdout.strip() or '?'}"
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", ref + "^{commit}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tree = tmp / "src-tree"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "src"], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return {"PYTHONPATH": str(tree / "src")}, f"{ref} ({commit[:10]})"


@dataclass
class Target:
    variant: setups.Variant
    url: str
    service: Service | None  # the process whose CPU and memory are charged
    error: str | None = None


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - a loopback URL we built
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _loader(plan: Plan, tmp: Path) -> Callable[..., load.LoadResult]:
    use_wrk = plan.tool == "wrk" or (plan.tool == "auto" and load.have_wrk())

    def run(target: Target, connections: int, seconds: float) -> load.LoadResult:
        v, cpu = target.variant, _cpu(plan, "load")
        if use_wrk:
            return load.run_wrk(
                target.url,
                v.body,
                v.headers,
                connections=connections,
                seconds=seconds,
                cpu=cpu,
                script_dir=tmp,
            )
        return load.run_pyload(
            target.url, v.body, v.headers, connections=connections, seconds=seconds, cpu=cpu
        )

    return run


def _start_upstream(
    stack: contextlib.ExitStack, tmp: Path, raw: Path, plan: Plan, src_env: dict[str, str]
) -> tuple[str, Service, str]:
    """The upstream every proxy and baseline calls: the nginx stub (a fresh call id per
    request, almost no CPU) or, without nginx or with `--upstream simulator`, the simulator.
    Both on the load generator's CPU. Returns (base URL, service, what it is)."""
    if plan.upstream != "simulator" and shutil.which("nginx"):
        port = procs.free_port()
        ngx_dir = tmp / "nginx"
        ngx_dir.mkdir()
        conf = ngx_dir / "nginx.conf"
        conf.write_text(setups.nginx_config(ngx_dir, port, setups.stub_call()))
        ngx = Service(
            "nginx-stub",
            ["nginx", "-p", str(ngx_dir), "-c", str(conf), "-e", str(ngx_dir / "nginx-error.log")],
            port=port,
            log=raw / "nginx.log",
            cpu=_cpu(plan, "upstream"),
        )
        stack.callback(ngx.stop)
        ngx.wait_ready()
        return ngx.url, ngx, "nginx `return 201` stub, ≈1.5 KB call with `$request_id`"
    if plan.upstream == "stub":
        raise RuntimeError("--upstream stub needs nginx (scripts/bench-setup)")
    sim_cfg = tmp / "sandbox.yaml"
    sim_cfg.write_text(yaml.safe_dump(setups.sandbox_config()))
    port = procs.free_port()
    sim = Service(
        "simulator",
        setups.sandbox_command(sim_cfg, port),
        port=port,
        log=raw / "simulator.log",
        cpu=_cpu(plan, "upstream"),
        env=src_env,
    )
    stack.callback(sim.stop)
    sim.wait_ready()
    return sim.url, sim, "the simulator (`vapi-proxy sandbox`; nginx missing or not chosen)"


def _start_targets(
    stack: contextlib.ExitStack, plan: Plan, tmp: Path, raw: Path, log: Callable[[str], None]
) -> tuple[list[Target], Service, dict[str, Any]]:
    notes: dict[str, Any] = {}
    src_env, notes["code"] = source_tree(plan.ref, tmp)
    log(f"measuring {notes['code']}")
    upstream_url, upstream, notes["upstream"] = _start_upstream(stack, tmp, raw, plan, src_env)
    sim_headers = setups.simulator_headers()
    direct = setups.upstream_variant()
    status, reply = _post(upstream_url + "/call/web", direct.body, sim_headers)
    if status != 201:
        raise RuntimeError(f"the upstream answered {status}: {reply[:500]!r}")
    log(f"upstream {notes['upstream']} on {upstream_url}; reply {len(reply)} bytes")
    notes["upstream_reply_bytes"] = len(reply)

    targets: list[Target] = [Target(direct, upstream_url + "/call/web", upstream)]
    env = {
        **src_env,
        "VAPI_API_KEY": setups.PRIVATE_KEY,
        "VAPI_BASE_URL": upstream_url,
        "BENCH_ASSISTANT_ID": setups.ASSISTANT_ID,
    }
    bench_path = os.pathsep.join(p for p in (src_env.get("PYTHONPATH"), str(ROOT)) if p)

    def start(variant: setups.Variant, cmd: list[str], port: int, extra: dict[str, str]) -> None:
        svc = Service(
            variant.name,
            cmd,
            port=port,
            log=raw / f"{variant.kind}-{variant.name}.log",
            cpu=_cpu(plan, "server"),
            env={**env, **extra},
            cwd=tmp,
        )
        stack.callback(svc.stop)
        target = Target(variant, svc.url + "/call/web", svc)
        try:
            svc.wait_ready(60)
            status, body = _post(target.url, variant.body, variant.headers)
            if status not in (200, 201):
                raise RuntimeError(f"first request answered {status}: {body[:300]!r}")
        except Exception as exc:
            target.error = str(exc)[:600]
            log(f"{variant.name}: {target.error}")
        targets.append(target)

    granian_missing = not granian_app.available()
    for variant in setups.baselines(experiments=plan.experiments):
        # The baselines always run (the ratios need them); an experimental one only if named.
        always = plan.baselines_always and not variant.name.startswith("exp:")
        if plan.only and variant.name not in plan.only and not always:
            continue
        if variant.server == "granian" and granian_missing:
            notes[variant.name] = GRANIAN_SKIPPED
            log(f"{variant.name}: {GRANIAN_SKIPPED}")
            continue
        port = procs.free_port()
        config = None
        if variant.name == setups.WORKER:
            if setups.workerd_binary() is None:
                notes["worker"] = "workerd is not installed (scripts/bench-setup): row skipped"
                continue
            config = setups.workerd_files(tmp, port)
        start(
            variant,
            setups.baseline_command(variant, config, port),
            port,
            {"PYTHONPATH": bench_path},
        )

    scaled: tuple[dict[str, str], str] | None = None
    if plan.services and (not plan.only or "jwt+redis+pg" in plan.only):
        try:
            from bench.services import scaled_out

            scaled = stack.enter_context(scaled_out())
        except Exception as exc:
            notes["services"] = f"PostgreSQL/Redis unavailable, variant skipped: {exc}"[:400]
    keys = setups.jwt_keys()
    variants = setups.proxy_variants(
        tmp,
        keys,
        scaled[0] if scaled else None,
        scaled[1] if scaled else None,
        experiments=plan.experiments,
    )
    for variant in variants:
        if plan.only and variant.name not in plan.only:
            continue
        if variant.server == "granian" and granian_missing:
            notes[variant.name] = GRANIAN_SKIPPED
            log(f"{variant.name}: {GRANIAN_SKIPPED}")
            continue
        cfg = setups.write_proxy_config(tmp, variant)
        port = procs.free_port()
        cmd, extra = setups.proxy_launch(variant, cfg, port, tmp)
        if variant.module.startswith("bench.") or variant.server == "granian":
            extra["PYTHONPATH"] = bench_path
        start(variant, cmd, port, extra)
    return targets, upstream, notes


def run(plan: Plan, raw: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    raw.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_before = procs.load_average()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vapi-bench-")))
        targets, upstream, notes = _start_targets(stack, plan, tmp, raw, log)
        loader = _loader(plan, tmp)
        live = [t for t in targets if t.error is None]
        for t in live:
            loader(t, 16, plan.warmup_seconds)
        points: dict[str, dict[int, list[dict[str, Any]]]] = {
            t.variant.name: {c: [] for c in plan.concurrencies} for t in live
        }
        for r in range(plan.repeats):
            for t in live:
                for c in plan.concurrencies:
                    before, up_before = t.service.sample(), upstream.sample()  # type: ignore[union-attr]
                    result = loader(t, c, plan.seconds)
                    after, up_after = t.service.sample(), upstream.sample()  # type: ignore[union-attr]
                    row = result.as_dict()
                    n = max(1, result.requests)
                    row["cpu_us_per_req"] = (after.cpu_seconds - before.cpu_seconds) / n * 1e6
                    row["upstream_cpu_us_per_req"] = (
                        (up_after.cpu_seconds - up_before.cpu_seconds) / n * 1e6
                    )
                    if t.variant.workers > 1:
                        row["busiest_share"] = procs.busiest_share(before, after)
                    row["rss_mb"] = round(after.rss_kb / 1024, 1)
                    row["rss_anon_mb"] = round(after.rss_anon_kb / 1024, 1)
                    row["rss_file_mb"] = round(after.rss_file_kb / 1024, 1)
                    row["repeat"] = r
                    points[t.variant.name][c].append(row)
                    log(
                        f"round {r + 1}/{plan.repeats} {t.variant.name:>20} c={c:<3}"
                        f" {result.rps:8.0f} req/s  p50 {result.p50_ms:6.2f} ms"
                        f"  p99 {result.p99_ms:6.2f} ms  CPU {row['cpu_us_per_req']:6.0f} µs/req"
                        f"  non-2xx {result.non_2xx}"
                        + (
                            f"  busiest process {row['busiest_share']:.0%} of the CPU"
                            if row.get("busiest_share") is not None
                            else ""
                        )
                    )
        sustained = {
            t.variant.name: _sustain(t, loader, plan.sustain_seconds, log)
            for t in live
            if plan.sustain_seconds > 0 and t.variant.name in SUSTAINED
        }
        samples = {t.variant.name: t.service.sample() for t in live if t.service}
        upstream_name = targets[0].variant.name
        samples[upstream_name] = upstream.sample()
    return {
        "plan": {
            "concurrencies": list(plan.concurrencies),
            "repeats": plan.repeats,
            "seconds": plan.seconds,
            "cpus": procs.cpu_count(),
            "pinning": pinning(plan),
            "tool": "wrk" if (plan.tool != "python" and load.have_wrk()) else "python",
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_seconds": round(time.time() - started, 1),
        "load_average": {"before": load_before, "after": procs.load_average()},
        "variants": [
            {
                "name": t.variant.name,
                "label": t.variant.label,
                "kind": t.variant.kind,
                "error": t.error,
                "peak_rss_mb": _mb(samples, t.variant.name, "peak_rss_kb"),
                "rss_mb": _mb(samples, t.variant.name, "rss_kb"),
                "rss_anon_mb": _mb(samples, t.variant.name, "rss_anon_kb"),
                "rss_file_mb": _mb(samples, t.variant.name, "rss_file_kb"),
                "supervisor_rss_mb": _mb(samples, t.variant.name, "root_rss_kb")
                if t.variant.kind == "proxy"
                else None,
                "processes": samples[t.variant.name].processes
                if t.variant.name in samples
                else None,
                "sustained": sustained.get(t.variant.name),
                "points": {str(c): rows for c, rows in points.get(t.variant.name, {}).items()},
            }
            for t in targets
        ],
        "notes": notes,
    }


# The variants whose memory is watched over a sustained run: the full policy with both limit
# stores, and `open` (no rules) as the control: limit rules hold every call's concurrency slot
# until its max duration + grace (no webhook settles them here), which is state, not a leak.
SUSTAINED = ("open", setups.FULL, "jwt+limits-ledger")


def _mb(samples: dict[str, procs.ProcSample], name: str, field: str) -> float | None:
    sample = samples.get(name)
    return round(getattr(sample, field) / 1024, 1) if sample else None


def _sustain(
    target: Target,
    loader: Callable[..., load.LoadResult],
    seconds: float,
    log: Callable[[str], None],
    step: float = 2.0,
) -> dict[str, Any]:
    """Load at c=16 for `seconds` (in `step`-second runs, a bounded count) and sample the
    server's memory after each: a leak shows as a slope, not a peak, and in RssAnon (the heap);
    VmRSS also counts mapped file pages (RssFile: the ledger's SQLite file under its mmap),
    which grow with the file up to the map's size and are not a leak."""
    assert target.service is not None
    series: dict[str, list[float]] = {"rss_mb": [], "rss_anon_mb": [], "rss_file_mb": []}

    def take() -> None:
        now = target.service.sample()  # type: ignore[union-attr]
        series["rss_mb"].append(round(now.rss_kb / 1024, 1))
        series["rss_anon_mb"].append(round(now.rss_anon_kb / 1024, 1))
        series["rss_file_mb"].append(round(now.rss_file_kb / 1024, 1))

    take()
    requests = 0
    for _ in range(max(1, min(600, round(seconds / step)))):
        requests += loader(target, 16, step).requests
        take()

    def growth(values: list[float]) -> float:
        half = len(values) // 2
        return statistics.median(values[half:]) - statistics.median(values[: half or 1])

    rss, anon = series["rss_mb"], series["rss_anon_mb"]
    log(
        f"sustained {target.variant.name}: {requests} requests, RssAnon {anon[0]} → {anon[-1]}"
        f" MB, VmRSS {rss[0]} → {rss[-1]} MB"
    )
    per_1000 = 1024 / max(1, requests) * 1000
    return {
        "seconds": seconds,
        "requests": requests,
        **series,
        "growth_mb": round(growth(rss), 1),  # VmRSS
        "kb_per_1000_requests": round(growth(rss) * per_1000, 2),
        "anon_growth_mb": round(growth(anon), 1),  # the heap: what "flat" is judged on
        "anon_kb_per_1000_requests": round(growth(anon) * per_1000, 2),
        "file_growth_mb": round(growth(series["rss_file_mb"]), 1),
    }
