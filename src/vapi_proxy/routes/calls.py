"""Call routes: `POST /call/web` (the Web SDK), `POST /call` (server SDKs' phone calls) and the
caller's own call reads, `GET /call/{id}` and `GET /call`.

Authenticate → read the JSON body → intake → policy → admit (limits) → Vapi → ledger → scrub.
Each step raises the refusal the client should see; the edge renders it in the one envelope.
An `Idempotency-Key` header makes a retried creation replay the first result instead of
starting a second call. Reads answer only calls the ledger says this identity created.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vapi_proxy.admission import Attempt, Created
from vapi_proxy.auth.identity import Identity
from vapi_proxy.console.calls import control_url
from vapi_proxy.edge.body import read_json
from vapi_proxy.edge.middleware import RequestState, plain_headers, request_state
from vapi_proxy.errors import (
    BadRequestError,
    MethodNotAllowedError,
    NotFoundError,
    ProxyError,
    UnauthorizedError,
    UpstreamError,
)
from vapi_proxy.ledger.records import CallRecord
from vapi_proxy.limits.base import AdmissionRequest
from vapi_proxy.policy.compiled import CallContext, PlannedCall
from vapi_proxy.policy.intake import read_web_call
from vapi_proxy.policy.phonecall import plan_phone_call, read_phone_call
from vapi_proxy.policy.reply import SDK_PATHS, scrub
from vapi_proxy.policy.webcall import plan_web_call
from vapi_proxy.routes.common import authenticate, json_response, note_upstream
from vapi_proxy.routes.query import NO_QUERY, read_query, whole_number
from vapi_proxy.upstream.client import call_path

if TYPE_CHECKING:
    from vapi_proxy.runtime import Runtime

logger = logging.getLogger("vapi_proxy.calls")

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# What a server-side caller sees of its calls beyond the Web SDK's fields (plus `expose`): the
# state of the call and whom it rang, never the monitor URLs, prompt or org.
_SERVER_FIELDS = (
    "updatedAt",
    "startedAt",
    "endedAt",
    "endedReason",
    "cost",
    "phoneNumberId",
    "customer.number",
    "customer.name",
)
_SERVER_PATHS = tuple(tuple(path.split(".")) for path in _SERVER_FIELDS)
_CALL_TYPES = {"web": "webCall", "phone": "outboundPhoneCall"}
_CALL_KINDS = tuple(_CALL_TYPES)

CreateCall = Callable[[RequestState, Identity, Any, Attempt], Awaitable[tuple[int, bytes]]]
"""Starts the call(s) a creation request asks for (its state, caller, JSON body, idempotency
attempt); returns the status and the encoded reply."""


async def start_call(
    runtime: Runtime,
    state: RequestState,
    identity: Identity,
    planned: PlannedCall,
    path: str,
    *,
    kind: str,
    attempt: Attempt | None = None,
) -> tuple[int, dict[str, Any]]:
    """Admit, create the call at Vapi, record it; returns Vapi's status and Call object.

    The admission unit (`vapi_proxy.admission`) gives the reservation back only if Vapi
    provably did not create the call; when the outcome is unknown (a timeout after sending, a
    cancelled task) it is kept, so a call that does exist stays counted until its slot expires
    or its webhooks settle it.
    """
    compiled = planned.profile
    admission = await runtime.admissions.admit(
        AdmissionRequest(
            identity=identity,
            profile=compiled.name,
            kind="call",
            worst_case_seconds=float(compiled.max_duration_seconds),
        ),
        record_kind=kind,
        request_id=state.request_id,
        attempt=attempt,
    )

    async def create() -> tuple[int, dict[str, Any]]:
        reply = await runtime.upstream.request("POST", path, orjson.dumps(planned.body))
        note_upstream(state, reply)
        call = runtime.replies.read(reply, state)
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise UpstreamError("Vapi's reply had no call id.", maybe_sent=True)
        return reply.status, call

    status, call = await admission.send(create)
    await admission.created(
        Created(call["id"], str(call.get("status") or "queued"), control_url=control_url(call))
    )
    return status, call


def _request_hash(body: Any) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    text: str = moment.isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def call_view(record: CallRecord) -> dict[str, Any]:
    """A Call-like object from the ledger (for `GET /call`): what the proxy knows itself."""
    view: dict[str, Any] = {
        "id": record.id,
        "type": _CALL_TYPES.get(record.kind, record.kind),
        "assistantId": record.profile,
        "status": record.status,
        "createdAt": _iso(record.created_at),
        "updatedAt": _iso(record.updated_at),
    }
    optional = {
        "startedAt": _iso(record.started_at),
        "endedAt": _iso(record.ended_at),
        "endedReason": record.ended_reason,
        "cost": record.cost_usd,
    }
    view.update({k: v for k, v in optional.items() if v is not None})
    return view


_LIST_QUERY = {"limit": whole_number(0, 1000)}  # Vapi's range and default (Vapi facts §2.4)


class CallRoutes:
    """The call routes over one `Runtime`; each handler is a method."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self._ignored = frozenset(settings.intake.ignored_fields)
        self._max_bytes = settings.server.max_body_bytes
        self._max_depth = settings.server.max_json_depth
        self._ttl = settings.idempotency.ttl_seconds

    def routes(self) -> list[Route]:
        return [
            Route("/call/web", self.web_call, methods=["POST"]),
            Route("/call", self.phone_call, methods=["POST"]),
            Route("/call", self.list_calls, methods=["GET"]),
            Route("/call/{id}", self.get_call, methods=["GET"]),
        ]

    def _server_paths(self, profile: str) -> tuple[tuple[str, ...], ...]:
        # A call whose profile left the config since is shown with the SDK's fields only.
        compiled = self.runtime.profiles.get(profile)
        return (compiled.reply_paths if compiled is not None else SDK_PATHS) + _SERVER_PATHS

    def _context(self, identity: Identity, state: RequestState) -> CallContext:
        return CallContext(identity, state.request_id, self.runtime.webhook_server)

    async def _create_web_call(
        self, state: RequestState, identity: Identity, body: Any, attempt: Attempt
    ) -> tuple[int, bytes]:
        runtime = self.runtime
        with runtime.span("policy"):
            intake = read_web_call(body, self._ignored)
            state.profile = intake.profile if intake.profile in runtime.profiles else None
            planned = plan_web_call(runtime.profiles, intake, self._context(identity, state))
        status, call = await start_call(
            runtime, state, identity, planned, "/call/web", kind="web", attempt=attempt
        )
        return status, orjson.dumps(scrub(call, planned.profile.reply_paths))

    async def _create_phone_call(
        self, state: RequestState, identity: Identity, body: Any, attempt: Attempt
    ) -> tuple[int, bytes]:
        runtime = self.runtime
        with runtime.span("policy"):
            intake = read_phone_call(body, self._ignored)
            state.profile = intake.profile if intake.profile in runtime.profiles else None
            plans = plan_phone_call(runtime.profiles, intake, self._context(identity, state))
        paths = self._server_paths(plans[0].profile.name)
        if not intake.batch:
            status, call = await start_call(
                runtime, state, identity, plans[0], "/call", kind="phone", attempt=attempt
            )
            return status, orjson.dumps(scrub(call, paths))
        # A batch is one Vapi call per callee, so each is admitted by the limits on its own and
        # one refusal does not sink the others (Vapi's CallBatchResponse shape).
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        first_error: ProxyError | None = None
        for planned in plans:
            try:
                _, call = await start_call(
                    runtime, state, identity, planned, "/call", kind="phone", attempt=attempt
                )
            except ProxyError as exc:
                # A maybe-sent failure is the one to report: it is what a retry must not redo.
                if first_error is None or (
                    isinstance(exc, UpstreamError)
                    and exc.maybe_sent
                    and not (isinstance(first_error, UpstreamError) and first_error.maybe_sent)
                ):
                    first_error = exc
                errors.append({"customer": planned.body["customer"], "error": exc.message})
                continue
            results.append(scrub(call, paths))
        if not results and first_error is not None:
            raise first_error
        return 201, orjson.dumps({"results": results, "errors": errors})

    async def _idempotent(self, request: Request, create: CreateCall) -> Response:
        read_query(request, NO_QUERY)
        state = request_state(request.scope)
        identity = await authenticate(self.runtime, request)
        state.identity = identity.hashed
        body = await read_json(request, max_bytes=self._max_bytes, max_depth=self._max_depth)
        key = plain_headers(request.scope).get("idempotency-key")
        if key is None:
            status, payload = await create(state, identity, body, Attempt())
            return json_response(payload, status)
        if not _IDEMPOTENCY_KEY.fullmatch(key):
            raise BadRequestError("Idempotency-Key must be 1-255 visible ASCII characters.")

        async def run(attempt: Attempt) -> tuple[int, bytes]:
            return await create(state, identity, body, attempt)

        status, payload, replayed = await self.runtime.admissions.idempotent(
            key,
            identity.key,
            request_hash=_request_hash(body),
            ttl_seconds=self._ttl,
            request_id=state.request_id,
            create=run,
        )
        replay_header = {"Idempotent-Replayed": "true"} if replayed else None
        return json_response(payload, status, replay_header)

    async def web_call(self, request: Request) -> Response:
        return await self._idempotent(request, self._create_web_call)

    async def phone_call(self, request: Request) -> Response:
        return await self._idempotent(request, self._create_phone_call)

    async def _reader(self, request: Request) -> Identity:
        state = request_state(request.scope)
        identity = await authenticate(self.runtime, request)
        state.identity = identity.hashed
        if identity.method == "anonymous":
            # An address is not an owner: whoever shares it could read the calls.
            raise UnauthorizedError("Sign in to read calls.", error="invalid_request")
        return identity

    async def get_call(self, request: Request) -> Response:
        runtime = self.runtime
        call_id = request.path_params["id"]
        if call_id == "web":  # `/call/web` is only ever created, never read
            raise MethodNotAllowedError(["POST"])
        read_query(request, NO_QUERY)
        state = request_state(request.scope)
        identity = await self._reader(request)
        # `.` and `..` would be a path's own steps at Vapi, not a call (no call has them as id).
        plausible = len(call_id) <= 128 and call_id not in (".", "..")
        record = await runtime.ledger.get_call(call_id) if plausible else None
        # Someone else's call and no call at all look the same, and neither reaches Vapi.
        if record is None or record.identity_key != identity.key or record.kind == "chat":
            raise NotFoundError("Call not found.")
        state.profile = record.profile
        reply = await runtime.upstream.request("GET", call_path(call_id))
        note_upstream(state, reply)
        call = runtime.replies.read(reply, state)
        return json_response(orjson.dumps(scrub(call, self._server_paths(record.profile))))

    async def list_calls(self, request: Request) -> Response:
        identity = await self._reader(request)
        limit: int = read_query(request, _LIST_QUERY).get("limit", 100)
        records = []
        if limit:
            records = await self.runtime.ledger.list_calls(
                identity.key, limit=limit, kinds=_CALL_KINDS
            )
        return json_response(orjson.dumps([call_view(r) for r in records]))


def routes(runtime: Runtime) -> list[Route]:
    return CallRoutes(runtime).routes()
