"""`python -m bench [--quick]`: every variant side by side in one run; writes
bench/results/latest.{md,json,png} (raw logs under bench/results/raw/, not committed)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import extras, report
from bench.run import Plan, run, source_tree

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 × 2 s per point (about a minute)")
    parser.add_argument("--repeats", type=int, help="runs per point (default 3)")
    parser.add_argument("--seconds", type=float, help="seconds per run (default 5)")
    parser.add_argument(
        "--connections", default="1,16,64", help="comma-separated (default 1,16,64)"
    )
    parser.add_argument("--only", default="", help="comma-separated proxy variants to run")
    parser.add_argument("--no-services", action="store_true", help="skip Redis + PostgreSQL")
    parser.add_argument("--no-extras", action="store_true", help="skip stream/webhook benches")
    parser.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--ref", help="run this git ref's src/ (e.g. HEAD) instead of the working tree's"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument(
        "--experiments",
        action="store_true",
        help="also run the experiments: the proxy with its ledger write skipped (what the rest"
        " costs), and the bare pass-through and jwt+limits under granian (when importable)",
    )
    parser.add_argument(
        "--upstream",
        choices=["auto", "stub", "simulator"],
        default="auto",
        help="what the proxies call: the nginx stub (auto: when nginx exists) or the simulator",
    )
    parser.add_argument(
        "--sustain",
        type=float,
        help="seconds of the RSS run of the full variants (default 30, --quick 6; 0: none)",
    )
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="skip the py-spy profile of the full variants (bench/results/profile-*.md)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let every process run on every CPU (default: the server alone on CPU 0, wrk and"
        " the upstream on CPU 1); what `serve --workers 2` on two CPUs looks like",
    )
    parser.add_argument(
        "--render", action="store_true", help="only rewrite latest.md and .png from latest.json"
    )
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads((args.out / "latest.json").read_text())
        _write(args.out, saved["raw"], saved["summary"], saved["extras"])
        return 0

    repeats = args.repeats or (1 if args.quick else 3)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    plan = Plan(
        concurrencies=tuple(int(c) for c in args.connections.split(",")),
        repeats=max(1, min(repeats, 20)),
        seconds=max(1.0, min(seconds, 60.0)),
        warmup_seconds=1.0,
        services=not args.no_services,
        only=tuple(x for x in args.only.split(",") if x),
        tool=args.tool,
        ref=args.ref,
        experiments=args.experiments,
        upstream=args.upstream,
        pin=not args.no_pin,
        sustain_seconds=max(
            0.0, min(args.sustain if args.sustain is not None else (6 if args.quick else 30), 600)
        ),
    )
    started = time.monotonic()
    raw = run(plan, args.out / "raw", log=lambda m: print(m, flush=True))
    extra: dict[str, dict[str, object]] = {}
    if not args.no_extras:
        with tempfile.TemporaryDirectory(prefix="vapi-bench-extras-") as tmp:
            env, _ = source_tree(args.ref, Path(tmp))
            extra = extras.run_extras(lambda m: print(m, flush=True), env=env)
    if not args.no_profile and not args.quick:
        raw["profiles"] = _profiles(args.ref)
    summary = report.summarise(raw)
    raw["total_seconds"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(
        json.dumps({"summary": summary, "extras": extra, "raw": raw}, indent=1, default=str)
    )
    _write(args.out, raw, summary, extra)
    print(f"took {raw['total_seconds']:.0f} s; wrote {args.out}/latest.md, .json, .png")
    return 0


PROFILED = ("jwt+limits", "jwt+limits-ledger")


def _profiles(ref: str | None) -> dict[str, str]:
    """py-spy under load for the full variants, each in its own process (bounded by a timeout);
    the summaries land in bench/results/profile-<variant>.md."""
    done: dict[str, str] = {}
    for variant in PROFILED:
        print(f"profiling {variant} (py-spy, 10 s)", flush=True)
        cmd = [sys.executable, "-m", "bench.profile", "--variant", variant]
        cmd += ["--ref", ref] if ref else []
        try:
            out = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=240,
                check=False,
                cwd=RESULTS.parents[1],
            )
        except subprocess.TimeoutExpired:
            done[variant] = "did not finish within 240 s"
            continue
        if out.returncode == 0:
            done[variant] = f"bench/results/profile-{variant}.md"
        else:
            done[variant] = f"failed: {out.stderr.strip()[-300:]}"
    return done


def _write(out: Path, raw: dict[str, Any], summary: dict[str, Any], extra: dict[str, Any]) -> None:
    md = report.markdown(raw, summary, extra)
    problem = report.plot(summary, out / "latest.png")
    if problem:
        md += f"\n{problem}\n"
    (out / "latest.md").write_text(md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
