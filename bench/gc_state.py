"""What the in-process limits' state costs the garbage collector: `python -m bench.gc_state`.

    python -m bench.gc_state [--stores memory sqlite] [--sizes 10000 50000 100000] [--more 20000]

For each store and each N: a limiter with realistic rules (per user: rate per second and per
minute, a daily quota, a concurrency slot, minute and USD budgets per day; per tenant: a
concurrency slot) admits and commits N calls that never end (as the bench's do: every
reservation stays held). The start-up heap is frozen first, as `app.long_lived_heap` does; the
measured limiter and its state come after (the embedded store's state is built at the first
readiness probe). Printed: the objects the collector tracks (the limiter's own included); the
pause of a full `gc.collect()`, median and worst of five, each after 1,000 more admissions (one
repeated at once finds the state in the CPU's caches and takes a fraction of the time); and,
over `--more` further admissions with the app's thresholds, the collector's time per admission
and the longest pause of each generation. Bounded: the largest N takes a few seconds per store
(`sqlite` is the embedded store, the form `ledger://` takes on a SQLite ledger).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
import uuid
from typing import Any

from vapi_proxy.auth.identity import Identity
from vapi_proxy.limits import AdmissionRequest, Limiter, LimitsSettings, create_limiter

RULES: list[dict[str, Any]] = [
    {
        "name": "user",
        "rate": {"per_second": 1_000_000, "per_minute": 10_000_000},
        "quota": {"per_day": 100_000_000},
        "concurrency": 1_000_000,
        "budget": {"minutes_per_day": 1e9, "usd_per_day": 1e9},
    },
    {"name": "team", "scope": "tenant", "concurrency": 10_000_000},
]
USERS, TENANTS, START = 2000, 20, 1_780_000_000.0
YOUNG_THRESHOLD = 5000  # as `app.GC_YOUNG_THRESHOLD`


class _Clock:
    def __init__(self) -> None:
        self.t = START

    def __call__(self) -> float:
        self.t += 0.0005  # 2,000 admissions a second: rate buckets come and go as in a run
        return self.t


class _Pauses:
    def __init__(self) -> None:
        self.times: list[tuple[int, float]] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.times.append((info["generation"], time.perf_counter() - self._start))


async def _admit(limiter: Limiter, people: list[Identity], first: int, n: int) -> None:
    async def one(i: int) -> None:
        who = people[i % len(people)]
        req = AdmissionRequest(who, "p", worst_case_seconds=300, estimated_cost_usd=0.5)
        reservation = await limiter.reserve(req)
        await limiter.commit(reservation, f"call-{i}")

    step = 16  # the bench's concurrency
    for i in range(first, first + n, step):
        await asyncio.gather(*(one(j) for j in range(i, min(i + step, first + n))))


async def _full_pauses(
    limiter: Limiter, people: list[Identity], first: int, repeats: int = 5
) -> list[float]:
    times = []
    for i in range(repeats):
        await _admit(limiter, people, first + i * 1000, 1000)
        started = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - started)
    return times


async def _limiter(url: str) -> Limiter:
    settings = LimitsSettings(backend=url, namespace=f"gc{uuid.uuid4().hex[:8]}", rules=RULES)
    return create_limiter(settings, clock=_Clock())


async def measure(url: str, size: int, more: int) -> dict[str, float]:
    people = [Identity(f"user{i}", "jwt", tenant=f"t{i % TENANTS}") for i in range(USERS)]
    warm = await _limiter(url)  # imports, tables, caches: what start-up builds
    await _admit(warm, people, 0, 16)
    await warm.aclose()
    del warm
    gc.collect()
    gc.freeze()  # as `app.long_lived_heap` does; the measured limiter is not frozen with it
    base = len(gc.get_objects())
    limiter = await _limiter(url)
    try:
        await limiter.health()
        await _admit(limiter, people, 16, size)
        gc.collect()
        gc.collect()  # the second sees what the first untracked
        tracked = len(gc.get_objects()) - base
        full = await _full_pauses(limiter, people, 16 + size)
        size += 5000
        pauses = _Pauses()
        previous = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, *previous[1:])
        gc.callbacks.append(pauses)
        started = time.perf_counter()
        try:
            await _admit(limiter, people, 16 + size, more)
        finally:
            elapsed = time.perf_counter() - started
            gc.callbacks.remove(pauses)
            gc.set_threshold(*previous)
    finally:
        await limiter.aclose()
        gc.unfreeze()
    times = [t for _, t in pauses.times]
    result = {
        "tracked": tracked,
        "full_median_ms": statistics.median(full) * 1e3,
        "full_max_ms": max(full) * 1e3,
        "gc_us_per_admission": sum(times) / max(1, more) * 1e6,
        "gc_worst_ms": max(times, default=0.0) * 1e3,
        "admission_us": elapsed / max(1, more) * 1e6,
    }
    for generation in range(3):
        mine = [t for g, t in pauses.times if g == generation]
        result[f"gen{generation}"] = len(mine)
        result[f"gen{generation}_max_ms"] = max(mine, default=0.0) * 1e3
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="*", default=["memory", "sqlite"])
    parser.add_argument("--sizes", nargs="*", type=int, default=[10_000, 50_000, 100_000])
    parser.add_argument("--more", type=int, default=20_000)
    args = parser.parse_args()
    print(
        f"{'store':<7} {'N':>7} {'tracked':>9} {'full p50 ms':>11} {'full max':>9} "
        f"{'gc µs/adm':>9} {'gc worst ms':>11} {'adm µs':>7}  collections (max ms) gen0 gen1 gen2"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for store in args.stores:
            for size in args.sizes:
                url = "memory://" if store == "memory" else f"sqlite:///{tmp}/{uuid.uuid4().hex}.db"
                r = asyncio.run(measure(url, size, args.more))
                gens = " ".join(f"{r[f'gen{g}']:.0f} ({r[f'gen{g}_max_ms']:.1f})" for g in range(3))
                print(
                    f"{store:<7} {size:>7} {r['tracked']:>9.0f} {r['full_median_ms']:>11.2f} "
                    f"{r['full_max_ms']:>9.2f} {r['gc_us_per_admission']:>9.2f} "
                    f"{r['gc_worst_ms']:>11.1f} {r['admission_us']:>7.1f}  {gens}",
                    flush=True,
                )
                gc.collect()


if __name__ == "__main__":
    main()
