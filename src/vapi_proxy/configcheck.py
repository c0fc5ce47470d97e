"""What `vapi-proxy check` finds beyond validation: cross-checks, a token explained, online probes.

A config that validates can still not work (a limit naming a profile that does not exist) or
probably be wrong (concurrency limits with no webhooks to release them). `lint` says which, as
errors and warnings; `explain_token` says why a real token would be admitted or refused;
`probe_online` asks the identity providers and Vapi whether what the config names exists.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from vapi_proxy.auth.config import AnonymousMethod, ApiKeyMethod, JwtMethod
from vapi_proxy.auth.identity import AuthMethod, Identity
from vapi_proxy.settings import Settings

Severity = Literal["error", "warning", "ok"]


@dataclass(frozen=True)
class Finding:
    severity: Severity
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.message}"


def lint(settings: Settings) -> list[Finding]:
    """Cross-section problems: errors where the config cannot work, warnings where it probably
    does not do what was meant. No I/O."""
    found: list[Finding] = []

    def error(where: str, message: str) -> None:
        found.append(Finding("error", where, message))

    def warning(where: str, message: str) -> None:
        found.append(Finding("warning", where, message))

    profiles = settings.profiles
    methods = settings.auth.methods
    configured: set[AuthMethod] = {m.type for m in methods}
    if not settings.auth.anonymous_enabled:
        configured.discard("anonymous")
    inbound = settings.webhooks.inbound
    has_inbound = bool(inbound.rules) or inbound.default is not None
    if has_inbound:
        configured.add("phone")

    if not methods:
        (warning if has_inbound else error)(
            "auth.methods",
            "empty: every request from a browser or server is refused (401); add a jwt, "
            "api_key or anonymous method (docs/auth.md)",
        )
    if not profiles:
        warning("profiles", "none: every call will be refused")

    has_roles = any(isinstance(m, JwtMethod) and m.roles_claim for m in methods)
    has_tenants = any(
        (isinstance(m, JwtMethod) and m.tenant_claim)
        or (isinstance(m, ApiKeyMethod) and any(k.tenant for k in m.keys))
        for m in methods
    )
    issuers = {i for i in settings.auth.jwt_issuers if i is not None}

    def unknown_issuers(where: str, named: list[str] | None) -> None:
        for issuer in named or []:
            if issuer not in issuers:
                warning(
                    where,
                    f"{issuer!r} is not the issuer of a configured jwt method, so no token "
                    "meets it (configured: "
                    f"{', '.join(sorted(issuers)) or 'no jwt method names an issuer'})",
                )

    for index, rule in enumerate(settings.limits.rules):
        where = f"limits.rules[{index}] ({rule.name})"
        unknown_issuers(f"{where}.match.issuers", rule.match.issuers)
        if rule.match.tenants and not has_tenants:
            warning(
                f"{where}.match.tenants",
                "no jwt method sets `tenant_claim` and no API key has a `tenant`, so no caller "
                "has a tenant and the rule never applies",
            )
        for name in rule.match.profiles or []:
            if name not in profiles:
                error(f"{where}.match.profiles", f"no profile named {name!r}{_known(profiles)}")
        for kind in rule.match.methods or []:
            if kind not in configured:
                warning(
                    f"{where}.match.methods",
                    f"{kind!r} is not a configured auth method: the rule never applies to it",
                )

    for index, method in enumerate(methods):
        if isinstance(method, ApiKeyMethod):
            for key in method.keys:
                for name in key.profiles or []:
                    if name not in profiles:
                        error(
                            f"auth.methods[{index}].keys.{key.name}.profiles",
                            f"no profile named {name!r}{_known(profiles)}",
                        )
        anonymous = isinstance(method, AnonymousMethod) and method.enabled
        if anonymous and not any(p.access.anonymous for p in profiles.values()):
            warning(
                f"auth.methods[{index}]",
                "anonymous callers are identified, but no profile has "
                "`access: {anonymous: true}`, so every one of them is refused",
            )

    for name, profile in profiles.items():
        access = profile.access
        where = f"profiles.{name}.access"
        unknown_issuers(f"{where}.issuers", access.issuers)
        if access.anonymous and "anonymous" not in configured:
            error(
                f"{where}.anonymous",
                "true, but no enabled `anonymous` auth method is configured: callers without "
                "a credential are refused before this rule is read; add `- type: anonymous` "
                "to auth.methods",
            )
        for kind in access.methods or []:
            if kind not in configured:
                warning(f"{where}.methods", f"{kind!r} is not a configured auth method")
        if access.methods is not None and not set(access.methods) & configured:
            error(f"{where}.methods", "admits none of the configured auth methods")
        if access.roles and not has_roles:
            error(
                f"{where}.roles",
                "no jwt method sets `roles_claim`, so no caller has roles and this profile "
                "refuses everyone",
            )
        if access.tenants and not has_tenants:
            error(
                f"{where}.tenants",
                "no jwt method sets `tenant_claim` and no API key has a `tenant`, so this "
                "profile refuses everyone",
            )

    _lint_webhooks(settings, warning)

    browser = any(isinstance(m, JwtMethod | AnonymousMethod) for m in methods)
    if browser and not settings.cors.allow_origins:
        warning(
            "cors.allow_origins",
            "empty: browsers on another origin cannot call the proxy (the Web SDK runs in "
            "your web app's origin); list it, e.g. https://app.example.com",
        )
    if settings.limits.backend.startswith("memory") and settings.limits.rules:
        warning(
            "limits.backend",
            "memory:// keeps the counts in the process: every restart, crash or reload gives "
            "every caller their quotas, budgets and slots back; leave it unset (counts kept in "
            "the ledger's database) unless that is what you want",
        )
    explicit = [
        ("ledger.url", settings.ledger.url, "url" in settings.ledger.model_fields_set),
        ("limits.backend", settings.limits.backend, True),
    ]
    for where, url, given in explicit:
        scheme, _, rest = url.partition("://")
        relative = rest.startswith("/") and not rest.startswith("//") and len(rest) > 1
        if given and scheme.split("+", 1)[0] == "sqlite" and relative:
            warning(
                where,
                f"{url} is relative to the directory the proxy starts in; use an absolute "
                "path (sqlite:////abs/path.db, four slashes)",
            )
    return found


def _unreachable_from_vapi(url: str) -> bool:
    """Whether `url` names this machine or a private network, which Vapi's servers cannot reach."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_private or address.is_loopback or address.is_link_local


