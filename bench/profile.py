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

import yaml

from bench import load, procs, setups
from bench.procs import Service
from bench.run import LOAD_CPU, ROOT, SERVER_CPU, SIM_CPU, source_tree

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
    parser.add_argument("--variant", default="jwt+limits")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--ref", help="profile this git ref's src/ instead of the working tree")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = parser.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    RAW.mkdir(parents=True, exist_ok=True)
    out = RAW / f"profile-{args.variant}.txt"
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vapi-profile-")))
        src_env, code = source_tree(args.ref, tmp)
        print(f"profiling {code}")
        cfg = tmp / "sandbox.yaml"
        cfg.write_text(yaml.safe_dump(setups.sandbox_config()))
        port = procs.free_port()
        sim = Service(
            "simulator",
            setups.sandbox_command(cfg, port),
            port=port,
            log=RAW / "profile-simulator.log",
            cpu=SIM_CPU,
        )
        stack.callback(sim.stop)
        sim.wait_ready()
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
        proxy = Service(
            variant.name,
            setups.proxy_command(setups.write_proxy_config(tmp, variant), p, variant.module),
            port=p,
            log=RAW / f"profile-proxy-{variant.name}.log",
            cpu=SERVER_CPU,
            env={
                **src_env,
                "VAPI_API_KEY": setups.PRIVATE_KEY,
                "VAPI_BASE_URL": sim.url,
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
    print(f"{out}: {agg['samples'][0][1]:.0f} samples\n\nself time (leaf):")
    for name, share in agg["self"]:
        print(f"  {share:5.1f}%  {name}")
    print("\ninclusive:")
    for name, share in agg["inclusive"]:
        print(f"  {share:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
