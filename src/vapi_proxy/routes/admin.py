"""Operator endpoints: the console page (`/admin`), its JSON API (`/admin/api/...`) and
`GET /admin/usage` (the `vapi-proxy usage` report).

Off unless admin keys are configured (every route then answers 404). Every route goes through
the `AdminGate` (allowed networks, optional own port, admin key or session cookie, CSRF for
cookie writes, rate limits) and answers with the console's security headers; every action that
changes something is written to the audit trail.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vapi_proxy.console.access import (
    COOKIE,
    SECURE_COOKIE,
    SECURITY_HEADERS,
    ActionSlot,
    Admin,
    AdminGate,
)
from vapi_proxy.console.calls import end_call, live_calls
from vapi_proxy.console.limits_view import identity_from_ledger, remaining
from vapi_proxy.console.queries import (
    BUCKET_SIZES,
    MAX_BUCKETS,
    Bucket,
    UsageFilter,
    by_profile,
    overview,
    top_identities,
    usage_series,
    webhook_health,
)
from vapi_proxy.console.store import ConsoleStore, iso
from vapi_proxy.edge.body import read_json
from vapi_proxy.edge.middleware import request_state
from vapi_proxy.errors import (
    BadRequestError,
    NotFoundError,
    ProxyError,
    ServiceUnavailableError,
)
from vapi_proxy.ledger.cli import usage_report
from vapi_proxy.ledger.records import utc_now
from vapi_proxy.routes.query import NO_QUERY, Parser, read_query, whole_number

if TYPE_CHECKING:
    from vapi_proxy.runtime import Runtime

Handler = Callable[[Request], Awaitable[Response]]
logger = logging.getLogger("vapi_proxy.admin")
_MEDIA = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def _load_assets() -> dict[str, tuple[bytes, str]]:
    """The page's files, shipped inside the package (no CDN): read once at import."""
    folder = resources.files("vapi_proxy.console") / "static"
    assets = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if suffix in _MEDIA:
            assets[entry.name] = (entry.read_bytes(), f"{_MEDIA[suffix]}; charset=utf-8")
    return assets


ASSETS = _load_assets()


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


def choice(*options: str) -> Parser:
    def parse(name: str, raw: str) -> str:
        if raw not in options:
            raise BadRequestError(f"Query parameter '{name}' must be one of: {', '.join(options)}.")
        return raw

    return parse


