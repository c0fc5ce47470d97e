"""Console fixtures: the webhook suite's simulator (real lifecycle webhooks on a manual clock)
and an empty ledger database per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.services import fresh_postgres_database
from tests.webhooks.conftest import (  # noqa: F401  (fixtures, used by name)
    clock,
    hook_sandbox,
    keys,
    make_hook_proxy,
)


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    async with fresh_postgres_database() as url:
        yield url
