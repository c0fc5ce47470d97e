"""Limits shared by two OS processes through SQLite, PostgreSQL or Redis hold exactly."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Iterator
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import pytest

from tests.support.burst_worker import run
from tests.support.limits import SHARED_BACKENDS, backend_url


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    """Two spawned workers, started once: interpreter start-up is most of the cost."""
    with multiprocessing.get_context("spawn").Pool(2) as workers:
        yield workers


@pytest.mark.parametrize("backend", SHARED_BACKENDS)
@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ([{"name": "c", "concurrency": 3, "quota": {"per_day": 50}}], 3),
        ([{"name": "q", "concurrency": 200, "quota": {"per_day": 50}}], 50),
    ],
    ids=["concurrency-3", "quota-50"],
)
def test_two_processes_share_limits(
    backend: str, rules: list[dict[str, Any]], expected: int, tmp_path: Path, pool: Pool
) -> None:
    """200 reservations from 2 processes (100 simultaneous each), nobody settles: the store
    admits exactly the limit, and every other answer is a 429."""
    url = backend_url(backend, tmp_path)
    namespace = f"mp{uuid.uuid4().hex[:10]}"
    start_at = time.time() + 0.5
    args = (url, namespace, rules, 100, 1_780_000_000.0, start_at)
    results = pool.starmap(run, [args, args], chunksize=1)
    admitted = sum(r[0] for r in results)
    refused = sum(r[1] for r in results)
    errors = [e for r in results for e in r[2]]
    assert errors == []
    assert admitted == expected
    assert refused == 200 - expected
    assert all(r[0] + r[1] == 100 for r in results)
