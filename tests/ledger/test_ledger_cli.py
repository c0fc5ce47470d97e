"""`vapi-proxy db upgrade` and `vapi-proxy usage` through their parsers, as the CLI runs them."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vapi_proxy.auth.identity import Identity
from vapi_proxy.ledger.cli import configure_db_parser, configure_usage_parser, run_db, run_usage
from vapi_proxy.ledger.migrate import head_revision
from vapi_proxy.ledger.records import LedgerEvent
from vapi_proxy.ledger.store import Ledger

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def parse(configure: object, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)  # type: ignore[operator]
    return parser.parse_args(argv)


def run(fn: object, args: argparse.Namespace) -> tuple[int, str]:
    out = io.StringIO()
    code = fn(args, out=out)  # type: ignore[operator]
    return code, out.getvalue()


async def seed(url: str) -> None:
    ledger = Ledger.from_url(url)
    try:
        await ledger.start(auto_migrate=False)
        for i, who in enumerate(["alice", "alice", "bob"]):
            ident = Identity(subject=who, method="jwt", tenant="acme" if who == "alice" else None)
            await ledger.record_call(
                call_id=f"c{i}", identity=ident, profile="p", created_at=T0 + timedelta(days=i)
            )
            report = LedgerEvent.from_vapi(
                {
                    "type": "end-of-call-report",
                    "call": {"id": f"c{i}"},
                    "durationSeconds": 90,
                    "cost": 0.125,
                    "endedReason": "customer-ended-call",
                }
            )
            await ledger.apply_events([(report, ())])
    finally:
        await ledger.aclose()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def test_db_upgrade_then_current(url: str) -> None:
    code, text = run(run_db, parse(configure_db_parser, ["current", "--database-url", url]))
    assert code == 1 and text.startswith("empty: behind")
    code, text = run(run_db, parse(configure_db_parser, ["upgrade", "--database-url", url]))
    head = head_revision()  # whatever the newest migration is
    assert code == 0 and f"ledger at revision {head}" in text
    code, text = run(run_db, parse(configure_db_parser, ["current", "--database-url", url]))
    assert (code, text) == (0, f"{head}: up to date\n")


def test_usage_formats_and_filters(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAPI_PROXY_DATABASE_URL", url)
    run(run_db, parse(configure_db_parser, ["upgrade"]))
    asyncio.run(seed(url))

    code, table = run(run_usage, parse(configure_usage_parser, []))
    assert code == 0
    lines = table.splitlines()
    assert lines[0].split() == [
        "identity",
        "tenant",
        "kind",
        "calls",
        "ended",
        "minutes",
        "cost_usd",
    ]
    assert lines[2].split() == ["jwt::alice", "acme", "call", "2", "2", "3.00", "0.2500"]
    assert lines[-1].split() == ["TOTAL", "3", "3", "4.50", "0.3750"]

    _, text = run(
        run_usage, parse(configure_usage_parser, ["--format", "json", "--identity", "jwt::bob"])
    )
    data = json.loads(text)
    assert data["rows"] == [
        {
            "identity": "jwt::bob",
            "tenant": None,
            "kind": "call",
            "calls": 1,
            "ended": 1,
            "minutes": 1.5,
            "cost_usd": 0.125,
        }
    ]
    assert data["total"]["calls"] == 1

    _, text = run(
        run_usage, parse(configure_usage_parser, ["--format", "csv", "--since", "2026-05-02"])
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["identity"], r["calls"]) for r in rows] == [("jwt::alice", "1"), ("jwt::bob", "1")]

    _, text = run(
        run_usage, parse(configure_usage_parser, ["--format", "json", "--tenant", "acme"])
    )
    assert json.loads(text)["total"]["calls"] == 2


def test_usage_needs_a_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAPI_PROXY_DATABASE_URL", raising=False)
    with pytest.raises(SystemExit, match="VAPI_PROXY_DATABASE_URL"):
        run_usage(parse(configure_usage_parser, []))


def test_usage_refuses_bad_dates() -> None:
    with pytest.raises(SystemExit):
        parse(configure_usage_parser, ["--since", "yesterday"])
