"""Profile the proxy's `/call/web` under load with py-spy: `python -m bench.profile`.

    python -m bench.profile [--variant jwt+limits] [--seconds 10] [--connections 16]

Starts the simulator and one proxy variant (as `python -m bench` does, same pinning), samples
the proxy with `py-spy record -f raw` while wrk loads it, and prints the functions with the
most samples: self (leaf) time and inclusive time. The raw folded stacks go to
bench/results/raw/profile-<variant>.txt (feed them to flamegraph.pl or speedscope).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench import load, procs, setups
from bench import run as run_mod
from bench.procs import Service
from bench.run import LOAD_CPU, ROOT, SERVER_CPU, source_tree

RAW = Path(__file__).resolve().parent / "results" / "raw"


def aggregate(folded: Path, top: int = 30) -> dict[str, list[tuple[str, float]]]:
    """Self and inclusive shares (percent of samples) per function from py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1] for f in stack.split(";") if f]
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
    pct = 100 / max(1, total)
    return {
        "self": [(f, round(n * pct, 1)) for f, n in own.most_common(top)],
        "inclusive": [(f, round(n * pct, 1)) for f, n in incl.most_common(top * 2)],
        "samples": [("total", float(total))],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--variant", default=setups.FULL)
    parser.add_argument("--upstream", choices=["auto", "stub", "simulator"], default="auto")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--ref", help="profile this git ref's src/ instead of the working tree")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the summary from the raw stacks"
    )
    args = parser.parse_args(argv)
    if args.render:
        summary = RAW.parent / f"profile-{args.variant}.md"
        header = summary.read_text().splitlines()[2]  # what ran, kept from the first render
        agg = aggregate(RAW / f"profile-{args.variant}.txt")
        text = summary_markdown(args.variant, "", args.connections, args.seconds, "", agg)
        lines = text.splitlines()
        lines[2] = header
        summary.write_text("\n".join(lines) + "\n")
        return 0
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    RAW.mkdir(parents=True, exist_ok=True)
    out = RAW / f"profile-{args.variant}.txt"
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vapi-profile-")))
        src_env, code = source_tree(args.ref, tmp)
        print(f"profiling {code}")
        upstream_url, _, what = run_mod._start_upstream(
            stack, tmp, RAW, run_mod.Plan(upstream=args.upstream), src_env
        )
        print(f"upstream: {what}")
        scaled: tuple[dict[str, str], str | None] = (None, None)  # type: ignore[assignment]
        if args.variant == "jwt+redis+pg":
            from bench.services import scaled_out

            scaled = stack.enter_context(scaled_out())
        variants = {
            v.name: v
            for v in setups.proxy_variants(
                tmp, setups.jwt_keys(), scaled[0], scaled[1], experiments=True
            )
        }
        variant = variants[args.variant]
        p = procs.free_port()
        cmd, extra = setups.proxy_launch(variant, setups.write_proxy_config(tmp, variant), p, tmp)
        proxy = Service(
            variant.name,
            cmd,
            port=p,
            log=RAW / f"profile-proxy-{variant.name}.log",
            cpu=SERVER_CPU,
            env={
                **src_env,
                **extra,
                "VAPI_API_KEY": setups.PRIVATE_KEY,
                "VAPI_BASE_URL": upstream_url,
                # bench.nowrite (the experiment) must be importable from the temp dir
                "PYTHONPATH": os.pathsep.join(
                    p for p in (src_env.get("PYTHONPATH"), str(ROOT)) if p
                ),
            },
            cwd=tmp,
        )
        stack.callback(proxy.stop)
        proxy.wait_ready(60)
        url = proxy.url + "/call/web"

        def loadgen(seconds: float) -> load.LoadResult:
            return load.run_wrk(
                url,
                variant.body,
                variant.headers,
                connections=args.connections,
                seconds=seconds,
                cpu=LOAD_CPU,
                script_dir=tmp,
            )

        loadgen(2)  # warm up
        result: list[load.LoadResult] = []
        worker = threading.Thread(target=lambda: result.append(loadgen(args.seconds + 2)))
        worker.start()
        subprocess.run(
            [
                pyspy,
                "record",
                "-p",
                str(proxy.pid),
                "-f",
                "raw",
                "-o",
                str(out),
                "-d",
                str(args.seconds),
                "-r",
                str(args.rate),
                "--threads",
                "--subprocesses",  # `vapi-proxy serve` runs its worker under a supervisor
            ],
            check=True,
            capture_output=True,
            timeout=args.seconds + 60,
        )
        worker.join(args.seconds + 60)
    if result:
        r = result[0]
        print(f"under py-spy: {r.rps:.0f} req/s, p50 {r.p50_ms:.2f} ms (sampling slows it)")
    agg = aggregate(out)
    under = (
        f"{result[0].rps:.0f} req/s, p50 {result[0].p50_ms:.2f} ms under py-spy"
        if result
        else "no load result"
    )
    text = summary_markdown(args.variant, code, args.connections, args.seconds, under, agg)
    summary = RAW.parent / f"profile-{args.variant}.md"
    summary.write_text(text)
    print(text)
    print(f"wrote {summary} (raw folded stacks: {out})")
    return 0


