"""The `auth:` section of the config: which credentials the proxy accepts, checked at load time.

Every mistake that would weaken verification (no algorithm list, `none`, an HMAC algorithm next to
a public key, a short shared secret, a plain-HTTP JWKS URL) is refused here, before serving.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import get_default_algorithms
from jwt.exceptions import InvalidKeyError
from pydantic import (
    Field,
    IPvAnyNetwork,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vapi_proxy.auth.identity import (
    CONTROL_CHARACTERS,
    MAX_ISSUER_CHARS,
    MAX_NAME_CHARS,
    AuthMethod,
    encoded_issuer_length,
)
from vapi_proxy.configbase import StrictModel, environ_of, read_secrets
from vapi_proxy.edge.client_address import DEFAULT_HEADER, HEADER_NAME

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = ("ES256", "ES384", "ES512")
EDDSA_ALGORITHMS = ("EdDSA",)
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS + RSA_ALGORITHMS + EC_ALGORITHMS + EDDSA_ALGORITHMS

# RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_API_KEY_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


def key_fits_algorithm(key: Any, algorithm: str) -> bool:
    """Whether a parsed public key may verify `algorithm` (RFC 7518 §3.1 families; EC curve must
    match the hash, so a P-256 key never verifies ES512)."""
    if algorithm in RSA_ALGORITHMS:
        return isinstance(key, rsa.RSAPublicKey)
    if algorithm in EC_ALGORITHMS:
        return (
            isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_CURVES[algorithm]
        )
    if algorithm in EDDSA_ALGORITHMS:
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


class JwtMethod(StrictModel):
    """Accept JWTs signed by the app's identity provider (or by the app itself)."""

    type: Literal["jwt"] = Field(description="Selects this method.")
    jwks_url: str | None = Field(
        None,
        description="HTTPS URL of the provider's JSON Web Key Set. Keys are cached and refetched "
        "when a token names an unknown `kid`. Plain http is allowed for loopback hosts only.",
    )
    public_key: str | None = Field(
        None, description="A PEM public key (RSA, EC or Ed25519/Ed448) given inline."
    )
    public_key_file: Path | None = Field(None, description="Path to a PEM public key file.")
    secret_env: str | None = Field(
        None, description="Name of an environment variable holding the HMAC shared secret."
    )
    secret_file: Path | None = Field(
        None,
        description="Path to a file holding the HMAC shared secret (trailing newline ignored).",
    )
    algorithms: list[str] = Field(
        description="Signature algorithms accepted, explicitly. `none` is never accepted, and "
        "HS* is refused when a public key or JWKS is configured (key-confusion attacks).",
        min_length=1,
    )
    issuer: str | None = Field(
        None,
        description="Required `iss` value. With several jwt methods, a token goes to the method "
        "whose issuer matches its `iss`.",
    )
    audience: str | list[str] | None = Field(
        None,
        description="Accepted `aud` value(s); the token must name one. Unset: tokens that carry "
        "an `aud` claim are refused, so set this whenever the provider issues one.",
    )
    leeway_seconds: float = Field(
        30, ge=0, le=300, description="Clock skew tolerated on `exp`, `nbf` and `iat`."
    )
    required_claims: list[str] = Field(
        default_factory=lambda: ["exp"],
        description="Claims that must be present. `exp` by default so no token lives forever; "
        "`iss`/`aud` are required anyway when `issuer`/`audience` are set.",
    )
    subject_claim: str = Field(
        "sub", description="Claim (dotted path allowed) that names the caller."
    )
    tenant_claim: str | None = Field(
        None, description="Claim (dotted path allowed) naming the caller's tenant/organisation."
    )
    roles_claim: str | None = Field(
        None,
        description="Claim (dotted path allowed) listing roles or groups, e.g. "
        "`realm_access.roles` (Keycloak) or `cognito:groups`; a space-separated string works too.",
    )
    cache_seconds: float = Field(
        600, gt=0, description="How long fetched JWKS keys are used before a refresh."
    )
    min_refetch_interval_seconds: float = Field(
        30,
        ge=0,
        description="Least time between two JWKS fetches, so tokens with made-up `kid`s cannot "
        "make the proxy hammer the provider.",
    )
    fetch_timeout_seconds: float = Field(
        5, gt=0, le=60, description="Total timeout for one JWKS fetch."
    )
    max_token_bytes: int = Field(
        8192, ge=256, le=65536, description="Tokens longer than this are refused unparsed."
    )
    token_cache_size: int = Field(
        4096,
        ge=0,
        le=1_000_000,
        description="How many verified tokens (by hash) are remembered, least recently used "
        "out, so a reused token skips its signature check; each entry ends at the token's `exp` "
        "and when the JWKS set changes. 0 turns the cache off.",
    )

    _secret: SecretStr | None = PrivateAttr(None)
    _public_key: Any = PrivateAttr(None)

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        for name in value:
            if name.lower() == "none":
                raise ValueError("the 'none' algorithm is never accepted: tokens must be signed")
            if name not in SUPPORTED_ALGORITHMS:
                raise ValueError(
                    f"unsupported algorithm {name!r}; choose from {', '.join(SUPPORTED_ALGORITHMS)}"
                )
        return list(dict.fromkeys(value))

    @field_validator("issuer")
    @classmethod
    def _issuer_fits(cls, value: str | None) -> str | None:
        if value is not None and encoded_issuer_length(value) > MAX_ISSUER_CHARS:
            raise ValueError(
                f"issuer is too long: identity keys hold at most {MAX_ISSUER_CHARS} characters"
                " of it, percent-encoded"
            )
        return value

    @field_validator("jwks_url")
    @classmethod
    def _https_only(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme == "https" or (
            parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS
        ):
            return value
        raise ValueError("jwks_url must be https (plain http only for a loopback host)")

    @model_validator(mode="after")
    def _one_key_source(self, info: ValidationInfo) -> JwtMethod:
        sources = [
            name
            for name in ("jwks_url", "public_key", "public_key_file", "secret_env", "secret_file")
            if getattr(self, name) is not None
        ]
        if len(sources) != 1:
            raise ValueError(
                "configure exactly one of jwks_url, public_key, public_key_file, secret_env, "
                f"secret_file (got {', '.join(sources) or 'none'})"
            )
        hmac_algs = [a for a in self.algorithms if a in HMAC_ALGORITHMS]
        if self.secret_env is not None or self.secret_file is not None:
            if len(hmac_algs) != len(self.algorithms):
                raise ValueError("a shared secret verifies HS256/HS384/HS512 only")
            # The same reading as every other secret (configbase), from the given environment.
            (self._secret,) = read_secrets(
                [self.secret_env] if self.secret_env is not None else [],
                [self.secret_file] if self.secret_file is not None else [],
                environ_of(info),
            )
            try:
                # PyJWT refuses HMAC secrets that are PEM/SSH public keys: key-confusion bait.
                get_default_algorithms()["HS256"].prepare_key(self._secret.get_secret_value())
            except InvalidKeyError:
                raise ValueError(
                    "the shared secret looks like a public key, not a secret"
                ) from None
            need = max(_HMAC_MIN_BYTES[a] for a in hmac_algs)
            if len(self._secret.get_secret_value().encode()) < need:
                raise ValueError(
                    f"the shared secret must be at least {need} bytes for {', '.join(hmac_algs)}"
                )
            return self
        if hmac_algs:
            raise ValueError(
                f"{', '.join(hmac_algs)} cannot be used with a public key or JWKS: an attacker "
                "could sign tokens with the public key as the HMAC secret"
            )
        if self.jwks_url is None:
            self._public_key = self._load_public_key()
            unfit = [a for a in self.algorithms if not key_fits_algorithm(self._public_key, a)]
            if unfit:
                raise ValueError(f"the public key cannot verify {', '.join(unfit)}")
        return self

    def _load_public_key(self) -> Any:
        if self.public_key is not None:
            pem = self.public_key.encode()
        else:
            try:
                pem = (self.public_key_file or Path()).read_bytes()
            except OSError as exc:
                raise ValueError(
                    f"cannot read public_key_file {self.public_key_file}: {exc.strerror}"
                ) from None
        try:
            key = load_pem_public_key(pem)
        except ValueError:
            raise ValueError("public key is not a PEM public key") from None
        if not isinstance(key, PublicKey):
            raise ValueError("public key must be RSA, EC, Ed25519 or Ed448")
        return key

    @property
    def secret(self) -> SecretStr | None:
        """The HMAC secret read from `secret_env`/`secret_file` at load time."""
        return self._secret

    @property
    def parsed_public_key(self) -> Any:
        """The PEM key parsed once at load time (None for JWKS or a secret)."""
        return self._public_key


class ApiKey(StrictModel):
    """One static API key, stored only as its hash."""

    name: str = Field(
        min_length=1,
        max_length=MAX_NAME_CHARS,
        pattern=f"^[^{CONTROL_CHARACTERS}]+$",
        description="Names the caller: becomes the identity's subject (no control characters).",
    )
    hash: str = Field(
        description="`sha256:<hex>` as printed by `vapi-proxy hash-key`; never the key itself."
    )
    profiles: list[str] | None = Field(
        None, description="Profiles this key may start; unset means any profile its rules allow."
    )
    tenant: str | None = Field(None, description="Tenant the key's calls are counted under.")

    @field_validator("hash")
    @classmethod
    def _hash_format(cls, value: str) -> str:
        value = value.strip().lower()
        if not _API_KEY_HASH.fullmatch(value):
            raise ValueError(
                "hash must look like sha256:<64 hex digits>; make one with `vapi-proxy hash-key`"
            )
        return value


class ApiKeyMethod(StrictModel):
    """Accept static API keys (server-to-server callers, scripts)."""

    type: Literal["api_key"] = Field(description="Selects this method.")
    keys: list[ApiKey] = Field(min_length=1, description="The accepted keys.")
    header: str | None = Field(
        "X-API-Key",
        description="Extra header a key may arrive in when there is no Authorization header; "
        "null to accept keys only as `Authorization: Bearer <key>`.",
    )

    @model_validator(mode="after")
    def _unique(self) -> ApiKeyMethod:
        for attr in ("name", "hash"):
            values = [getattr(key, attr) for key in self.keys]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                shown = ", ".join(dupes) if attr == "name" else f"{len(dupes)} hash(es)"
                raise ValueError(f"duplicate API key {attr}: {shown}")
        return self


class AnonymousMethod(StrictModel):
    """Let callers without a credential through as `anonymous`, keyed by client address.

    Only profiles whose `access.anonymous` is true accept them."""

    type: Literal["anonymous"] = Field(description="Selects this method.")
    enabled: bool = Field(True, description="Turn anonymous access off without deleting it.")


Method = Annotated[JwtMethod | ApiKeyMethod | AnonymousMethod, Field(discriminator="type")]


class AuthSettings(StrictModel):
    """How callers prove who they are."""

    methods: list[Method] = Field(
        default_factory=list,
        description="Authentication methods, tried in order; the first that recognises a "
        "credential verifies it. Empty: every request is refused.",
    )
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Networks (CIDR) of reverse proxies (your load balancer) whose "
        "`client_address_header` is believed when working out the client address.",
    )
    client_address_header: str = Field(
        DEFAULT_HEADER,
        description="The one header your load balancer writes the client address into, read "
        "from the right past `trusted_proxies`: `X-Forwarded-For` (nginx, ingress-nginx, AWS "
        "ALB), `Forwarded` (RFC 7239), `CF-Connecting-IP` (Cloudflare), `Fly-Client-IP` (Fly), "
        "`X-Real-IP`. Every other forwarded header is ignored (clients can write them).",
    )

    @field_validator("client_address_header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        value = value.strip()
        if not HEADER_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a header name")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _strict_networks(cls, value: Any) -> Any:
        # `10.0.0.1/8` is almost always a typo for `10.0.0.0/8`; say so rather than guess.
        if isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    try:
                        ipaddress.ip_network(item, strict=True)
                    except ValueError as exc:
                        raise ValueError(f"trusted_proxies: {exc}") from None
        return value

    @model_validator(mode="after")
    def _unambiguous(self) -> AuthSettings:
        # The first method that recognises a credential owns it, so two methods that would
        # recognise the same credentials make the second unreachable.
        kinds: list[AuthMethod] = [m.type for m in self.methods]
        once: tuple[tuple[AuthMethod, str], ...] = (
            ("anonymous", ""),
            ("api_key", ": put all keys in one"),
        )
        for kind, hint in once:
            if kinds.count(kind) > 1:
                raise ValueError(f"configure the {kind} method at most once{hint}")
        jwts = [m for m in self.methods if isinstance(m, JwtMethod)]
        issuers = [m.issuer for m in jwts]
        if len(jwts) > 1 and (None in issuers or len(set(issuers)) != len(issuers)):
            raise ValueError(
                "with several jwt methods each needs its own issuer: tokens go to the method "
                "whose issuer matches their `iss`"
            )
        return self

    @property
    def jwt_issuers(self) -> list[str | None]:
        """Each jwt method's issuer (None for a method without one), in order."""
        return [m.issuer for m in self.methods if isinstance(m, JwtMethod)]

    @property
    def anonymous_enabled(self) -> bool:
        return any(isinstance(m, AnonymousMethod) and m.enabled for m in self.methods)


def jwt_issuers_in(raw_config: Any) -> list[str | None] | None:
    """The jwt methods' issuers read from a config file's raw YAML, without loading (and so
    without needing) any secret; None when the file has no readable `auth.methods`."""
    auth = raw_config.get("auth") if isinstance(raw_config, dict) else None
    methods = auth.get("methods") if isinstance(auth, dict) else None
    if not isinstance(methods, list):
        return None
    return [
        str(m["issuer"]) if m.get("issuer") is not None else None
        for m in methods
        if isinstance(m, dict) and m.get("type") == "jwt"
    ]
