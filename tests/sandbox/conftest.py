"""Fixtures for the simulator's tests: a running simulator, an HTTP client, a receiver."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.sandbox import Receiver, base_settings
from vapi_proxy.sandbox import RunningSandbox, run_sandbox
from vapi_proxy.testing import ServerThread


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSandbox]:
    """A shared simulator for tests that do not depend on timing or webhooks."""
    with run_sandbox(base_settings()) as running:
        yield running


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[tuple[Receiver, str]]:
    """One receiver per module (starting servers is most of these tests' time)."""
    rec = Receiver()
    with ServerThread(rec.app) as server:
        yield rec, server.url


@pytest.fixture
def receiver(receiver_server: tuple[Receiver, str]) -> tuple[Receiver, str]:
    """The module's receiver, emptied, and the URL of its `/hook` path."""
    rec, base = receiver_server
    rec.reset()
    return rec, base + "/hook"