# Where a frame's file says which part of the request path it belongs to (first match wins).
PARTS = [
    (
        "SQLite ledger and limit store (SQLAlchemy, aiosqlite, sqlite3)",
        ("sqlalchemy", "aiosqlite", "sqlite3", "ledger/", "limits/embedded"),
    ),
    ("JWT verification (PyJWT, cryptography)", ("jwt/", "cryptography", "auth/")),
    ("limits (reserve, plans, windows)", ("limits/",)),
    ("upstream call (upstream/wire.py; aiohttp where still used)", ("aiohttp/", "upstream/")),
    ("Starlette routing, requests, responses", ("starlette/",)),
    ("uvicorn, httptools, uvloop", ("uvicorn/", "httptools", "uvloop")),
    ("the proxy's own code elsewhere", ("vapi_proxy/",)),
]


# Leaf frames that are a thread waiting, not working (py-spy's own idle detection misses
# them): the thread pool and aiosqlite's thread on their queues, the supervisor on its pipe.
IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py",
    "_connection_worker_thread (aiosqlite/core.py",
    "_Writer._next (vapi_proxy/ledger/engine.py",  # the SQLite writer waiting for work
    "Connection._recv (multiprocessing/connection.py",
    "Connection.poll (multiprocessing/connection.py",
    "main (multiprocessing/resource_tracker.py",
    "wait (threading.py",
    "select (selectors.py",
)
IDLE = "idle (threads waiting on a queue or pipe; excluded from the shares)"
LOOP = "the event loop in C (uvloop: I/O, callbacks, or waiting in epoll)"


def parts(folded: Path) -> list[tuple[str, float]]:
    """Share of the busy samples per part of the request path: each sample is charged to the
    part of its innermost frame that belongs to one (so a SQLAlchemy call made by the ledger
    is the ledger's). Idle samples (a thread waiting) are counted apart, as % of all samples."""
    counts: collections.Counter[str] = collections.Counter()
    idle = total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        if any(leaf.startswith(w) or f";{w}" in leaf for w in IDLE_LEAVES):
            idle += n
            continue
        if leaf.startswith("Runner.run (asyncio/runners.py") or "run_until_complete" in leaf:
            counts[LOOP] += n
            continue
        charged = "other (interpreter, stdlib)"
        for frame in reversed(frames):
            where = frame.rsplit("(", 1)[-1]
            hit = next((name for name, keys in PARTS if any(k in where for k in keys)), None)
            if hit:
                charged = hit
                break
        counts[charged] += n
    busy = max(1, total - idle)
    out = [(k, round(v * 100 / busy, 1)) for k, v in counts.most_common()]
    return [*out, (IDLE, round(idle * 100 / max(1, total), 1))]


def summary_markdown(
    variant: str,
    code: str,
    connections: int,
    seconds: int,
    under: str,
    agg: dict[str, list[tuple[str, float]]],
) -> str:
    folded = RAW / f"profile-{variant}.txt"
    lines = [
        f"# Profile of `{variant}` under load (py-spy)",
        "",
        f"{code}; wrk at c={connections} for {seconds} s, proxy pinned to CPU {SERVER_CPU};"
        f" {under}; {agg['samples'][0][1]:.0f} samples over all threads (raw folded stacks in"
        " bench/results/raw/, not committed). Reproduce: `python -m bench.profile --variant"
        f" {variant}`.",
        "",
        "## By part of the request path",
        "",
        "Shares of the busy samples (all threads; the idle row is % of all samples).",
        "",
        "| part | share % |",
        "|---|---:|",
    ]
    shares = parts(folded)
    lines += [f"| {name} | {share} |" for name, share in shares]
    idle = dict(shares).get(IDLE, 0.0)
    busy = 100 / max(1e-9, 100 - idle)

    def row(name: str, share: float) -> str:
        waiting = any(name.startswith(w) for w in IDLE_LEAVES)
        return f"| {share} | {'idle' if waiting else round(share * busy, 1)} | `{name}` |"

    head = ["| % of all | % of busy | function |", "|---:|---:|---|"]
    lines += ["", "## Self time (leaf frames)", "", *head]
    lines += [row(name, share) for name, share in agg["self"][:25]]
    # Inclusive shares of outer frames contain idle samples: % of all only.
    lines += ["", "## Inclusive", "", "| % of all | function |", "|---:|---|"]
    lines += [f"| {share} | `{name}` |" for name, share in agg["inclusive"][:45]]
    lines += [
        "",
        "py-spy counts a thread waiting for the GIL as busy, so the busy shares of the side"
        " threads (aiosqlite's, the thread pool's, uvicorn's health-check pong thread) include"
        " some waiting.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
