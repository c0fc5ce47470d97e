"""The proxy's own request path, in-process: `python -m bench.path_cost`.

    python -m bench.path_cost [--variant open] [--requests 4000] [--concurrency 16] [--profile]

Builds the app from a bench variant's config (as `python -m bench` writes it), runs its lifespan
and drives `POST /call/web` through the ASGI app directly (no HTTP server, no load generator),
against the nginx stub, at a fixed concurrency. Prints the CPU per request of the whole process
(all threads: the ledger's included) and of the event loop's thread alone. Without uvicorn and
wrk in the picture, a change to the proxy's code shows as a difference of a few microseconds,
where `python -m bench` needs many seconds of load to see it. `--profile` prints cProfile's view
of the event loop's thread (deterministic, so every call is slowed: read shares, not times).
`--ref` is not offered: run it in two checkouts. The bench's figures remain the ones to quote.

`--processes N` runs the app in N processes on one ledger file (as `serve --workers N` does),
each at `--concurrency` ÷ N, every repeat started together, and prints the CPU per request of
all of them: what workers sharing the embedded limits cost, with the load split evenly by
construction (under `python -m bench` the kernel hands each of wrk's connections to whichever
worker accepts it first, so the split varies from round to round). The processes share the
server's CPU unless `--no-pin`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procs, setups
from bench.procs import Service
from bench.run import LOAD_CPU, SERVER_CPU


def _scope(path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    raw = [(b"host", b"127.0.0.1:8080"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 40000),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": raw,
        "state": {},
    }


async def _one(app: Any, template: dict[str, Any], body: bytes) -> int:
    scope = dict(template)
    scope["state"] = {}
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never leaves
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _drive(app: Any, variant: setups.Variant, requests: int, concurrency: int) -> int:
    template = _scope("/call/web", variant.headers, variant.body)
    failures = 0

    async def worker(count: int) -> None:
        nonlocal failures
        for _ in range(count):
            if await _one(app, template, variant.body) not in (200, 201):
                failures += 1

    per = max(1, requests // concurrency)
    await asyncio.gather(*(worker(per) for _ in range(concurrency)))
    return failures


async def _lifespan(app: Any) -> tuple[asyncio.Task[None], asyncio.Queue[Any], asyncio.Queue[Any]]:
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    outbox: asyncio.Queue[Any] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.ensure_future(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    message = await outbox.get()
    if message["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"start-up failed: {message}")
    return task, inbox, outbox


def _isolate(runtime: Any, *, upstream: bool, ledger: bool) -> None:
    """No upstream I/O and no ledger write: what is left is the proxy's own Python path."""
    import itertools

    from vapi_proxy.upstream.client import UpstreamResponse, endpoint_label

    template = setups.stub_call().encode()
    ids = itertools.count(1)
    client = runtime.upstream

    async def request(method: str, path: str, body: bytes | None = None) -> UpstreamResponse:
        started = time.perf_counter()
        data = template.replace(b"$request_id", f"{next(ids):032x}".encode())
        if client.observer is not None:
            client.observer(endpoint_label(path), time.perf_counter() - started, None)
        return UpstreamResponse(
            status=201,
            body=client.redact(data),
            content_type="application/json",
            retry_after=None,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            endpoint=endpoint_label(path),
        )

    async def record_call(**_: Any) -> bool:
        return True

    if upstream:
        client.request = request
    if ledger:
        runtime.ledger.record_call = record_call


