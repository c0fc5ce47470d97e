"""Operator endpoints: the console page (`/admin`), its JSON API (`/admin/api/...`) and
`GET /admin/usage` (the `vapi-proxy usage` report).

Off unless admin keys are configured (every route then answers 404). Every route goes through
the `AdminGate` (allowed networks, optional own port, admin key or session cookie, CSRF for
cookie writes, rate limits) and answers with the console's security headers; every action that
changes something is written to the audit trail.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vapi_proxy.console.access import COOKIE, SECURE_COOKIE, SECURITY_HEADERS, Admin, AdminGate
from vapi_proxy.console.store import ConsoleStore, iso
from vapi_proxy.edge.body import read_json
from vapi_proxy.edge.middleware import request_state
from vapi_proxy.errors import BadRequestError, ProxyError, UnauthorizedError
from vapi_proxy.ledger.cli import usage_report
from vapi_proxy.routes.query import NO_QUERY, Parser, read_query, whole_number

if TYPE_CHECKING:
    from vapi_proxy.app import Runtime

Handler = Callable[[Request], Awaitable[Response]]


def parse_time(name: str, text: str | None) -> datetime | None:
    if text is None or text == "":
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequestError(
            f"'{name}' must be a date (YYYY-MM-DD) or an ISO timestamp."
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def text(max_length: int) -> Parser:
    def parse(name: str, raw: str) -> str:
        if not raw or len(raw) > max_length or not raw.isprintable():
            raise BadRequestError(
                f"Query parameter '{name}' must be 1 to {max_length} printable characters."
            )
        return raw

    return parse


def moment(name: str, raw: str) -> datetime:
    value = parse_time(name, raw)
    if value is None:
        raise BadRequestError(f"'{name}' must be a date (YYYY-MM-DD) or an ISO timestamp.")
    return value


def json_reply(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload),
        status_code=status,
        media_type="application/json",
        headers={**SECURITY_HEADERS, **(headers or {})},
    )


def text_field(body: dict[str, Any], name: str, *, required: bool, max_length: int) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequestError(f"'{name}' is required.")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadRequestError(f"'{name}' must be a non-empty string.")
    if len(value) > max_length:
        raise BadRequestError(f"'{name}' must be at most {max_length} characters.")
    return value.strip()


class AdminApi:
    """The admin routes over one runtime; each handler is wrapped by `_guard`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.store = ConsoleStore(runtime.ledger.database)
        self.gate = AdminGate(
            runtime.settings.admin,
            resolver=runtime.auth.client_address,
            store=self.store,
        )
        self.max_bytes = runtime.settings.server.max_body_bytes
        self.max_depth = runtime.settings.server.max_json_depth

    async def body(self, request: Request) -> dict[str, Any]:
        value = await read_json(request, max_bytes=self.max_bytes, max_depth=self.max_depth)
        if not isinstance(value, dict):
            raise BadRequestError("The request body must be a JSON object.")
        return value

    async def audit(
        self,
        request: Request,
        admin: Admin,
        action: str,
        *,
        target: str | None = None,
        outcome: str = "ok",
        detail: dict[str, Any] | None = None,
    ) -> None:
        await self.store.audit(
            actor=admin.actor,
            action=action,
            target=target,
            outcome=outcome,
            client=admin.client,
            request_id=request_state(request.scope).request_id,
            detail=detail,
        )

    # --- sessions --------------------------------------------------------------------------

    async def sign_in(self, request: Request) -> Response:
        client = self.gate.reachable(request)
        await self.gate.limit_sign_ins(client)
        body = await self.body(request)
        key = text_field(body, "key", required=True, max_length=512) or ""
        actor = self.gate.check_key(key)
        request_id = request_state(request.scope).request_id
        if actor is None:
            # Refused attempts are audited under "-" so the per-address limit can count them.
            await self.store.audit(
                actor="-",
                action="sign-in",
                outcome="refused",
                client=client,
                request_id=request_id,
            )
            raise UnauthorizedError("The admin key is not valid.")
        await self.gate.limit_actions(actor)
        ttl = self.runtime.settings.admin.session_ttl_seconds
        token, session = await self.store.open_session(actor, ttl_seconds=ttl, client=client)
        await self.store.audit(actor=actor, action="sign-in", client=client, request_id=request_id)
        reply = json_reply(
            {"actor": actor, "csrfToken": session.csrf_token, "expiresAt": iso(session.expires_at)}
        )
        secure = self.gate.secure(request)
        reply.set_cookie(
            SECURE_COOKIE if secure else COOKIE,
            token,
            max_age=ttl,
            path="/",
            secure=secure,
            httponly=True,
            samesite="strict",
        )
        return reply

    async def whoami(self, request: Request) -> Response:
        read_query(request, NO_QUERY)
        admin = await self.gate.authenticate(request, write=False)
        return json_reply({"actor": admin.actor, "via": admin.via, "csrfToken": admin.csrf_token})

    async def sign_out(self, request: Request) -> Response:
        admin = await self.gate.authenticate(request, write=True)
        token = self.gate.cookie_token(request)
        if token is not None:
            await self.store.close_session(token)
        await self.audit(request, admin, "sign-out")
        reply = json_reply({"signedOut": True})
        for name in (COOKIE, SECURE_COOKIE):
            reply.delete_cookie(
                name, path="/", secure=name == SECURE_COOKIE, httponly=True, samesite="strict"
            )
        return reply

    # --- reads -----------------------------------------------------------------------------

    async def audit_log(self, request: Request) -> Response:
        await self.gate.authenticate(request, write=False)
        query = read_query(
            request,
            {
                "limit": whole_number(1, 1000),
                "before": whole_number(1, 10**15),
                "actor": text(128),
                "action": text(64),
            },
        )
        rows = await self.store.audit_log(
            limit=query.get("limit", 100),
            before_id=query.get("before"),
            actor=query.get("actor"),
            action=query.get("action"),
        )
        return json_reply({"items": rows})

    async def usage_report(self, request: Request) -> Response:
        await self.gate.authenticate(request, write=False)
        query = read_query(
            request,
            {"identity": text(512), "tenant": text(256), "since": moment, "until": moment},
        )
        rows = await self.runtime.ledger.usage(
            identity_key=query.get("identity"),
            tenant=query.get("tenant"),
            since=query.get("since"),
            until=query.get("until"),
        )
        return json_reply(usage_report(rows))

    def routes(self) -> list[Route]:
        table: list[tuple[str, Handler, str]] = [
            ("/admin/usage", self.usage_report, "GET"),
            ("/admin/api/session", self.sign_in, "POST"),
            ("/admin/api/session", self.whoami, "GET"),
            ("/admin/api/session", self.sign_out, "DELETE"),
            ("/admin/api/audit", self.audit_log, "GET"),
        ]
        return [Route(path, _secured(handler), methods=[method]) for path, handler, method in table]


def _secured(handler: Handler) -> Handler:
    """Every admin answer, refusals included, carries the console's security headers."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ProxyError as exc:
            for name, value in SECURITY_HEADERS.items():
                exc.headers.setdefault(name, value)
            raise

    wrapped.__name__ = handler.__name__
    return wrapped


def routes(runtime: Runtime) -> list[Route]:
    if not runtime.settings.admin.key_hashes:
        return []
    return AdminApi(runtime).routes()