def _lint_webhooks(settings: Settings, warning: Callable[[str, str], None]) -> None:
    hooks = settings.webhooks
    public = settings.public_url
    if public is not None and _unreachable_from_vapi(public):
        talks_to_vapi = urlsplit(settings.vapi.base_url).hostname == "api.vapi.ai"
        if talks_to_vapi:
            warning(
                "public_url",
                f"{public} is not reachable from Vapi's servers, so no webhook arrives; on a "
                "laptop use a tunnel's https URL (docs/frontend.md)",
            )
    settles = [
        rule.name
        for rule in settings.limits.rules
        if rule.concurrency is not None
        or (
            rule.budget is not None
            and any(
                v is not None
                for v in (
                    rule.budget.minutes_per_day,
                    rule.budget.minutes_per_month,
                    rule.budget.usd_per_day,
                    rule.budget.usd_per_month,
                )
            )
        )
    ]
    if settles and settings.public_url is None:
        warning(
            "public_url",
            f"unset, but limit rule(s) {', '.join(settles)} are settled by Vapi's webhooks: "
            "calls the proxy creates carry no webhook URL, so unless your assistants' server "
            "URL points at this proxy, concurrency slots stay held until they expire "
            "(maxDurationSeconds + limits.grace_seconds) and minutes are never counted",
        )
    if not hooks.verify and not hooks.allow_unverified:
        if settles or settings.public_url is not None:
            warning(
                "webhooks.verify",
                "empty: every webhook from Vapi is refused (401), so calls never settle"
                + (f" and limit rule(s) {', '.join(settles)} hold their slots" if settles else "")
                + "; configure a bearer or hmac credential (docs/webhooks.md)",
            )
    elif hooks.verify and hooks.vapi_credential_id is None and settings.public_url is not None:
        sends = any(getattr(v, "send_in_headers", False) for v in hooks.verify)
        if not sends:
            warning(
                "webhooks.vapi_credential_id",
                "unset and no verifier has `send_in_headers`: calls the proxy creates do not "
                "tell Vapi how to sign webhooks, so they are refused unless the assistant "
                "itself carries the credential",
            )


def _known(names: dict[str, Any]) -> str:
    return f" (profiles: {', '.join(names)})" if names else " (no profiles are configured)"


# --- check --token -------------------------------------------------------------------------


@dataclass
class TokenReport:
    lines: list[str] = field(default_factory=list)
    admitted: bool = False


