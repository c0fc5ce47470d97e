"""Test-time keys, a token factory, an injectable clock and the JWKS server's state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from vapi_proxy.auth.config import AuthSettings
from vapi_proxy.configbase import config_context

ISSUER = "https://issuer.test/"
AUDIENCE = "vapi-proxy-tests"


@dataclass
class SigningKey:
    """A private key, its public half, and a kid: what an identity provider holds."""

    alg: str
    private: Any
    kid: str

    @property
    def public(self) -> Any:
        return self.private.public_key()

    def public_pem(self) -> str:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def jwk(self) -> dict[str, Any]:
        maker = {"RS": RSAAlgorithm, "PS": RSAAlgorithm, "ES": ECAlgorithm, "Ed": OKPAlgorithm}
        data: dict[str, Any] = maker[self.alg[:2]].to_jwk(self.public, as_dict=True)
        return {**data, "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        """A token with this key's kid, unless `kid=` overrides it (None: no kid at all)."""
        merged = {key: value for key, value in {"kid": self.kid, **headers}.items() if value}
        return jwt.encode(claims, self.private, algorithm=self.alg, headers=merged)


def make_key(alg: str, kid: str | None = None) -> SigningKey:
    if alg.startswith(("RS", "PS")):
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "ES384":
        private = ec.generate_private_key(ec.SECP384R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(alg)
    return SigningKey(alg, private, kid or f"{alg.lower()}-1")


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "user-1", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, **extra}


class Clock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class JwksServer:
    """A JWKS endpoint whose keys, status and fetch count the test controls."""

    url: str = ""
    keys: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    body: bytes | None = None
    fetches: int = 0
    redirected_fetches: int = 0

    def reset(self) -> None:
        self.keys, self.status, self.body = [], 200, None
        self.fetches = self.redirected_fetches = 0


def settings(
    *methods: dict[str, Any],
    trusted_proxies: list[str] | None = None,
    environ: dict[str, str] | None = None,
    **more: Any,
) -> AuthSettings:
    """The `auth:` section; secrets named by `secret_env` come from `environ`."""
    return AuthSettings.model_validate(
        {"methods": list(methods), "trusted_proxies": trusted_proxies or [], **more},
        context=config_context(environ or {}),
    )
