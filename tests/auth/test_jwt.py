"""JWTs verified with a PEM public key or a shared secret: every refusal is precise and safe."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import jwt
import pytest

from tests.support.auth import AUDIENCE, ISSUER, SigningKey, claims, make_key
from vapi_proxy.errors import UnauthorizedError


def pem_method(key: SigningKey, **extra: Any) -> dict[str, Any]:
    return {
        "type": "jwt",
        "public_key": key.public_pem(),
        "algorithms": [key.alg],
        "issuer": ISSUER,
        "audience": AUDIENCE,
        **extra,
    }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A token built without PyJWT, which rightly refuses to make the attacks tested here."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "ES384", "EdDSA"])
async def test_valid_token_with_pem_key(chain_factory: Any, alg: str) -> None:
    key = make_key(alg)
    chain = await chain_factory(pem_method(key))
    identity = await chain.authenticate("Bearer " + key.sign(claims()), "203.0.113.9")
    assert identity.subject == "user-1"
    assert identity.method == "jwt"
    assert identity.claims["iss"] == ISSUER
    assert chain.stats.successes["jwt"] == 1


async def test_valid_hs256_token_from_secret_env(chain_factory: Any) -> None:
    secret = secrets.token_urlsafe(48)
    chain = await chain_factory(
        {"type": "jwt", "secret_env": "TEST_JWT_SECRET", "algorithms": ["HS256"], "issuer": ISSUER,
         "audience": AUDIENCE},
        environ={"TEST_JWT_SECRET": secret},
    )  # fmt: skip
    token = jwt.encode(claims(), secret, algorithm="HS256")
    assert (await chain.authenticate(f"Bearer {token}", "::1")).subject == "user-1"
    forged = jwt.encode(claims(), secrets.token_urlsafe(48), algorithm="HS256")
    with pytest.raises(UnauthorizedError, match="signature is invalid"):
        await chain.authenticate(f"Bearer {forged}", "::1")


async def test_tenant_and_roles_from_dotted_claims(chain_factory: Any, rsa_key: SigningKey) -> None:
    chain = await chain_factory(
        pem_method(rsa_key, tenant_claim="org.id", roles_claim="realm_access.roles")
    )
    token = rsa_key.sign(claims(org={"id": "acme"}, realm_access={"roles": ["coach", "admin"]}))
    identity = await chain.authenticate(f"Bearer {token}", "::1")
    assert identity.tenant == "acme"
    assert identity.roles == {"coach", "admin"}


async def test_namespaced_url_claim_is_one_key(chain_factory: Any, rsa_key: SigningKey) -> None:
    # Auth0 custom claims are URL-named: the dots in them are not path separators.
    chain = await chain_factory(
        pem_method(rsa_key, roles_claim="https://app.example.com/roles", subject_claim="uid")
    )
    token = rsa_key.sign(claims(uid=42, **{"https://app.example.com/roles": "a b"}))
    identity = await chain.authenticate(f"Bearer {token}", "::1")
    assert identity.subject == "42"
    assert identity.roles == {"a", "b"}


async def test_leeway_tolerates_small_skew(chain_factory: Any, rsa_key: SigningKey) -> None:
    chain = await chain_factory(pem_method(rsa_key, leeway_seconds=30))
    token = rsa_key.sign(claims(exp=int(time.time()) - 10))
    assert (await chain.authenticate(f"Bearer {token}", "::1")).subject == "user-1"


def _non_canonical(token: str) -> str:
    """The same bytes spelled differently: an RS256 signature's last base64url character carries
    four unused bits, and flipping one leaves the decoded signature as it was."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(token[-1]) ^ 1]
    return token[:-1] + last