def to_csv(header: list[str], rows: list[dict[str, Any]]) -> str:
    """CSV (RFC 4180); a cell that a spreadsheet would run as a formula is quoted with a `'`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        cells = []
        for name in header:
            value = row.get(name)
            cell = "" if value is None else str(value)
            if cell[:1] in ("=", "+", "-", "@", "\t", "\r") and not _number(cell):
                cell = "'" + cell
            cells.append(cell)
        writer.writerow(cells)
    return out.getvalue()


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


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
            auth=runtime.auth,
        )
        self.max_bytes = runtime.settings.server.max_body_bytes
        self.max_depth = runtime.settings.server.max_json_depth

    async def body(self, request: Request) -> dict[str, Any]:
        value = await read_json(request, max_bytes=self.max_bytes, max_depth=self.max_depth)
        if not isinstance(value, dict):
            raise BadRequestError("The request body must be a JSON object.")
        return value

    def action(
        self,
        request: Request,
        admin: Admin,
        action: str,
        *,
        target: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AbstractAsyncContextManager[ActionSlot]:
        """The block that runs an audited action: its slot under the action limit is reserved
        (in the shared database) on entry, or the request is refused with a 429."""
        return self.gate.action(
            admin.actor,
            action,
            target=target,
            client=admin.client,
            request_id=request_state(request.scope).request_id,
            detail=detail,
        )

    # --- sessions --------------------------------------------------------------------------

    async def sign_in(self, request: Request) -> Response:
        client = self.gate.reachable(request)
        read_query(request, NO_QUERY)
        body = await self.body(request)
        key = text_field(body, "key", required=True, max_length=16384) or ""
        request_id = request_state(request.scope).request_id
        # 429 before the key is checked past the per-address limit; a wrong key is audited as
        # refused under "-" so that limit counts it, a right one signs in as the operator's
        # action below.
        actor = await self.gate.sign_in(key, request, client=client, request_id=request_id)
        ttl = self.runtime.settings.admin.session_ttl_seconds
        async with self.gate.action(actor, "sign-in", client=client, request_id=request_id):
            token, session = await self.store.open_session(actor, ttl_seconds=ttl, client=client)
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
        read_query(request, NO_QUERY)
        token = self.gate.cookie_token(request)
        async with self.action(request, admin, "sign-out"):
            if token is not None:
                await self.store.close_session(token)
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

    # --- usage -----------------------------------------------------------------------------

    def usage_filter(
        self, request: Request, extra: dict[str, Parser] | None = None
    ) -> tuple[UsageFilter, dict[str, Any]]:
        query = read_query(
            request,
            {
                "since": moment,
                "until": moment,
                "bucket": choice("hour", "day"),
                "profile": text(256),
                "tenant": text(256),
                "identity": text(512),
                **(extra or {}),
            },
        )
        until = query.get("until") or utc_now()
        since = query.get("since") or until - timedelta(days=7)
        if since >= until:
            raise BadRequestError("'since' must be before 'until'.")
        bucket: Bucket = query.get("bucket") or (
            "hour" if until - since <= timedelta(days=2) else "day"
        )
        if (until - since) / BUCKET_SIZES[bucket] > MAX_BUCKETS:
            raise BadRequestError(
                f"That range has more than {MAX_BUCKETS} {bucket}s; use a shorter range or "
                "bucket=day."
            )
        flt = UsageFilter(
            since=since,
            until=until,
            bucket=bucket,
            profile=query.get("profile"),
            tenant=query.get("tenant"),
            identity=query.get("identity"),
        )
        return flt, query

    async def usage(self, request: Request) -> Response:
        await self.gate.authenticate(request, write=False)
        flt, query = self.usage_filter(request, {"top": whole_number(1, 100)})
        db = self.runtime.ledger.database
        result = await overview(db, flt, top=query.get("top", 10))
        top = result["topUsers"]
        for user in top:
            identity = identity_from_ledger(user["identity"], user["tenant"])
            try:
                user["limits"] = await remaining(self.runtime.limiter, identity, flt.profile)
            except ProxyError as exc:
                user["limits"] = None
                user["limitsError"] = str(exc.message)
        return json_reply({"filter": flt.view(), **result})

    async def usage_csv(self, request: Request) -> Response:
        admin = await self.gate.authenticate(request, write=False)
        flt, query = self.usage_filter(request, {"table": choice("series", "profiles", "users")})
        table = query.get("table", "series")
        db = self.runtime.ledger.database
        # An export is audited, and counted, as an action (it can read the whole ledger).
        async with self.action(request, admin, "export", target=table, detail=flt.view()):
            if table == "series":
                rows = await usage_series(db, flt)
                header = ["t", "calls", "chats", "minutes", "costUsd"]
            elif table == "profiles":
                rows = await by_profile(db, flt)
                header = ["profile", "calls", "chats", "minutes", "costUsd"]
            else:
                rows = await top_identities(db, flt, limit=1000)
                header = ["identity", "tenant", "calls", "chats", "minutes", "costUsd"]
        name = f"vapi-usage-{table}-{flt.since:%Y%m%d}-{flt.until:%Y%m%d}.csv"
        return Response(
            to_csv(header, rows),
            media_type="text/csv; charset=utf-8",
            headers={**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'},
        )

    # --- webhooks --------------------------------------------------------------------------

    async def webhooks(self, request: Request) -> Response:
        await self.gate.authenticate(request, write=False)
        query = read_query(request, {"hours": whole_number(1, 24 * 31)})
        now = utc_now()
        hours = query.get("hours", 24)
        health = await webhook_health(
            self.runtime.ledger.database, since=now - timedelta(hours=hours), now=now
        )
        health["hours"] = hours
        # Verification counters of every worker and replica, from the ledger's 5-minute
        # buckets (written every few seconds) plus what this process has not written yet.
        totals = await self.runtime.webhook_tallies.totals(since=now - timedelta(hours=hours))
        health["verification"] = {
            "scope": f"all workers and replicas, last {hours} hours",
            **totals,
        }
        return json_reply(health)

    # --- blocks ----------------------------------------------------------------------------

    async def list_blocks(self, request: Request) -> Response:
        await self.gate.authenticate(request, write=False)
        read_query(request, NO_QUERY)
        now = utc_now()
        items = [
            {**block.view(), "active": block.active(now)} for block in await self.store.blocks()
        ]
        return json_reply({"items": items})

    async def block(self, request: Request) -> Response:
        admin = await self.gate.authenticate(request, write=True)
        read_query(request, NO_QUERY)
        body = await self.body(request)
        identity = text_field(body, "identity", required=True, max_length=512) or ""
        reason = text_field(body, "reason", required=True, max_length=500) or ""
        expires_text = body.get("expiresAt")
        if expires_text is not None and not isinstance(expires_text, str):
            raise BadRequestError("'expiresAt' must be an ISO timestamp or null.")
        expires_at = parse_time("expiresAt", expires_text)
        if expires_at is not None and expires_at <= utc_now():
            raise BadRequestError("'expiresAt' must be in the future.")
        end_calls = body.get("endCalls", False)
        if not isinstance(end_calls, bool):
            raise BadRequestError("'endCalls' must be true or false.")
        ended: list[str] = []
        failed: list[dict[str, str]] = []
        detail = {"reason": reason, "expiresAt": iso(expires_at)}
        async with self.action(request, admin, "block", target=identity, detail=detail) as slot:
            block = await self.store.block(
                identity, reason=reason, expires_at=expires_at, actor=admin.actor
            )
            self.runtime.blocks.invalidate()
            if end_calls:
                db = self.runtime.ledger.database
                for call in await live_calls(db, identity_key=identity):
                    try:
                        await end_call(db, self.runtime.upstream, call["id"])
                        ended.append(call["id"])
                    except ProxyError as exc:
                        failed.append({"id": call["id"], "error": str(exc.message)})
            slot.detail = {**detail, "endedCalls": ended, "failedCalls": failed}
        return json_reply(
            {"block": block.view(), "endedCalls": ended, "failedCalls": failed}, status=201
        )

    async def unblock(self, request: Request) -> Response:
        admin = await self.gate.authenticate(request, write=True)
        read_query(request, NO_QUERY)
        body = await self.body(request)
        identity = text_field(body, "identity", required=True, max_length=512) or ""
        async with self.action(request, admin, "unblock", target=identity) as slot:
            removed = await self.store.unblock(identity)
            self.runtime.blocks.invalidate()
            slot.outcome = "ok" if removed else "noop"
        if not removed:
            raise NotFoundError("That identity is not blocked.")
        return json_reply({"identity": identity, "unblocked": True})

    # --- live calls ------------------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        await self.gate.authenticate(request, write=False)
        query = read_query(request, {"identity": text(512), "profile": text(256)})
        items = await live_calls(
            self.runtime.ledger.database,
            identity_key=query.get("identity"),
            profile=query.get("profile"),
        )
        return json_reply({"items": items, "at": iso(utc_now())})

    async def end(self, request: Request) -> Response:
        admin = await self.gate.authenticate(request, write=True)
        read_query(request, NO_QUERY)
        call_id = request.path_params["id"]
        if len(call_id) > 128:
            raise NotFoundError("No such call in the ledger.")
        # A failure is audited as `failed`, with Vapi's or the ledger's error, by the block.
        async with self.action(request, admin, "end-call", target=call_id):
            result = await end_call(self.runtime.ledger.database, self.runtime.upstream, call_id)
        return json_reply(result, status=202)

    # --- the page --------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        """The console itself: static HTML with no data in it; sign-in happens on the page."""
        self.gate.reachable(request)
        read_query(request, NO_QUERY)
        body, media = ASSETS["console.html"]
        return Response(body, media_type=media, headers=SECURITY_HEADERS)

    async def asset(self, request: Request) -> Response:
        self.gate.reachable(request)
        read_query(request, NO_QUERY)
        found = ASSETS.get(request.path_params["name"])
        if found is None or request.path_params["name"] == "console.html":
            raise NotFoundError("No such console file.")
        body, media = found
        return Response(body, media_type=media, headers=SECURITY_HEADERS)

    def routes(self) -> list[Route]:
        table: list[tuple[str, Handler, str]] = [
            ("/admin", self.page, "GET"),
            ("/admin/static/{name}", self.asset, "GET"),
            ("/admin/usage", self.usage_report, "GET"),
            ("/admin/api/session", self.sign_in, "POST"),
            ("/admin/api/session", self.whoami, "GET"),
            ("/admin/api/session", self.sign_out, "DELETE"),
            ("/admin/api/audit", self.audit_log, "GET"),
            ("/admin/api/usage", self.usage, "GET"),
            ("/admin/api/usage.csv", self.usage_csv, "GET"),
            ("/admin/api/webhooks", self.webhooks, "GET"),
            ("/admin/api/blocks", self.list_blocks, "GET"),
            ("/admin/api/blocks", self.block, "POST"),
            ("/admin/api/unblock", self.unblock, "POST"),
            ("/admin/api/calls/live", self.live, "GET"),
            ("/admin/api/calls/{id}/end", self.end, "POST"),
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
        except (TimeoutError, sa.exc.SQLAlchemyError) as exc:
            # A console query over a huge range can outlast ledger.timeout_seconds: say so.
            logger.warning("admin query failed", exc_info=True)
            raise ServiceUnavailableError(
                "The ledger did not answer in time; try a shorter range or a filter.",
                headers={**SECURITY_HEADERS, "Retry-After": "5"},
            ) from exc

    wrapped.__name__ = handler.__name__
    return wrapped


def routes(runtime: Runtime) -> list[Route]:
    if not runtime.settings.admin.enabled:
        return []
    return AdminApi(runtime).routes()
