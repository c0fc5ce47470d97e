"""Property: no malformed or tampered credential ever yields an identity, only a 401."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import pytest
from auth_helpers import AUDIENCE, ISSUER, claims, make_key, settings
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from vapi_proxy.auth.api_key import generate_key, hash_key
from vapi_proxy.auth.chain import AuthChain
from vapi_proxy.errors import UnauthorizedError

KEY = make_key("ES256")
API_KEY = generate_key()
VALID = KEY.sign(claims(exp=2**31 - 1))
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.fixture(scope="module")
def harness() -> Iterator[tuple[asyncio.Runner, AuthChain]]:
    chain = AuthChain.from_settings(
        settings(
            {"type": "api_key", "keys": [{"name": "svc", "hash": hash_key(API_KEY)}]},
            {
                "type": "jwt",
                "public_key": KEY.public_pem(),
                "algorithms": ["ES256"],
                "issuer": ISSUER,
                "audience": AUDIENCE,
            },
        )
    )
    with asyncio.Runner() as runner:
        runner.run(chain.start())
        yield runner, chain
        runner.run(chain.aclose())


def refused(harness: tuple[asyncio.Runner, AuthChain], authorization: str) -> bool:
    runner, chain = harness
    try:
        runner.run(chain.authenticate(authorization, "192.0.2.1", {}))
    except UnauthorizedError:
        return True
    return False


def segments(token: str) -> list[bytes]:
    """What a verifier actually reads: base64url's ignored trailing bits make some edits no-ops."""
    out = []
    for part in token.split("."):
        try:
            out.append(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        except ValueError:
            out.append(b"\x00invalid" + part.encode())
    return out


PROPERTY = hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_valid_token_is_accepted(harness: Any) -> None:
    assert not refused(harness, f"Bearer {VALID}")
    assert not refused(harness, f"Bearer {API_KEY}")


@PROPERTY
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_random_credentials_never_authenticate(harness: Any, text: str) -> None:
    assume(text.strip() not in (VALID, API_KEY))
    assert refused(harness, f"Bearer {text}")


@PROPERTY
@given(st.lists(st.text(alphabet=B64URL + "=", max_size=80), min_size=3, max_size=3))
def test_random_jwt_shapes_never_authenticate(harness: Any, parts: list[str]) -> None:
    assert refused(harness, "Bearer " + ".".join(parts))


@PROPERTY
@given(st.data())
def test_tampered_tokens_never_authenticate(harness: Any, data: st.DataObject) -> None:
    token = VALID
    edit = data.draw(st.sampled_from(["replace", "delete", "insert", "truncate", "swap_part"]))
    pos = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.sampled_from(B64URL + "."))
    if edit == "replace":
        mutated = token[:pos] + char + token[pos + 1 :]
    elif edit == "delete":
        mutated = token[:pos] + token[pos + 1 :]
    elif edit == "insert":
        mutated = token[:pos] + char + token[pos:]
    elif edit == "truncate":
        mutated = token[:pos]
    else:
        other = KEY.sign(claims(sub="someone-else", exp=2**31 - 1)).split(".")
        parts = token.split(".")
        index = data.draw(st.integers(0, 2))
        parts[index] = other[index]
        mutated = ".".join(parts)
    assume(segments(mutated) != segments(token))
    assert refused(harness, f"Bearer {mutated}")