def _thread_times() -> dict[str, float]:
    """CPU seconds of each of this process's threads, by Python thread name (Linux /proc;
    {} elsewhere). Threads Python did not start (nginx is another process) show as tids."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    times: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    tasks = Path("/proc/self/task")
    for task in tasks.glob("*") if tasks.exists() else ():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(task.name), f"tid {task.name}")
        times[name] = times.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return times


class _Pauses:
    def __init__(self) -> None:
        self.times: dict[int, list[float]] = {}
        self._started = 0.0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            elapsed = time.perf_counter() - self._started
            self.times.setdefault(info["generation"], []).append(elapsed)


def _gc_pauses() -> _Pauses:
    pauses = _Pauses()
    gc.callbacks.append(pauses.callback)
    return pauses


class _Together:
    """The other processes of `--processes`: wait for all of them, report to the parent."""

    def __init__(self, barrier: Any, results: Any, index: int) -> None:
        self.barrier, self.results, self.index = barrier, results, index

    def wait(self) -> None:
        self.barrier.wait(timeout=600)

    def report(self, item: object) -> None:
        self.results.put((self.index, item))


async def _main(
    args: argparse.Namespace,
    config: Path,
    variant: setups.Variant,
    together: _Together | None = None,
) -> None:
    from vapi_proxy.app import create_app
    from vapi_proxy.settings import load_secrets, load_settings

    app = create_app(load_settings(config), load_secrets())
    if args.isolate or args.fake_upstream or args.no_ledger_write:
        _isolate(
            app.runtime,  # type: ignore[attr-defined]
            upstream=args.isolate or args.fake_upstream,
            ledger=args.isolate or args.no_ledger_write,
        )
    task, inbox, outbox = await _lifespan(app)
    try:
        failures = await _drive(app, variant, args.warmup, args.concurrency)
        if failures:
            raise RuntimeError(f"{failures} warm-up requests failed")
        pauses = _gc_pauses() if args.gc else None
        profiler = cProfile.Profile() if args.profile else None
        n = (args.requests // args.concurrency) * args.concurrency
        runs: list[tuple[float, float]] = []
        if together is not None:
            together.report("ready")
        for _ in range(args.repeats):
            if together is not None:
                together.wait()
            threads0 = _thread_times() if args.threads else {}
            cpu0, thread0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
            if profiler is not None:
                profiler.enable()
            failures = await _drive(app, variant, args.requests, args.concurrency)
            if profiler is not None:
                profiler.disable()
            cpu = (time.process_time() - cpu0) / n * 1e6
            thread = (time.thread_time() - thread0) / n * 1e6
            wall = time.perf_counter() - wall0
            runs.append((cpu, thread))
            if together is not None:
                together.report((cpu * n / 1e6, n, failures, wall))
            else:
                print(
                    f"{variant.name}: {n} requests at c={args.concurrency}, {failures} failed; "
                    f"CPU {cpu:.0f} µs/req (event loop thread {thread:.0f}), {n / wall:.0f} req/s"
                )
            if args.threads:
                spent = {
                    k: (v - threads0.get(k, 0.0)) / n * 1e6 for k, v in _thread_times().items()
                }
                print(
                    "  by thread (µs/req, /proc ticks)"
                    + ("" if together is None else f", process {together.index}")
                    + ":",
                    ", ".join(
                        f"{k} {v:.0f}" for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v
                    ),
                )
        if pauses is not None:
            gc.callbacks.remove(pauses.callback)
            for generation, times in sorted(pauses.times.items()):
                times.sort()
                print(
                    f"gc generation {generation}: {len(times)} collections, "
                    f"{sum(times) / n * 1e6:.1f} µs/req, longest {times[-1] * 1000:.2f} ms"
                )
        if args.repeats > 1 and together is None:
            cpus = sorted(r[0] for r in runs)
            threads = sorted(r[1] for r in runs)
            mid = len(runs) // 2
            print(
                f"{variant.name}: median CPU {cpus[mid]:.0f} µs/req (min {cpus[0]:.0f}), "
                f"event loop thread {threads[mid]:.0f} (min {threads[0]:.0f})"
            )
        if profiler is not None:
            stats = pstats.Stats(profiler)
            if args.dump:
                stats.dump_stats(args.dump)
            stats.sort_stats("tottime").print_stats(args.top)
            stats.sort_stats("cumulative").print_stats(args.top)
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task


def _child(
    args: argparse.Namespace,
    config: Path,
    variant: setups.Variant,
    barrier: Any,
    results: Any,
    index: int,
) -> None:
    import uvloop

    uvloop.run(_main(args, config, variant, _Together(barrier, results, index)))


def _processes(args: argparse.Namespace, config: Path, variant: setups.Variant) -> None:
    """`--processes N`: N copies of the app on one ledger file, each at c ÷ N, measured together."""
    import multiprocessing

    n = args.processes
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    child_args = argparse.Namespace(**vars(args))
    child_args.concurrency = args.concurrency // n
    child_args.requests = args.requests // n
    child_args.warmup = max(1, args.warmup // n)
    children: list[Any] = []

    def next_result(timeout: float) -> Any:
        """The next report of any process; fails at once if one of them died."""
        import queue

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return results.get(timeout=1)[1]
            except queue.Empty:
                dead = [c.exitcode for c in children if c.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a process of --processes exited with {dead[0]}") from None
        raise TimeoutError(f"no report from the processes within {timeout:.0f} s")

    try:
        for i in range(n):  # one at a time: the first one's start-up migrates the ledger
            child = ctx.Process(
                target=_child, args=(child_args, config, variant, barrier, results, i)
            )
            child.start()
            children.append(child)
            ready = next_result(300)
            if ready != "ready":
                raise RuntimeError(f"process {i} did not start: {ready!r}")
        cpus = []
        for _ in range(args.repeats):
            got = [next_result(600) for _ in range(n)]
            cpu = sum(g[0] for g in got) / sum(g[1] for g in got) * 1e6
            requests = sum(g[1] for g in got)
            failures = sum(g[2] for g in got)
            wall = max(g[3] for g in got)
            cpus.append(cpu)
            print(
                f"{variant.name}: {n} processes, {requests} requests at "
                f"c={child_args.concurrency} each, {failures} failed; CPU {cpu:.0f} µs/req "
                f"(each: {', '.join(f'{g[0] / g[1] * 1e6:.0f}' for g in got)}), "
                f"{requests / wall:.0f} req/s"
            )
        if args.repeats > 1:
            cpus.sort()
            print(f"{variant.name}: {n} processes, median CPU {cpus[len(cpus) // 2]:.0f} µs/req")
    except BaseException:
        for child in children:
            child.terminate()
        raise
    finally:
        for child in children:
            child.join(timeout=60)
            if child.is_alive():
                child.terminate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.path_cost")
    parser.add_argument("--variant", default="open")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--gc", action="store_true", help="time the garbage collector's pauses")
    parser.add_argument(
        "--threads", action="store_true", help="CPU per request of each thread (Linux /proc)"
    )
    parser.add_argument("--fake-upstream", action="store_true", help="a canned reply, no I/O")
    parser.add_argument("--no-ledger-write", action="store_true", help="skip `record_call`")
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="no upstream I/O (a canned reply) and no ledger write: the proxy's own path alone",
    )
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--dump", help="with --profile: write the pstats file here")
    parser.add_argument(
        "--no-metrics-dir",
        action="store_true",
        help="keep metric values in memory (as without `serve`) instead of in files",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="N processes on one ledger file, as `serve --workers N` (see the docstring)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="let the app's processes use every CPU"
    )
    args = parser.parse_args(argv)
    if args.processes > 1 and (args.profile or args.gc):
        parser.error("--processes does not combine with --profile or --gc")
    if args.processes < 1 or args.concurrency < args.processes:
        parser.error("--processes must be between 1 and --concurrency")
    if not shutil.which("nginx"):
        print("path_cost needs nginx (scripts/bench-setup)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vapi-path-") as name, contextlib.ExitStack() as stack:
        tmp = Path(name)
        port = procs.free_port()
        (tmp / "nginx").mkdir()
        conf = tmp / "nginx" / "nginx.conf"
        conf.write_text(setups.nginx_config(tmp / "nginx", port, setups.stub_call()))
        ngx = Service(
            "nginx-stub",
            ["nginx", "-p", str(tmp / "nginx"), "-c", str(conf)],
            port=port,
            log=tmp / "nginx.log",
            cpu=LOAD_CPU if procs.cpu_count() > 1 else None,
        )
        stack.callback(ngx.stop)
        ngx.wait_ready()
        keys = setups.jwt_keys()
        scaled: tuple[dict[str, str] | None, str | None] = (None, None)
        if args.variant == "jwt+redis+pg":
            from bench.services import scaled_out

            scaled = stack.enter_context(scaled_out())
        variant = next(
            v
            for v in setups.proxy_variants(tmp, keys, scaled[0], scaled[1])
            if v.name == args.variant
        )
        config = setups.write_proxy_config(tmp, variant)
        os.environ["VAPI_API_KEY"] = setups.PRIVATE_KEY
        os.environ["VAPI_BASE_URL"] = ngx.url
        if not args.no_metrics_dir:
            # As `serve` runs every worker (prometheus_client reads it at import).
            (tmp / "metrics").mkdir()
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(tmp / "metrics")
        if procs.cpu_count() > 1 and not args.no_pin:
            os.sched_setaffinity(0, {SERVER_CPU})
        if args.processes > 1:
            _processes(args, config, variant)
            return 0
        import uvloop

        uvloop.run(_main(args, config, variant))
    return 0


if __name__ == "__main__":
    sys.exit(main())
