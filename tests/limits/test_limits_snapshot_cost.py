"""The embedded store folds its log into a snapshot only once the log is at least as long as
the state the snapshot holds: a snapshot costs in proportion to that state, inside the writer's
transaction that every reservation waits for, so a short log is not folded into a big state."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.limits import FakeClock
from vapi_proxy.auth.identity import Identity
from vapi_proxy.ledger.engine import Database
from vapi_proxy.limits import AdmissionRequest, LimitsSettings, create_limiter
from vapi_proxy.limits import embedded as embedded_module

ALICE = Identity(subject="alice", method="jwt")
MANY = [{"name": "q", "quota": {"per_day": 1000}, "concurrency": 1000}]


async def log_rows(url: str) -> int:
    db = Database(url)
    try:
        async with db.read() as conn:
            return int((await conn.execute(sa.text("SELECT count(*) FROM limit_log"))).scalar_one())
    finally:
        await db.aclose()


async def test_a_short_log_is_not_folded_into_a_big_state(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'limits.db'}"
    monkeypatch.setattr(embedded_module, "SNAPSHOT_ENTRIES", 10)
    monkeypatch.setattr(embedded_module, "SNAPSHOT_KEEP_ENTRIES", 0)
    limiter = create_limiter(LimitsSettings(backend=url, rules=MANY), clock=clock)
    ask = AdmissionRequest(identity=ALICE, profile="support", worst_case_seconds=300)
    try:
        for _ in range(30):
            await limiter.reserve(ask)
        await limiter.expire()  # 31 entries, 30 open reservations: folded
        assert await log_rows(url) == 1
        for _ in range(12):
            await limiter.reserve(ask)
        # 13 entries since (more than SNAPSHOT_ENTRIES) against 42 open reservations: kept.
        await limiter.expire()
        assert await log_rows(url) == 14
        # A new process reads the snapshot and the log after it: every count is there.
        other = create_limiter(LimitsSettings(backend=url, rules=MANY), clock=clock)
        try:
            counts = {u.what: u.used for u in await other.usage(ALICE, "support")}
            assert counts == {"quota": 42, "concurrency": 42}
        finally:
            await other.aclose()
    finally:
        await limiter.aclose()


async def test_the_collector_is_off_while_the_snapshot_is_dumped(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dump's many short-lived lists would set off collections that walk the whole heap."""
    import gc

    from vapi_proxy.limits.memory import CounterState

    seen: list[bool] = []
    dump = CounterState.dump

    def watched(self: CounterState) -> dict[str, object]:
        seen.append(gc.isenabled())
        return dump(self)

    monkeypatch.setattr(CounterState, "dump", watched)
    monkeypatch.setattr(embedded_module, "SNAPSHOT_ENTRIES", 1)
    url = f"sqlite:///{tmp_path / 'limits.db'}"
    limiter = create_limiter(LimitsSettings(backend=url, rules=MANY), clock=clock)
    try:
        await limiter.reserve(AdmissionRequest(identity=ALICE, profile="support"))
        await limiter.expire()
    finally:
        await limiter.aclose()
    assert seen == [False]
    assert gc.isenabled()


async def test_a_worker_a_little_behind_catches_up_without_reloading(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entries before a snapshot's are kept a while: the other worker, behind by what was
    written since its last transaction, reads them instead of reloading the whole snapshot."""
    from vapi_proxy.limits.embedded import EmbeddedStore

    reloads: list[int] = []
    reload = EmbeddedStore._reload

    def counted(self: EmbeddedStore, conn: object) -> None:
        reloads.append(1)
        reload(self, conn)  # type: ignore[arg-type]

    monkeypatch.setattr(EmbeddedStore, "_reload", counted)
    monkeypatch.setattr(embedded_module, "SNAPSHOT_ENTRIES", 10)
    url = f"sqlite:///{tmp_path / 'limits.db'}"
    a = create_limiter(LimitsSettings(backend=url, rules=MANY), clock=clock)
    b = create_limiter(LimitsSettings(backend=url, rules=MANY), clock=clock)
    ask = AdmissionRequest(identity=ALICE, profile="support", worst_case_seconds=300)
    try:
        await b.reserve(ask)  # b starts (one reload: its start) and is then behind a
        for _ in range(30):
            await a.reserve(ask)
        await a.expire()  # a folds its log into a snapshot
        assert await log_rows(url) > 1
        started = len(reloads)
        await b.reserve(ask)
        assert len(reloads) == started  # caught up from the kept entries
        counts = {u.what: u.used for u in await b.usage(ALICE, "support")}
        assert counts == {"quota": 32, "concurrency": 32}
    finally:
        await a.aclose()
        await b.aclose()
