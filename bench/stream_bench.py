"""Streaming through the proxy vs straight to the simulator (bounded: the measuring takes at
most ~14 s; starting the two processes adds 2-12 s depending on the machine's load).

    .venv/bin/python bench/stream_bench.py [--samples 60] [--streams 1000] [--delay 0.02]

Starts the simulator and one proxy worker (uvicorn, uvloop, httptools) as separate processes on
loopback, then measures:

1. time to first event (TTFE) of `POST /chat {stream: true}`: sequential requests, alternating
   direct and proxied, over kept-alive connections; median and p90 of each and the difference;
2. inter-event delay: the gaps between deltas the simulator spaces by `--delay`, as seen
   directly and through the proxy (the proxy must pass each event on as it comes);
3. memory: the proxy process's RSS idle, then with `--streams` streams open at once (each has
   received its first event and is held open by a stalled upstream), and per stream.

Goal (issue 17): TTFE within 1 ms of direct; under 150 MB for 1,000 streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ASSISTANT_ID = "3f1c2a7e-5b1d-4c8e-9a70-1b2c3d4e5f60"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process on port {port} exited: {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


@contextlib.contextmanager
def processes(folder: Path, delay: float, streams: int) -> Iterator[tuple[str, str, str, int]]:
    """The simulator and one proxy worker; yields (sandbox url, proxy url, app key, proxy pid)."""
    private_key = secrets.token_hex(16)
    app_key = "vpk_" + secrets.token_urlsafe(24)
    sandbox_port, proxy_port = free_port(), free_port()
    (folder / "sandbox.yaml").write_text(
        yaml.safe_dump(
            {
                "private_key": private_key,
                "admin_enabled": True,
                "request_log_enabled": False,
                "assistants": [{"id": ASSISTANT_ID, "name": "Bench"}],
                "chat": {"stream_delay_seconds": delay, "chunk_chars": 8},
            }
        )
    )
    from vapi_proxy.auth.api_key import hash_key

    (folder / "proxy.yaml").write_text(
        yaml.safe_dump(
            {
                # One connection to the simulator per open stream.
                "vapi": {"base_url": f"http://127.0.0.1:{sandbox_port}", "pool_size": streams + 50},
                "logging": {"access_log": False, "level": "warning"},
                "ledger": {"url": f"sqlite:///{folder}/ledger.db"},
                "auth": {
                    "methods": [
                        {"type": "api_key", "keys": [{"name": "bench", "hash": hash_key(app_key)}]}
                    ]
                },
                "profiles": {"coach": {"assistant_id": ASSISTANT_ID}},
            }
        )
    )
    env = {
        **os.environ,
        "VAPI_API_KEY": private_key,
        "VAPI_PROXY_CONFIG": str(folder / "proxy.yaml"),
    }
    sandbox = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "vapi_proxy",
            "sandbox",
            "--config",
            str(folder / "sandbox.yaml"),
            "--port",
            str(sandbox_port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proxy = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "uvicorn",
            "--factory",
            "vapi_proxy.app:app_from_environment",
            "--host",
            "127.0.0.1",
            "--port",
            str(proxy_port),
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--log-level",
            "warning",
            "--no-access-log",
            "--backlog",
            str(max(2048, streams * 2)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(sandbox_port, sandbox)
        wait_listening(proxy_port, proxy)
        yield (
            f"http://127.0.0.1:{sandbox_port}",
            f"http://127.0.0.1:{proxy_port}",
            app_key,
            proxy.pid,
        )
    finally:
        for proc in (proxy, sandbox):
            proc.send_signal(signal.SIGINT)
        for proc in (proxy, sandbox):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


async def timed_stream(
    session: aiohttp.ClientSession, url: str, key: str, body: bytes
) -> tuple[float, list[float]]:
    """(seconds to the first `data:` line, arrival times of every delta line)."""
    started = time.perf_counter()
    arrivals: list[float] = []
    async with session.post(
        url,
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    ) as reply:
        if reply.status != 200:
            raise RuntimeError(f"{url}: {reply.status} {await reply.text()}")
        async for line in reply.content:
            if line.startswith(b"data:") and not line.startswith(b"data: [DONE]"):
                arrivals.append(time.perf_counter() - started)
    return arrivals[0], arrivals


def gaps(arrivals: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(arrivals)]


def ms(values: list[float], q: float = 0.5) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measure_latency(
    sandbox: str, proxy: str, key: str, private: str, samples: int
) -> dict[str, Any]:
    """TTFE from short replies (many samples, alternating sides, paired differences), event
    spacing from longer ones."""

    def bodies(text: str) -> tuple[bytes, bytes]:
        direct = {"assistantId": ASSISTANT_ID, "input": text, "stream": True}
        return orjson.dumps(direct), orjson.dumps({**direct, "assistantId": "coach"})

    short_direct, short_proxy = bodies("x")
    long_direct, long_proxy = bodies("x" * 30)
    ttfe: dict[str, list[float]] = {"direct": [], "proxy": [], "added": []}
    spacing: dict[str, list[float]] = {"direct": [], "proxy": []}
    async with aiohttp.ClientSession() as session:
        for _ in range(3):  # warm up connections, imports, SQLite pages
            await timed_stream(session, f"{sandbox}/chat", private, short_direct)
            await timed_stream(session, f"{proxy}/chat", key, short_proxy)
        stop = time.monotonic() + 4.0  # bounded in time as well as count
        for index in range(samples):
            if time.monotonic() > stop:
                break
            # Alternate which side goes first so neither always gets the warmer path.
            order = [("direct", sandbox, private, short_direct), ("proxy", proxy, key, short_proxy)]
            pair = {}
            for side, base, credential, body in order if index % 2 else reversed(order):
                first, _ = await timed_stream(session, f"{base}/chat", credential, body)
                pair[side] = first
                ttfe[side].append(first)
            ttfe["added"].append(pair["proxy"] - pair["direct"])
        for _ in range(10):
            _, arrivals = await timed_stream(session, f"{sandbox}/chat", private, long_direct)
            spacing["direct"].extend(gaps(arrivals))
            _, arrivals = await timed_stream(session, f"{proxy}/chat", key, long_proxy)
            spacing["proxy"].extend(gaps(arrivals))
    return {"ttfe": ttfe, "spacing": spacing}


async def hold_streams(
    sandbox: str, proxy: str, key: str, pid: int, streams: int
) -> dict[str, Any]:
    """Open `streams` proxied streams at once, each held open by a stalled upstream."""
    fault = {
        "path": "/chat",
        "action": "stall-stream",
        "after_events": 1,
        "stall_seconds": 8,
        "count": streams,
    }
    async with (
        aiohttp.ClientSession() as admin,
        admin.post(f"{sandbox}/__sandbox/faults", json=fault) as reply,
    ):
        await reply.read()
    idle = rss_mb(pid)
    body = orjson.dumps({"assistantId": "coach", "input": "hold", "stream": True})
    opened = asyncio.Event()
    ready = 0
    release = asyncio.Event()

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal ready
        async with session.post(
            f"{proxy}/chat",
            data=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        ) as reply:
            async for line in reply.content:
                if line.startswith(b"data:"):
                    break
            ready += 1
            if ready == streams:
                opened.set()
            await release.wait()

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=12)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.ensure_future(one(session)) for _ in range(streams)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(opened.wait(), timeout=8)
        open_after = time.perf_counter() - started
        held = rss_mb(pid)
        peak = held
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"streams": ready, "open_seconds": open_after, "idle_mb": idle, "held_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60, help="TTFE samples per side")
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams held")
    parser.add_argument("--delay", type=float, default=0.02, help="simulator's gap between deltas")
    args = parser.parse_args()
    began = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as tmp,
        processes(Path(tmp), args.delay, args.streams) as (
            sandbox,
            proxy,
            key,
            pid,
        ),
    ):
        started = time.monotonic()
        private = yaml.safe_load((Path(tmp) / "sandbox.yaml").read_text())["private_key"]
        latency = asyncio.run(measure_latency(sandbox, proxy, key, private, args.samples))
        memory = asyncio.run(hold_streams(sandbox, proxy, key, pid, args.streams))
    ttfe, spacing = latency["ttfe"], latency["spacing"]
    n = len(ttfe["proxy"])
    print(f"stream_bench: {n} sequential streams per side, loopback, 1 proxy worker")
    for side in ("direct", "proxy"):
        values = ttfe[side]
        print(f"  TTFE {side:<8} median {ms(values):6.2f} ms   p90 {ms(values, 0.9):6.2f} ms")
    print(
        f"  TTFE added    median {ms(ttfe['added']):6.2f} ms of paired differences"
        f" (p90 {ms(ttfe['added'], 0.9):.2f} ms; goal < 1 ms)"
    )
    print(
        f"  load average  {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (noise: compare runs)"
    )
    print(
        f"  inter-event   direct median {ms(spacing['direct']):6.2f} ms,"
        f" proxy median {ms(spacing['proxy']):6.2f} ms"
        f" (simulator spaces them {args.delay * 1000:.0f} ms;"
        f" proxy min {min(spacing['proxy']) * 1000:.2f} ms,"
        f" stdev {statistics.pstdev(spacing['proxy']) * 1000:.2f} ms)"
    )
    per = (memory["held_mb"] - memory["idle_mb"]) / max(1, memory["streams"]) * 1024
    print(
        f"  memory        {memory['streams']}/{args.streams} streams open in"
        f" {memory['open_seconds']:.2f} s: proxy RSS {memory['idle_mb']:.1f} MB idle →"
        f" {memory['held_mb']:.1f} MB held ({per:.0f} KB per stream; goal < 150 MB)"
    )
    print(f"  total run {time.monotonic() - began:.1f} s (start-up {started - began:.1f} s)")


if __name__ == "__main__":
    main()