async def test_audience_list_and_unconfigured_audience(
    chain_factory: Any, rsa_key: SigningKey
) -> None:
    chain = await chain_factory(pem_method(rsa_key, audience=["web", "mobile"]))
    token = rsa_key.sign(claims(aud=["other", "mobile"]))
    assert (await chain.authenticate(f"Bearer {token}", "::1")).subject == "user-1"
    with pytest.raises(UnauthorizedError, match="audience"):
        await chain.authenticate("Bearer " + rsa_key.sign(claims(aud=["other"])), "::1")
    unset = await chain_factory(pem_method(rsa_key, audience=None))
    assert (await unset.authenticate("Bearer " + rsa_key.sign(claims(aud=None)), "::1")).subject
    with pytest.raises(UnauthorizedError, match="audience is not accepted"):
        await unset.authenticate("Bearer " + rsa_key.sign(claims()), "::1")


def _refusals(rsa_key: SigningKey, other: SigningKey) -> list[tuple[str, str, str, str]]:
    now = int(time.time())
    pem = rsa_key.public_pem().encode()
    return [
        ("expired", rsa_key.sign(claims(exp=now - 120)), "expired", "Token has expired"),
        ("not yet valid", rsa_key.sign(claims(nbf=now + 120)), "not_yet_valid", "not yet valid"),
        ("iat in future", rsa_key.sign(claims(iat=now + 600)), "not_yet_valid", "not yet valid"),
        ("wrong issuer", rsa_key.sign(claims(iss="https://evil.test/")), "wrong_issuer", "issuer"),
        ("wrong audience", rsa_key.sign(claims(aud="other-app")), "wrong_audience", "audience"),
        ("no audience", rsa_key.sign(claims(aud=None)), "missing_claim", "claim 'aud'"),
        ("bad signature", other.sign(claims(), kid=rsa_key.kid), "bad_signature", "signature"),
        ("null exp", rsa_key.sign({**claims(), "exp": None}), "missing_claim", "claim 'exp'"),
        ("text exp", rsa_key.sign({**claims(), "exp": "soon"}), "malformed", "malformed"),
        (
            "missing exp",
            rsa_key.sign({k: v for k, v in claims().items() if k != "exp"}),
            "missing_claim",
            "claim 'exp'",
        ),
        (
            "missing sub",
            rsa_key.sign({k: v for k, v in claims().items() if k != "sub"}),
            "missing_claim",
            "claim 'sub'",
        ),
        (
            "alg none",
            hand_signed({"alg": "none", "typ": "JWT"}, claims(), None),
            "algorithm",
            "algorithm is not allowed",
        ),
        (
            # Key confusion: HMAC keyed with the public key PEM, which an attacker can read.
            "HS256 with the public key as secret",
            hand_signed({"alg": "HS256", "typ": "JWT"}, claims(), pem),
            "algorithm",
            "algorithm is not allowed",
        ),
        (
            "critical extension",
            rsa_key.sign(claims(), crit=["exp"]),
            "malformed",
            "unsupported critical header",
        ),
        ("padded segment", rsa_key.sign(claims()) + "==", "malformed", "malformed"),
        ("non-canonical base64", _non_canonical(rsa_key.sign(claims())), "malformed", "malformed"),
        ("audience not a string", rsa_key.sign(claims(aud=[1, 2])), "malformed", "malformed"),
        ("boolean exp", rsa_key.sign({**claims(), "exp": True}), "malformed", "malformed"),
        (
            "payload not an object",
            hand_signed({"alg": "RS256"}, [], None),
            "malformed",
            "malformed",
        ),
        ("garbage header", "bm90LWpzb24.e30.c2ln", "malformed", "malformed"),
        ("empty parts", "..", "malformed", "malformed"),
    ]


async def test_refusals_are_precise_and_never_echo(
    chain_factory: Any, rsa_key: SigningKey, rsa_key_2: SigningKey
) -> None:
    chain = await chain_factory(pem_method(rsa_key))
    for name, token, reason, message in _refusals(rsa_key, rsa_key_2):
        before = chain.stats.failures[reason]
        with pytest.raises(UnauthorizedError) as caught:
            await chain.authenticate(f"Bearer {token}", "::1")
        error = caught.value
        assert message in str(error.message), name
        assert chain.stats.failures[reason] == before + 1, name
        assert error.status_code == 401
        assert 'error="invalid_token"' in error.headers["WWW-Authenticate"], name
        shown = str(error.message) + error.headers["WWW-Authenticate"]
        assert token not in shown
        assert "user-1" not in shown, name


