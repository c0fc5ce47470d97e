"""Fixtures for the auth tests: session-wide keys, a JWKS server on loopback, started chains."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.auth import Clock, JwksServer, SigningKey, make_key, settings
from vapi_proxy.auth.chain import AuthChain
from vapi_proxy.testing import ServerThread


@pytest.fixture(scope="session")
def rsa_key() -> SigningKey:
    return make_key("RS256", "rsa-1")


@pytest.fixture(scope="session")
def rsa_key_2() -> SigningKey:
    return make_key("RS256", "rsa-2")


@pytest.fixture(scope="session")
def es_key() -> SigningKey:
    return make_key("ES256", "ec-1")


@pytest.fixture(scope="session")
def ed_key() -> SigningKey:
    return make_key("EdDSA", "ed-1")


@pytest.fixture(scope="session")
def jwks_server() -> Iterator[JwksServer]:
    state = JwksServer()

    async def jwks(request: Request) -> Response:
        state.fetches += 1
        if state.status in (301, 302, 307, 308):
            return Response(status_code=state.status, headers={"Location": "/elsewhere.json"})
        if state.body is not None:
            return Response(state.body, status_code=state.status)
        return JSONResponse({"keys": state.keys}, status_code=state.status)

    async def elsewhere(request: Request) -> Response:
        # Where a redirect from the JWKS URL points: a valid key set the proxy must not fetch.
        state.redirected_fetches += 1
        return JSONResponse({"keys": state.keys})

    app = Starlette(
        routes=[Route("/.well-known/jwks.json", jwks), Route("/elsewhere.json", elsewhere)]
    )
    with ServerThread(app) as server:
        state.url = f"{server.url}/.well-known/jwks.json"
        yield state


@pytest.fixture
def jwks(jwks_server: JwksServer) -> JwksServer:
    jwks_server.reset()
    return jwks_server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def chain_factory(clock: Clock) -> AsyncIterator[Any]:
    """Builds started chains from method dicts and closes them after the test."""
    chains: list[AuthChain] = []

    async def build(*methods: dict[str, Any], now: Clock | None = None, **kwargs: Any) -> AuthChain:
        """`now`: a wall clock the token times are held to (default: the real one)."""
        chain = AuthChain.from_settings(
            settings(*methods, **kwargs), clock=clock, **({"now": now} if now else {})
        )
        await chain.start()
        chains.append(chain)
        return chain

    yield build
    for chain in chains:
        await chain.aclose()
