"""The `auth:` config refuses every weakening mistake at load time, with a readable reason."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from tests.support.auth import SigningKey, make_key
from vapi_proxy.auth import config as auth_config
from vapi_proxy.auth.api_key import generate_key, hash_key
from vapi_proxy.auth.config import AuthSettings, JwtMethod
from vapi_proxy.configbase import config_context
from vapi_proxy.policy.access import AccessRule

JWKS = "https://issuer.test/.well-known/jwks.json"


def load(
    *methods: dict[str, Any], environ: dict[str, str] | None = None, **extra: Any
) -> AuthSettings:
    return AuthSettings.model_validate(
        {"methods": list(methods), **extra}, context=config_context(environ or {})
    )


@pytest.fixture(scope="module")
def rsa_pem() -> str:
    return make_key("RS256").public_pem()


def refusals(rsa_pem: str) -> list[tuple[str, dict[str, Any], str]]:
    return [
        ("alg none", {"jwks_url": JWKS, "algorithms": ["none"]}, "never accepted"),
        ("alg None", {"jwks_url": JWKS, "algorithms": ["RS256", "None"]}, "never accepted"),
        ("unknown alg", {"jwks_url": JWKS, "algorithms": ["RS257"]}, "unsupported algorithm"),
        ("no algorithms", {"jwks_url": JWKS, "algorithms": []}, "at least 1"),
        ("algorithms missing", {"jwks_url": JWKS}, "algorithms"),
        ("HS with JWKS", {"jwks_url": JWKS, "algorithms": ["RS256", "HS256"]}, "HS256 cannot"),
        ("HS with PEM", {"public_key": rsa_pem, "algorithms": ["HS256"]}, "HS256 cannot"),
        ("no key source", {"algorithms": ["RS256"]}, "exactly one"),
        (
            "two key sources",
            {"jwks_url": JWKS, "public_key": rsa_pem, "algorithms": ["RS256"]},
            "exactly one",
        ),
        ("plain http", {"jwks_url": "http://issuer.test/j", "algorithms": ["RS256"]}, "https"),
        ("PEM vs ES256", {"public_key": rsa_pem, "algorithms": ["ES256"]}, "cannot verify ES256"),
        ("not a PEM", {"public_key": "hello", "algorithms": ["RS256"]}, "not a PEM"),
        ("unset env", {"secret_env": "NO_SUCH_VAR_X", "algorithms": ["HS256"]}, "unset"),
        ("leeway huge", {"jwks_url": JWKS, "algorithms": ["RS256"], "leeway_seconds": 3600}, "300"),
        ("typo field", {"jwks_url": JWKS, "algorithms": ["RS256"], "audiance": "x"}, "audiance"),
    ]


def test_jwt_refusals(rsa_pem: str) -> None:
    for name, fields, message in refusals(rsa_pem):
        with pytest.raises(ValidationError, match=message):
            load({"type": "jwt", **fields})
        assert name


def test_shared_secret_from_env_and_file(tmp_path: Path) -> None:
    secret = secrets.token_urlsafe(64)
    from_env = load(
        {"type": "jwt", "secret_env": "TEST_AUTH_SECRET", "algorithms": ["HS512"]},
        environ={"TEST_AUTH_SECRET": secret},
    )
    method = from_env.methods[0]
    assert isinstance(method, JwtMethod)
    assert method.secret is not None
    assert method.secret.get_secret_value() == secret
    assert secret not in repr(method)
    assert secret not in str(from_env.model_dump())
    path = tmp_path / "secret"
    path.write_text(secret + "\n")
    from_file = load({"type": "jwt", "secret_file": str(path), "algorithms": ["HS256"]})
    loaded = from_file.methods[0]
    assert isinstance(loaded, JwtMethod)
    assert loaded.secret is not None
    assert loaded.secret.get_secret_value() == secret


def test_short_secret_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("x" * 40)
    load({"type": "jwt", "secret_file": str(path), "algorithms": ["HS256"]})
    with pytest.raises(ValidationError, match="at least 64 bytes"):
        load({"type": "jwt", "secret_file": str(path), "algorithms": ["HS256", "HS512"]})
    with pytest.raises(ValidationError, match="cannot read secret_file"):
        load({"type": "jwt", "secret_file": str(tmp_path / "nope"), "algorithms": ["HS256"]})


def test_public_key_file_and_loopback_jwks(tmp_path: Path) -> None:
    key: SigningKey = make_key("EdDSA")
    path = tmp_path / "key.pem"
    path.write_text(key.public_pem())
    load({"type": "jwt", "public_key_file": str(path), "algorithms": ["EdDSA"]})
    load({"type": "jwt", "jwks_url": "http://127.0.0.1:9/j", "algorithms": ["ES256"]})


def test_api_key_config() -> None:
    digest = hash_key(generate_key())
    load({"type": "api_key", "keys": [{"name": "a", "hash": digest.upper().replace("SHA", "sha")}]})
    for keys, message in [
        ([{"name": "a", "hash": "plaintext-key"}], "sha256:<64 hex digits>"),
        ([{"name": "a", "hash": digest}, {"name": "a", "hash": hash_key("y" * 40)}], "name: a"),
        ([{"name": "a", "hash": digest}, {"name": "b", "hash": digest}], "duplicate API key hash"),
        ([], "at least 1"),
        ([{"name": "a\nb", "hash": digest}], "should match pattern"),
        ([{"name": "n" * 257, "hash": digest}], "at most 256 characters"),
    ]:
        with pytest.raises(ValidationError, match=message):
            load({"type": "api_key", "keys": keys})


def test_method_type_and_proxies() -> None:
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        load({"type": "oauth"})
    with pytest.raises(ValidationError, match="at most once"):
        load({"type": "anonymous"}, {"type": "anonymous", "enabled": False})
    keys = {"type": "api_key", "keys": [{"name": "a", "hash": hash_key("k" * 40)}]}
    with pytest.raises(ValidationError, match="api_key method at most once: put all keys in one"):
        load(keys, keys)
    with pytest.raises(ValidationError, match="host bits set"):
        load(trusted_proxies=["10.0.0.1/8"])
    assert load({"type": "anonymous"}, trusted_proxies=["10.0.0.0/8", "::1/128"]).anonymous_enabled
    assert not load().anonymous_enabled
    assert load().client_address_header == "X-Forwarded-For"
    assert load(client_address_header=" CF-Connecting-IP ").client_address_header == (
        "CF-Connecting-IP"
    )
    with pytest.raises(ValidationError, match="not a header name"):
        load(client_address_header="X-Forwarded-For: 1.2.3.4")


def _models() -> list[type[BaseModel]]:
    found = [
        value
        for value in vars(auth_config).values()
        if isinstance(value, type) and issubclass(value, BaseModel) and value is not BaseModel
    ]
    return [*found, AccessRule]


@pytest.mark.parametrize("model", _models(), ids=lambda m: m.__name__)
def test_every_setting_is_documented(model: type[BaseModel]) -> None:
    undocumented = [name for name, f in model.model_fields.items() if not f.description]
    assert undocumented == []


def test_several_jwt_methods_need_distinct_issuers() -> None:
    def jwt(issuer: str | None) -> dict[str, Any]:
        return {"type": "jwt", "jwks_url": JWKS, "algorithms": ["RS256"], "issuer": issuer}

    load(jwt("https://a/"), jwt("https://b/"))
    load(jwt(None))
    for pair in [(jwt("https://a/"), jwt(None)), (jwt("https://a/"), jwt("https://a/"))]:
        with pytest.raises(ValidationError, match="each needs its own issuer"):
            load(*pair)


def test_public_key_as_shared_secret_refused(tmp_path: Path, rsa_pem: str) -> None:
    path = tmp_path / "secret"
    path.write_text(rsa_pem)
    with pytest.raises(ValidationError, match="looks like a public key"):
        load({"type": "jwt", "secret_file": str(path), "algorithms": ["HS256"]})
