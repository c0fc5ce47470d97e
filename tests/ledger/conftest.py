"""Fixtures for the ledger contract suite: an empty database per test, SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.services import fresh_postgres_database
from vapi_proxy.ledger.store import Ledger


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    async with fresh_postgres_database() as url:
        yield url


@pytest.fixture
async def ledger(db_url: str) -> AsyncIterator[Ledger]:
    store = Ledger.from_url(db_url)
    await store.start(auto_migrate=True)
    try:
        yield store
    finally:
        await store.aclose()