async def test_oversized_token_refused_unparsed(chain_factory: Any, rsa_key: SigningKey) -> None:
    chain = await chain_factory(pem_method(rsa_key, max_token_bytes=1024))
    token = rsa_key.sign(claims(padding="x" * 2000))
    with pytest.raises(UnauthorizedError, match="too large"):
        await chain.authenticate(f"Bearer {token}", "::1")
    assert chain.stats.failures["oversized"] == 1


async def test_several_issuers_route_by_iss(
    chain_factory: Any, rsa_key: SigningKey, es_key: SigningKey
) -> None:
    chain = await chain_factory(
        pem_method(rsa_key, issuer="https://a.test/", tenant_claim="t"),
        pem_method(es_key, issuer="https://b.test/"),
    )
    a = await chain.authenticate("Bearer " + rsa_key.sign(claims(iss="https://a.test/", t="x")), "")
    b = await chain.authenticate("Bearer " + es_key.sign(claims(iss="https://b.test/", t="x")), "")
    assert (a.tenant, b.tenant) == ("x", None)
    # b's issuer with a's key: routed to b by `iss`, whose key refuses the signature.
    forged = rsa_key.sign(claims(iss="https://b.test/"), kid=es_key.kid)
    with pytest.raises(UnauthorizedError, match="algorithm is not allowed"):
        await chain.authenticate(f"Bearer {forged}", "")
    with pytest.raises(UnauthorizedError, match="issuer is not accepted"):
        await chain.authenticate("Bearer " + rsa_key.sign(claims(iss="https://c.test/")), "")


async def test_required_nested_claim_follows_the_dotted_path(
    chain_factory: Any, rsa_key: SigningKey
) -> None:
    """`required_claims` reads claims with the same dotted-path lookup as everything else."""
    chain = await chain_factory(pem_method(rsa_key, required_claims=["app_metadata.plan"]))
    token = rsa_key.sign(claims(app_metadata={"plan": "free"}))
    assert (await chain.authenticate(f"Bearer {token}", "::1")).subject == "user-1"
    with pytest.raises(UnauthorizedError):
        await chain.authenticate(f"Bearer {rsa_key.sign(claims(app_metadata={}))}", "::1")


@pytest.mark.parametrize(
    ("sub", "org", "claim"),
    [
        ("nul\x00in", "acme", "sub"),
        ("line\nbreak", "acme", "sub"),
        ("del\x7f", "acme", "sub"),
        ("c1\x85", "acme", "sub"),
        ("user-1", "ac\x00me", "org"),
        ("user-1", "ac\r\nme", "org"),
        ("s" * 257, "acme", "sub"),
        ("user-1", "o" * 257, "org"),
    ],
)
async def test_names_with_control_characters_or_too_long_are_refused(
    chain_factory: Any, rsa_key: SigningKey, sub: str, org: str, claim: str
) -> None:
    """A subject or tenant becomes a key in every store; PostgreSQL refuses NUL in text, which
    made the limits store 'unavailable' for that caller (uncounted where a rule fails open)."""
    chain = await chain_factory(pem_method(rsa_key, tenant_claim="org"))
    token = rsa_key.sign(claims(sub=sub, org=org))
    why = "is longer than 256" if max(len(sub), len(org)) > 256 else "holds control characters"
    with pytest.raises(UnauthorizedError, match=f"'{claim}' claim {why}"):
        await chain.authenticate(f"Bearer {token}", "::1")
    fine = rsa_key.sign(claims(sub="zoë 用户 😀" + "s" * 245, org="acme"))
    assert (await chain.authenticate(f"Bearer {fine}", "::1")).subject.startswith("zoë 用户 😀")
