"""Several workers starting together with auto-migrate: one migrates, the others wait and agree."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from tests.support.services import fresh_postgres_database
from vapi_proxy.ledger.migrate import head_revision, upgrade


async def test_concurrent_upgrades_from_three_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    async with fresh_postgres_database() as pg_url:
        urls = [f"sqlite:///{tmp_path / 'ledger.db'}", pg_url]
        with ctx.Pool(3) as pool:
            for url in urls:
                revisions = pool.map(upgrade, [url] * 3)
                assert revisions == [head_revision()] * 3, url


def test_upgrade_reports_an_unreachable_database(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="missing or not writable"):
        upgrade(f"sqlite:///{tmp_path}/nope/ledger.db")
