"""Load generators: wrk with a Lua script (POST, headers, exact percentiles), or a bounded
Python aiohttp loop when wrk is missing. Both return the same `LoadResult`."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.procs import pinned

MARK = "BENCH-RESULT "


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    errors: int  # connect, read, write and timeout errors
    tool: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _lua_quote(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


def wrk_script(body: bytes, headers: dict[str, str]) -> str:
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_quote(body.decode())}"]
    lines += [f"wrk.headers[{_lua_quote(k)}] = {_lua_quote(v)}" for k, v in headers.items()]
    lines.append(
        "done = function(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        f'  io.write(string.format("{MARK}%d %d %d %d %d %d %d\\n",\n'
        "    summary.requests, summary.duration, latency:percentile(50),\n"
        "    latency:percentile(90), latency:percentile(99), e.status,\n"
        "    e.connect + e.read + e.write + e.timeout))\n"
        "end"
    )
    return "\n".join(lines) + "\n"


def run_wrk(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    connections: int,
    seconds: float,
    cpu: int | None,
    script_dir: Path,
) -> LoadResult:
    script = script_dir / "post.lua"
    script.write_text(wrk_script(body, headers))
    cmd = pinned(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        cpu,
    )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True)
    for line in out.stdout.splitlines():
        if line.startswith(MARK):
            reqs, dur_us, p50, p90, p99, non2xx, errors = (int(x) for x in line.split()[1:])
            secs = dur_us / 1e6
            return LoadResult(
                reqs, secs, reqs / secs, p50 / 1e3, p90 / 1e3, p99 / 1e3, non2xx, errors, "wrk"
            )
    raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")


def _percentile(sorted_ms: list[float], pct: float) -> float:
    if not sorted_ms:
        return 0.0
    index = min(len(sorted_ms) - 1, max(0, round(pct / 100 * len(sorted_ms)) - 1))
    return sorted_ms[index]


async def pyload(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    connections: int,
    seconds: float,
    max_requests: int = 1_000_000,
) -> LoadResult:
    """Closed-loop load: `connections` workers, each one request at a time, until `seconds`
    pass or `max_requests` are sent."""
    import aiohttp

    latencies: list[float] = []
    counts = {"non_2xx": 0, "errors": 0, "sent": 0}
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=5)
    started = time.perf_counter()
    deadline = started + seconds
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while time.perf_counter() < deadline and counts["sent"] < max_requests:
                counts["sent"] += 1
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        if not 200 <= resp.status < 300:
                            counts["non_2xx"] += 1
                except (aiohttp.ClientError, TimeoutError):
                    counts["errors"] += 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)

        await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    done = len(latencies)
    return LoadResult(
        done,
        elapsed,
        done / elapsed if elapsed else 0.0,
        _percentile(latencies, 50),
        _percentile(latencies, 90),
        _percentile(latencies, 99),
        counts["non_2xx"],
        counts["errors"],
        "python",
    )


def run_pyload(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    connections: int,
    seconds: float,
    cpu: int | None,
) -> LoadResult:
    """The Python generator in its own (pinned) process, like wrk."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as spec:
        json.dump(
            {"url": url, "body": body.decode(), "headers": headers, "c": connections, "s": seconds},
            spec,
        )
    cmd = pinned([sys.executable, "-m", "bench.load", spec.name], cpu)
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=seconds + 30, check=True, cwd=_root()
    )
    Path(spec.name).unlink(missing_ok=True)
    for line in out.stdout.splitlines():
        if line.startswith(MARK):
            return LoadResult(**json.loads(line[len(MARK) :]))
    raise RuntimeError(f"python load generator printed no result:\n{out.stderr[-2000:]}")


def _root() -> Path:
    return Path(__file__).resolve().parents[1]


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def _main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    # uvloop's factory returns its own Loop class: name the type both branches share.
    factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(
            pyload(
                spec["url"],
                spec["body"].encode(),
                spec["headers"],
                connections=spec["c"],
                seconds=spec["s"],
            )
        )
    print(MARK + json.dumps(result.as_dict()), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1])
