"""Who may use the console, from where, how often: the gate in front of every admin route.

An operator proves themselves with an admin key (only its hash is configured): scripts send it as
`Authorization: Bearer`, the page exchanges it once for a session cookie (HttpOnly,
SameSite=Strict, Secure on https) so no script on the page ever holds a credential. A
cookie-borne request that changes state must also carry the session's CSRF token in
`X-CSRF-Token`. Only clients on `admin.allowed_networks` (the proxy's resolved client address)
reach the routes at all; others, and every request when admin is off, get a 404.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.requests import Request

from vapi_proxy.auth.base import looks_like_jwt
from vapi_proxy.auth.chain import AuthChain
from vapi_proxy.console.store import PENDING, REFUSED, ConsoleStore
from vapi_proxy.edge.client_address import ClientAddressResolver
from vapi_proxy.edge.middleware import plain_headers, request_state
from vapi_proxy.errors import (
    ForbiddenError,
    NotFoundError,
    ProxyError,
    TooManyRequestsError,
    UnauthorizedError,
)
from vapi_proxy.settings import AdminSettings

logger = logging.getLogger("vapi_proxy.admin")

COOKIE = "vapi_proxy_admin"
SECURE_COOKIE = "__Host-vapi_proxy_admin"
CSRF_HEADER = "x-csrf-token"
SECURITY_HEADERS = {
    # Everything the page needs comes from the proxy itself: no CDN, no inline script, no frames.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@dataclass(frozen=True, slots=True)
class Admin:
    """An authenticated operator: `actor` names them in the audit trail."""

    actor: str
    via: str  # "key" or "session"
    client: str
    csrf_token: str | None = None


@dataclass(slots=True)
class ActionSlot:
    """An admin action that has its slot: its audit row is `pending` until the `AdminGate.action`
    block ends, then holds `outcome` and `detail` (set them inside the block)."""

    row_id: int
    outcome: str = "ok"
    detail: dict[str, Any] | None = None


def actor_for_hash(key_hash: str) -> str:
    """An operator's name in the audit trail: the first hex digits of their key's hash."""
    return "key:" + key_hash.split(":", 1)[1][:12]


class AdminGate:
    def __init__(
        self,
        settings: AdminSettings,
        *,
        resolver: ClientAddressResolver,
        store: ConsoleStore,
        auth: AuthChain | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        self._auth = auth
        self._jwt_roles = frozenset(settings.jwt_roles)
        self._hashes = [
            (h.split(":", 1)[1].encode(), actor_for_hash(h)) for h in settings.key_hashes
        ]
        self._networks = [ipaddress.ip_network(n) for n in settings.allowed_networks]
        self._resolver = resolver
        self.store = store
        self._clock = clock
        self._reads: dict[str, deque[float]] = {}

    # --- where from ------------------------------------------------------------------------

    def client(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return self._resolver.resolve(peer, plain_headers(request.scope))

    def reachable(self, request: Request) -> str:
        """The client address, or a 404 (as if the route did not exist) when admin is off, the
        client is outside the allowed networks, or the request came in on the wrong port."""
        if not self.enabled:
            raise NotFoundError(f"Cannot {request.method} {request.url.path}: no such route.")
        if self.settings.port is not None:
            server = request.scope.get("server")
            if not server or server[1] != self.settings.port:
                raise NotFoundError(f"Cannot {request.method} {request.url.path}: no such route.")
        address = self.client(request)
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None
        if ip is None or not any(ip.version == n.version and ip in n for n in self._networks):
            raise NotFoundError(f"Cannot {request.method} {request.url.path}: no such route.")
        return address

    def secure(self, request: Request) -> bool:
        """Whether the browser reached us over https (directly, or per a trusted proxy)."""
        if request.url.scheme == "https":
            return True
        peer = request.client.host if request.client else ""
        try:
            ip = ipaddress.ip_address(peer)
        except ValueError:
            return False
        trusted = any(ip.version == n.version and ip in n for n in self._resolver.trusted)
        proto = plain_headers(request.scope).get("x-forwarded-proto", "")
        return trusted and proto.split(",")[-1].strip().lower() == "https"

    # --- who -------------------------------------------------------------------------------

    def check_key(self, key: str) -> str | None:
        """The actor owning admin key `key`, or None. Every hash is compared, so timing does
        not tell which one matched."""
        digest = hashlib.sha256(key.strip().encode()).hexdigest().encode()
        actor = None
        for expected, name in self._hashes:
            if hmac.compare_digest(digest, expected):
                actor = name
        return actor

    async def check_credential(self, token: str, request: Request) -> str | None:
        """The actor behind an admin key, or behind a JWT the auth chain verifies and that
        carries one of `admin.jwt_roles`; None for anything else."""
        actor = self.check_key(token)
        if actor is not None or not self._may_be_admin_jwt(token):
            return actor
        return await self._check_jwt(token, request)

    def _may_be_admin_jwt(self, token: str) -> bool:
        """Whether `token` is worth handing to the auth chain as an admin JWT."""
        return bool(self._jwt_roles) and self._auth is not None and looks_like_jwt(token.strip())

    async def _check_jwt(self, token: str, request: Request) -> str | None:
        if self._auth is None:
            return None
        peer = request.client.host if request.client else ""
        try:
            identity = await self._auth.authenticate(
                f"Bearer {token.strip()}", peer, plain_headers(request.scope)
            )
        except ProxyError:
            return None
        if identity.method != "jwt" or not identity.roles & self._jwt_roles:
            return None
        return identity.key[:128]

    def cookie_token(self, request: Request) -> str | None:
        return request.cookies.get(SECURE_COOKIE) or request.cookies.get(COOKIE)

    async def authenticate(self, request: Request, *, write: bool) -> Admin:
        """The operator behind `request`, or 401; 403 for a cookie write without its CSRF token
        or from another origin; 429 past the read limit. A write counts against the action
        limit when it runs, in `action`."""
        client = self.reachable(request)
        headers = plain_headers(request.scope)
        authorization = headers.get("authorization")
        admin: Admin | None = None
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise UnauthorizedError("An admin key is required.", error="invalid_request")
            actor = await self.check_credential(token, request)
            if actor is None:
                raise UnauthorizedError("The admin key is not valid.")
            admin = Admin(actor, "key", client)
        else:
            cookie = self.cookie_token(request)
            session = await self.store.session(cookie) if cookie else None
            if session is None:
                raise UnauthorizedError(
                    "Sign in with an admin key first."
                    if cookie is None
                    else "The session expired.",
                    error="invalid_request" if cookie is None else "invalid_token",
                )
            admin = Admin(session.actor, "session", client, session.csrf_token)
            if write:
                self._check_csrf(request, session.csrf_token)
        state = request_state(request.scope)
        state.identity = admin.actor
        if not write:
            self.limit_reads(admin.actor)
        return admin

    def _check_csrf(self, request: Request, expected: str) -> None:
        headers = plain_headers(request.scope)
        given = headers.get(CSRF_HEADER, "")
        if not given or not hmac.compare_digest(given.encode(), expected.encode()):
            raise ForbiddenError("This request needs the console's CSRF token (X-CSRF-Token).")
        origin = headers.get("origin")
        host = headers.get("host")
        if origin is not None and host is not None and origin.split("://", 1)[-1] != host:
            raise ForbiddenError("Admin actions are accepted only from the console's own origin.")

    # --- how often -------------------------------------------------------------------------

    @asynccontextmanager
    async def action(
        self,
        actor: str,
        action: str,
        *,
        target: str | None = None,
        client: str | None = None,
        request_id: str | None = None,
        detail: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> AsyncIterator[ActionSlot]:
        """Run an audited action inside this block, or get a 429 before it starts.

        `admin.actions_per_minute` per operator holds across every worker and replica: the
        action's audit row is written first, as `pending`, in the shared database, and only if
        the operator has fewer rows than the limit in the last minute (`reserve_action` counts
        and inserts under a per-operator lock, so a burst on several replicas takes turns). The
        block then runs the action and the row gets its outcome: the slot's `outcome` (default
        `ok`), or `failed` with the error when the block raises. An attempt keeps its slot
        whether it succeeded or not; a row left `pending` is an action whose outcome was never
        recorded (the process stopped, or the database failed, while it ran)."""
        row_id = await self.store.reserve_action(
            actor=actor,
            action=action,
            limit=self.settings.actions_per_minute,
            target=target,
            client=client,
            request_id=request_id,
            detail=detail,
            now=now,
        )
        if row_id is None:
            raise TooManyRequestsError(
                "Too many admin actions in the last minute; wait a moment.", retry_after=60
            )
        slot = ActionSlot(row_id, detail=detail)
        try:
            yield slot
        except Exception as exc:
            error = exc.message if isinstance(exc, ProxyError) else type(exc).__name__
            try:
                await self.store.finish_action(
                    row_id, outcome="failed", detail={**(slot.detail or {}), "error": str(error)}
                )
            except Exception:  # the action's own error is the one to report
                logger.warning("could not record the failed %s of %s", action, actor, exc_info=True)
            raise
        await self.store.finish_action(row_id, outcome=slot.outcome, detail=slot.detail)

    async def sign_in(
        self,
        key: str,
        request: Request,
        *,
        client: str,
        request_id: str | None = None,
        now: datetime | None = None,
    ) -> str:
        """The actor behind the credential `key` sent to sign in from `client`; 401 when it is
        not valid, or 429 before it is even checked when the address already has
        `admin.actions_per_minute` sign-in attempts without a valid credential in the last
        minute, counted across every worker and replica.

        The count and the check take turns per address (`ConsoleStore.reserve_sign_in`): an
        admin key is checked under the address's lock (a hash comparison), so a wrong one is
        recorded as `refused` in the same transaction and a right one writes nothing there. A
        JWT needs the auth chain (perhaps the identity provider's keys), so it first takes a
        `pending` slot; the slot becomes `refused` (or `failed` if the check raised) or is
        removed when the JWT proves valid. A valid credential never counts against its address,
        and does not clear the address's refusals either; signing in is then an action of the
        operator (`action`), under the operator's own limit."""
        verdict: dict[str, str | None] = {}

        def judge() -> str | None:
            actor = self.check_key(key)
            if actor is not None:
                verdict["actor"] = actor
                return "ok"
            return None if self._may_be_admin_jwt(key) else REFUSED

        slot = await self.store.reserve_sign_in(
            client=client,
            limit=self.settings.actions_per_minute,
            judge=judge,
            request_id=request_id,
            now=now,
        )
        if slot is None:
            raise TooManyRequestsError(
                "Too many failed sign-ins from this address; wait a minute.", retry_after=60
            )
        actor = verdict.get("actor")
        if slot.outcome == PENDING and slot.row_id is not None:
            try:
                actor = await self._check_jwt(key, request)
            except Exception as exc:
                try:
                    await self.store.finish_action(
                        slot.row_id, outcome="failed", detail={"error": type(exc).__name__}
                    )
                except Exception:  # the check's own error is the one to report
                    logger.warning("could not record a failed sign-in check", exc_info=True)
                raise
            if actor is None:
                await self.store.finish_action(slot.row_id, outcome=REFUSED)
            else:
                await self.store.drop_sign_in(slot.row_id)
        if actor is None:
            raise UnauthorizedError("The admin key is not valid.")
        return actor

    def limit_reads(self, actor: str) -> None:
        """Reads per operator per minute, per process (reads change nothing, so a per-process
        window is enough to stop a runaway script)."""
        now = self._clock()
        window = self._reads.setdefault(actor, deque())
        while window and window[0] <= now - 60:
            window.popleft()
        if len(window) >= self.settings.reads_per_minute:
            raise TooManyRequestsError(
                "Too many admin API reads in the last minute; slow down.",
                retry_after=max(1, int(window[0] + 60 - now)),
            )
        window.append(now)
