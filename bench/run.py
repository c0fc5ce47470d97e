"""The measurement plan: start every target once, then interleave repeats (round r measures
every variant at every concurrency before round r+1), so drift on a noisy machine spreads
over all variants instead of landing on one."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import load, procs, setups
from bench.procs import Service

# The proxy (and nginx, the other proxy) get CPU 0 to themselves; the load generator and the
# simulator share CPU 1, for every variant alike.
SERVER_CPU, LOAD_CPU, SIM_CPU = 0, 1, 1
ROOT = Path(__file__).resolve().parents[1]


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
        v = target.variant
        if use_wrk:
            return load.run_wrk(
                target.url,
                v.body,
                v.headers,
                connections=connections,
                seconds=seconds,
                cpu=LOAD_CPU,
                script_dir=tmp,
            )
        return load.run_pyload(
            target.url, v.body, v.headers, connections=connections, seconds=seconds, cpu=LOAD_CPU
        )

    return run


def _start_targets(
    stack: contextlib.ExitStack, plan: Plan, tmp: Path, raw: Path, log: Callable[[str], None]
) -> tuple[list[Target], Service, dict[str, Any]]:
    notes: dict[str, Any] = {}
    src_env, notes["code"] = source_tree(plan.ref, tmp)
    log(f"measuring {notes['code']}")
    sim_cfg = tmp / "sandbox.yaml"
    sim_cfg.write_text(yaml.safe_dump(setups.sandbox_config()))
    port = procs.free_port()
    sim = Service(
        "simulator",
        setups.sandbox_command(sim_cfg, port),
        port=port,
        log=raw / "simulator.log",
        cpu=SIM_CPU,
        env=src_env,
    )
    stack.callback(sim.stop)
    sim.wait_ready()
    sim_headers = setups.simulator_headers()
    direct_url = sim.url + "/call/web"
    status, reply = _post(direct_url, setups.DIRECT_BODY, sim_headers)
    if status != 201:
        raise RuntimeError(f"the simulator answered {status}: {reply[:500]!r}")
    log(f"simulator on {sim.url} (CPU {SIM_CPU}); reply {len(reply)} bytes")

    targets: list[Target] = []
    base = setups.baseline_variants(sim_headers)
    targets.append(Target(base[0], direct_url, sim))
    if shutil.which("nginx"):
        stub_port, proxy_port = procs.free_port(), procs.free_port()
        ngx_dir = tmp / "nginx"
        ngx_dir.mkdir()
        conf = ngx_dir / "nginx.conf"
        conf.write_text(setups.nginx_config(ngx_dir, stub_port, proxy_port, port, reply.decode()))
        ngx = Service(
            "nginx",
            ["nginx", "-p", str(ngx_dir), "-c", str(conf), "-e", str(ngx_dir / "nginx-error.log")],
            port=proxy_port,
            log=raw / "nginx.log",
            cpu=SERVER_CPU,
        )
        stack.callback(ngx.stop)
        ngx.wait_ready()
        procs.wait_port(stub_port)
        targets.append(Target(base[1], f"http://127.0.0.1:{stub_port}/call/web", ngx))
        targets.append(Target(base[2], f"http://127.0.0.1:{proxy_port}/call/web", ngx))
    else:
        notes["nginx"] = "nginx is not installed: the stub floor and the nginx proxy were skipped"

    scaled: tuple[dict[str, str], str] | None = None
    if plan.services:
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
    env = {**src_env, "VAPI_API_KEY": setups.PRIVATE_KEY, "VAPI_BASE_URL": sim.url}
    for variant in variants:
        if plan.only and variant.name not in plan.only:
            continue
        cfg = setups.write_proxy_config(tmp, variant)
        proxy_env = dict(env)
        if variant.module.startswith("bench."):  # the proxy runs in tmp: let it find bench/
            paths = [src_env.get("PYTHONPATH"), str(ROOT)]
            proxy_env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        p = procs.free_port()
        svc = Service(
            variant.name,
            setups.proxy_command(cfg, p, variant.module),
            port=p,
            log=raw / f"proxy-{variant.name}.log",
            cpu=SERVER_CPU,
            env=proxy_env,
            cwd=tmp,
        )
        stack.callback(svc.stop)
        target = Target(variant, svc.url + "/call/web", svc)
        try:
            svc.wait_ready(60)
            status, body = _post(target.url, variant.body, variant.headers)
            if status != 201:
                raise RuntimeError(f"first request answered {status}: {body[:300]!r}")
        except Exception as exc:
            target.error = str(exc)[:600]
            log(f"{variant.name}: {target.error}")
        targets.append(target)
    return targets, sim, notes


def run(plan: Plan, raw: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    raw.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_before = procs.load_average()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vapi-bench-")))
        targets, sim, notes = _start_targets(stack, plan, tmp, raw, log)
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
                    before, sim_before = t.service.sample(), sim.sample()  # type: ignore[union-attr]
                    result = loader(t, c, plan.seconds)
                    after, sim_after = t.service.sample(), sim.sample()  # type: ignore[union-attr]
                    row = result.as_dict()
                    n = max(1, result.requests)
                    row["cpu_us_per_req"] = (after.cpu_seconds - before.cpu_seconds) / n * 1e6
                    row["sim_cpu_us_per_req"] = (
                        (sim_after.cpu_seconds - sim_before.cpu_seconds) / n * 1e6
                    )
                    row["repeat"] = r
                    points[t.variant.name][c].append(row)
                    log(
                        f"round {r + 1}/{plan.repeats} {t.variant.name:>18} c={c:<3}"
                        f" {result.rps:8.0f} req/s  p50 {result.p50_ms:6.2f} ms"
                        f"  p99 {result.p99_ms:6.2f} ms  non-2xx {result.non_2xx}"
                    )
        peaks = {t.variant.name: t.service.sample().peak_rss_kb for t in live if t.service}
    return {
        "plan": {
            "concurrencies": list(plan.concurrencies),
            "repeats": plan.repeats,
            "seconds": plan.seconds,
            "cpus": procs.cpu_count(),
            "pinning": {"server": SERVER_CPU, "load": LOAD_CPU, "simulator": SIM_CPU}
            if procs.cpu_count() >= 2
            else None,
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
                "peak_rss_mb": round(peaks.get(t.variant.name, 0) / 1024, 1),
                "points": {str(c): rows for c, rows in points.get(t.variant.name, {}).items()},
            }
            for t in targets
        ],
        "notes": notes,
    }
