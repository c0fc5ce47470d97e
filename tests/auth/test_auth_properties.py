"""Property: no malformed or tampered credential ever yields an identity, only a 401."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.support.auth import AUDIENCE, claims, make_key, settings
from vapi_proxy.auth.api_key import generate_key, hash_key
from vapi_proxy.auth.chain import AuthChain
from vapi_proxy.errors import UnauthorizedError

API_KEY = generate_key()
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
SECRET = secrets.token_urlsafe(48)
KEYS = {alg: make_key(alg) for alg in ("ES256", "RS256", "EdDSA")}
FAR_FUTURE = 2**31 - 1


def issuer(alg: str) -> str:
    return f"https://{alg.lower()}.issuer.test/"


# One valid token per verification path; each jwt method has its own issuer.
VALID = {
    **{alg: key.sign(claims(iss=issuer(alg), exp=FAR_FUTURE)) for alg, key in KEYS.items()},
    "HS256": jwt.encode(claims(iss=issuer("HS256"), exp=FAR_FUTURE), SECRET, algorithm="HS256"),
}


@pytest.fixture(scope="module")
def harness(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[asyncio.Runner, AuthChain]]:
    secret_file = tmp_path_factory.mktemp("secret") / "hs256"
    secret_file.write_text(SECRET)
    jwt_methods: list[dict[str, Any]] = [
        {"type": "jwt", "public_key": key.public_pem(), "algorithms": [alg]}
        for alg, key in KEYS.items()
    ]
    jwt_methods.append({"type": "jwt", "secret_file": str(secret_file), "algorithms": ["HS256"]})
    for method, alg in zip(jwt_methods, [*KEYS, "HS256"], strict=True):
        method.update(issuer=issuer(alg), audience=AUDIENCE)
    chain = AuthChain.from_settings(
        settings(
            {"type": "api_key", "keys": [{"name": "svc", "hash": hash_key(API_KEY)}]},
            *jwt_methods,
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


def test_valid_tokens_are_accepted(harness: Any) -> None:
    for token in VALID.values():
        assert not refused(harness, f"Bearer {token}")
    assert not refused(harness, f"Bearer {API_KEY}")


@PROPERTY
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_random_credentials_never_authenticate(harness: Any, text: str) -> None:
    assume(text.strip() not in (*VALID.values(), API_KEY))
    assert refused(harness, f"Bearer {text}")


@PROPERTY
@given(st.lists(st.text(alphabet=B64URL + "=", max_size=80), min_size=3, max_size=3))
def test_random_jwt_shapes_never_authenticate(harness: Any, parts: list[str]) -> None:
    assert refused(harness, "Bearer " + ".".join(parts))


@PROPERTY
@given(st.data())
def test_tampered_tokens_never_authenticate(harness: Any, data: st.DataObject) -> None:
    alg = data.draw(st.sampled_from(sorted(VALID)))
    token = VALID[alg]
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
        # A part from another genuine token: a valid signature over someone else's claims.
        other = VALID[data.draw(st.sampled_from(sorted(VALID)))].split(".")
        parts = token.split(".")
        index = data.draw(st.integers(0, 2))
        parts[index] = other[index]
        mutated = ".".join(parts)
    assume(segments(mutated) != segments(token))
    assert refused(harness, f"Bearer {mutated}")
