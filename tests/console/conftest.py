"""Console fixtures: the webhook simulator (real lifecycle webhooks on a manual clock, shared with
the webhook tests through tests/support/hook_fixtures.py),
an empty ledger database per backend, and one ledger shared by the replicas of a test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.hook_fixtures import (  # noqa: F401  (fixtures, used by name)
    clock,
    hook_sandbox,
    keys,
    make_hook_proxy,
)
from tests.support.services import fresh_postgres_database


@pytest.fixture(params=["sqlite", "postgres"])
def shared_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One ledger database URL for every replica (app) of a test, made outside any event loop
    (the apps run on loops of their own)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared-ledger.db'}"
        return
    yield from _postgres_database()


@pytest.fixture
def postgres_ledger() -> Iterator[str]:
    """A fresh PostgreSQL ledger database URL for the replicas of a test."""
    yield from _postgres_database()


def _postgres_database() -> Iterator[str]:
    loop = asyncio.new_event_loop()
    database = fresh_postgres_database()
    try:
        yield loop.run_until_complete(database.__aenter__())
    finally:
        loop.run_until_complete(database.__aexit__(None, None, None))
        loop.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    async with fresh_postgres_database() as url:
        yield url