def _segment(token: str, index: int) -> dict[str, Any] | None:
    try:
        part = token.split(".")[index]
        data = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (IndexError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _when(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


async def explain_token(
    settings: Settings, token: str, *, now: Callable[[], float] = time.time
) -> TokenReport:
    """Why the proxy would admit or refuse `token` (as `Authorization: Bearer <token>`), and
    which profiles' access rules the verified caller meets. Fetches JWKS as the proxy would."""
    from vapi_proxy.auth.chain import AuthChain
    from vapi_proxy.errors import ProxyError
    from vapi_proxy.policy.access import check_access

    report = TokenReport()
    say = report.lines.append
    token = token.strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    header, claims = _segment(token, 0), _segment(token, 1)
    if header is not None and claims is not None:
        say(f"token header: alg={header.get('alg')!r} kid={header.get('kid')!r}")
        shown = {k: claims[k] for k in ("iss", "aud", "sub", "exp", "nbf", "iat") if k in claims}
        say(f"token claims: {json.dumps(shown, default=str)}")
        exp = claims.get("exp")
        if isinstance(exp, int | float):
            delta = exp - now()
            say(
                f"  exp: expires in {_when(delta)}"
                if delta >= 0
                else f"  exp: EXPIRED {_when(delta)} ago (fetch a fresh token before each call)"
            )
        jwts = [m for m in settings.auth.methods if isinstance(m, JwtMethod)]
        if not jwts:
            say("  no jwt method is configured: a JWT can only be read as an API key")
        for method in jwts:
            _compare(method, header, claims, say)
    else:
        say("not a JWT (three base64url parts): it is checked as an API key")

    chain = AuthChain.from_settings(settings.auth)
    try:
        await chain.start()
        identity: Identity = await chain.authenticate(f"Bearer {token}", "127.0.0.1")
    except ProxyError as exc:
        say(f"REFUSED ({exc.status_code}): {exc.message}")
        return report
    finally:
        await chain.aclose()
    report.admitted = True
    extra = f", tenant {identity.tenant!r}" if identity.tenant else ""
    roles = f", roles {sorted(identity.roles)}" if identity.roles else ""
    say(f"ADMITTED as {identity.key}{extra}{roles}")
    for name, profile in settings.profiles.items():
        try:
            check_access(profile.access, identity, name)
        except ProxyError as exc:
            say(f"  profile {name}: refused ({exc.message}); its access rule: {_rule(profile)}")
        else:
            say(f"  profile {name}: may start")
    return report


def _rule(profile: Any) -> str:
    dumped = profile.access.model_dump(exclude_defaults=True)
    return json.dumps(dumped) if dumped else "any signed-in caller"


def _compare(
    method: JwtMethod, header: dict[str, Any], claims: dict[str, Any], say: Callable[[str], None]
) -> None:
    label = f"  jwt method (issuer {method.issuer!r})" if method.issuer else "  jwt method"
    alg = header.get("alg")
    if alg not in method.algorithms:
        say(f"{label}: alg {alg!r} is not in algorithms {method.algorithms}")
    if method.issuer is not None and claims.get("iss") != method.issuer:
        say(f"{label}: iss {claims.get('iss')!r} is not the configured issuer")
    audience = method.audience
    accepted = [audience] if isinstance(audience, str) else list(audience or [])
    aud = claims.get("aud")
    given = aud if isinstance(aud, list) else ([] if aud is None else [aud])
    if accepted and not set(map(str, given)) & set(accepted):
        say(f"{label}: aud {aud!r} names none of the configured audience {accepted}")
    if not accepted and aud is not None:
        say(
            f"{label}: the token carries aud {aud!r} but `audience` is not configured, so it is "
            "refused; set audience to the value your provider issues"
        )
    for name in method.required_claims:
        if name not in claims:
            say(f"{label}: required claim {name!r} is missing")
    subject = claims
    for part in method.subject_claim.split("."):
        subject = subject.get(part) if isinstance(subject, dict) else None  # type: ignore[assignment]
    if subject is None:
        say(f"{label}: subject claim {method.subject_claim!r} is missing")


# --- check --online ------------------------------------------------------------------------


async def probe_online(
    settings: Settings, api_key: str | None, *, fetch_seconds: float = 10.0
) -> list[Finding]:
    """Fetch each JWKS and issuer discovery document, prove the Vapi key works, and confirm
    every saved assistant, squad and workflow the profiles name exists."""
    import aiohttp

    from vapi_proxy.auth.jwks import JwksError, parse_jwks

    found: list[Finding] = []
    client_timeout = aiohttp.ClientTimeout(total=fetch_seconds)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:

        async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
            async with session.get(url, headers=headers, allow_redirects=False) as reply:
                return reply.status, await reply.read()

        for index, method in enumerate(settings.auth.methods):
            if not isinstance(method, JwtMethod):
                continue
            where = f"auth.methods[{index}]"
            if method.jwks_url is not None:
                try:
                    status, body = await get(method.jwks_url)
                    if status != 200:
                        raise JwksError(f"HTTP {status}")
                    keys = parse_jwks(body)
                except (aiohttp.ClientError, TimeoutError, JwksError) as exc:
                    found.append(
                        Finding(
                            "error",
                            f"{where}.jwks_url",
                            f"cannot fetch {method.jwks_url}: {_why(exc)}",
                        )
                    )
                else:
                    usable = [k for k in keys.values() if any(k.fits(a) for a in method.algorithms)]
                    if not usable:
                        found.append(
                            Finding(
                                "error",
                                f"{where}.jwks_url",
                                f"{len(keys)} key(s), none usable with {method.algorithms}",
                            )
                        )
                    else:
                        found.append(
                            Finding("ok", f"{where}.jwks_url", f"{len(usable)} usable key(s)")
                        )
            if method.issuer is not None and method.issuer.startswith(("https://", "http://")):
                url = method.issuer.rstrip("/") + "/.well-known/openid-configuration"
                try:
                    status, body = await get(url)
                    document = json.loads(body) if status == 200 else None
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    found.append(
                        Finding("warning", f"{where}.issuer", f"cannot fetch {url}: {_why(exc)}")
                    )
                    continue
                if not isinstance(document, dict):
                    found.append(
                        Finding(
                            "warning",
                            f"{where}.issuer",
                            f"{url} answered {status}: not an OpenID provider (fine if your "
                            "tokens are not OpenID Connect ones)",
                        )
                    )
                    continue
                if document.get("issuer") != method.issuer:
                    found.append(
                        Finding(
                            "error",
                            f"{where}.issuer",
                            f"the provider calls itself {document.get('issuer')!r}: tokens carry "
                            "that as `iss` (a trailing slash counts)",
                        )
                    )
                elif method.jwks_url and document.get("jwks_uri") not in (None, method.jwks_url):
                    found.append(
                        Finding(
                            "warning",
                            f"{where}.jwks_url",
                            f"the provider publishes its keys at {document.get('jwks_uri')}",
                        )
                    )
                else:
                    found.append(
                        Finding(
                            "ok", f"{where}.issuer", "matches the provider's discovery document"
                        )
                    )

        if api_key is None:
            found.append(
                Finding("error", "VAPI_API_KEY", "not set: cannot check the key or the ids")
            )
            return found
        base = settings.vapi.base_url
        auth = {"Authorization": f"Bearer {api_key}"}
        try:
            status, body = await get(f"{base}/assistant?limit=1", auth)
        except (aiohttp.ClientError, TimeoutError) as exc:
            found.append(Finding("error", "vapi.base_url", f"cannot reach {base}: {_why(exc)}"))
            return found
        if status in (401, 403):
            found.append(
                Finding(
                    "error",
                    "VAPI_API_KEY",
                    f"Vapi refused the key ({status}): use the private key from the dashboard "
                    "(the public key only starts web calls from browsers)",
                )
            )
            return found
        if status != 200:
            found.append(
                Finding("error", "VAPI_API_KEY", f"Vapi answered {status}: {body[:200]!r}")
            )
            return found
        found.append(Finding("ok", "VAPI_API_KEY", f"accepted by {base}"))

        async def exists(kind: str, ident: str, where: str) -> None:
            try:
                status, _ = await get(f"{base}/{kind}/{ident}", auth)
            except (aiohttp.ClientError, TimeoutError) as exc:
                found.append(Finding("error", where, f"cannot ask Vapi: {_why(exc)}"))
                return
            if status == 200:
                found.append(Finding("ok", where, f"{kind} {ident} exists"))
            elif status in (400, 404):
                found.append(Finding("error", where, f"Vapi has no {kind} {ident!r} ({status})"))
            else:
                found.append(
                    Finding("warning", where, f"Vapi answered {status} for {kind} {ident}")
                )

        checks = []
        for name, profile in settings.profiles.items():
            for attr, kind in (
                ("assistant_id", "assistant"),
                ("squad_id", "squad"),
                ("workflow_id", "workflow"),
            ):
                ident = getattr(profile, attr)
                if ident:
                    checks.append(exists(kind, ident, f"profiles.{name}.{attr}"))
        await asyncio.gather(*checks)
    return found


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
