"""`/readyz` tells the truth about what callers would get: stores reachable and every auth method
able to verify its callers (a JWKS cached or fetchable)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.proxy import ProxyFactory
from vapi_proxy.testing import ServerThread


@dataclass
class Provider:
    url: str = ""
    status: int = 503
    keys: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def provider() -> Iterator[Provider]:
    state = Provider()

    async def jwks(request: Request) -> Response:
        return Response(orjson.dumps({"keys": state.keys}), status_code=state.status)

    with ServerThread(Starlette(routes=[Route("/jwks.json", jwks)])) as server:
        state.url = server.url + "/jwks.json"
        yield state


def test_readyz_is_unavailable_while_no_jwks_key_can_be_had(
    make_proxy: ProxyFactory, provider: Provider
) -> None:
    def jwt_only(config: dict[str, Any]) -> None:
        config["auth"]["methods"] = [
            {
                "type": "jwt",
                "jwks_url": provider.url,
                "issuer": "https://idp.example/",
                "algorithms": ["RS256"],
                "min_refetch_interval_seconds": 0,
                "fetch_timeout_seconds": 1,
            }
        ]

    server = make_proxy(jwt_only)
    reply = httpx.get(server.url + "/readyz")
    assert reply.status_code == 503, reply.text
    auth = reply.json()["checks"]["auth"]
    assert auth["ok"] is False
    assert auth["methods"][0]["detail"] == "last fetch failed: HTTP 503"
    assert reply.json()["checks"]["ledger"]["ok"] is True  # the stores alone would say ready
    # The provider comes back: the next probe fetches the keys and says ready.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    provider.keys = [{**RSAAlgorithm.to_jwk(key, as_dict=True), "kid": "k1"}]
    provider.status = 200
    reply = httpx.get(server.url + "/readyz")
    assert reply.status_code == 200, reply.text
    assert reply.json()["checks"]["auth"]["methods"][0]["keys"] == 1


def test_readyz_lists_each_auth_method_for_internal_callers(proxy: Any) -> None:
    auth = httpx.get(proxy.url + "/readyz").json()["checks"]["auth"]
    assert auth == {
        "ok": True,
        "methods": [{"type": "api_key", "keys": 2, "ok": True}, {"type": "anonymous", "ok": True}],
    }
