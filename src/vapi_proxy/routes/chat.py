"""Chat routes: `POST /chat`, `/chat/responses`, `/chat/web`, `/chat/web/responses`, JSON or SSE.

Authenticate → read the body → intake → ownership of a continued chat or session (ledger; an
unknown or foreign id is a 404 that reaches no upstream) → policy → admit (limits, kind `chat`)
→ Vapi → ledger (the chat id, and its session) → reply, cut down to an allowlist
(`policy/reply.ChatView`). Streamed replies are relayed event by event as they arrive
(`routes/relay.py`), each JSON event through the same allowlist; the chat id is picked out of
the events as they pass.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from vapi_proxy.admission import Admission, Created
from vapi_proxy.auth.identity import Identity
from vapi_proxy.edge.body import read_json
from vapi_proxy.edge.middleware import RequestState, request_state
from vapi_proxy.errors import NotFoundError, UpstreamError, envelope
from vapi_proxy.limits.base import AdmissionRequest
from vapi_proxy.policy.chat import ChatIntake, Continuation, PlannedChat, plan_chat, read_chat
from vapi_proxy.policy.compiled import CallContext
from vapi_proxy.policy.reply import ChatView
from vapi_proxy.routes.common import authenticate, json_response, note_upstream
from vapi_proxy.routes.query import NO_QUERY, read_query
from vapi_proxy.routes.relay import IdWatcher, SseFormat, SseRelay, run_until_client_leaves

if TYPE_CHECKING:
    from vapi_proxy.runtime import Runtime

logger = logging.getLogger("vapi_proxy.chat")

PARTIAL_PREFIX = "partial-"
"""Ledger id prefix of a streamed turn whose client left before Vapi sent the chat id."""


class Turn:
    """One chat turn on its admission (`vapi_proxy.admission`): counted and recorded once Vapi
    has produced any output for it, whether or not the stream finishes; given back only when
    Vapi provably did nothing."""

    def __init__(self, admission: Admission, state: RequestState) -> None:
        self.admission = admission
        self.state = state
        self.output_seen = False
        self.closed = False

    async def record(self, chat_id: str, session_id: str | None) -> None:
        """The turn's chat id is known: commit and record it (the slot is settled at close)."""
        await self.admission.created(Created(chat_id, "ended", session_id))

    async def close(self, session_id: str | None = None) -> None:
        """The turn is over (finished, failed, or its client left). A turn that produced output
        but whose chat id never arrived (the client left before `response.completed`) is
        recorded under a provisional id: it counts, with what is known."""
        if self.closed:
            return
        self.closed = True
        admission = self.admission
        if admission.created_id is None and self.output_seen:
            provisional = f"{PARTIAL_PREFIX}{uuid.uuid4().hex}"
            await admission.created(Created(provisional, "ended", session_id))
        await admission.settle()


def _json(payload: Any, status: int) -> Response:
    return json_response(orjson.dumps(payload), status)


class _ChatStream:
    """An ASGI response that opens Vapi's stream; refusals before the first byte are raised
    (the edge renders the one JSON envelope), everything after is relayed as SSE."""

    def __init__(
        self,
        runtime: Runtime,
        turn: Turn,
        path: str,
        body: bytes,
        fmt: SseFormat,
        view: ChatView,
    ) -> None:
        self.view = view
        self.runtime = runtime
        self.turn = turn
        self.path = path
        self.body = body
        self.fmt = fmt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A client that leaves, even before Vapi's first byte, cancels the work: the upstream
        # connection is closed at once and the turn settled.
        await run_until_client_leaves(self._serve(scope, receive, send), receive)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        turn = self.turn
        try:
            await turn.admission.send(lambda: self._relay(scope, receive, send))
        finally:
            await asyncio.shield(turn.close())
        if turn.admission.outcome is None:
            # Vapi accepted the turn (2xx) but sent nothing: it may have run; keep the
            # reservation until it expires.
            turn.admission.maybe_sent()

    async def _relay(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime, turn = self.runtime, self.turn
        state = turn.state
        idle = runtime.settings.vapi.stream_idle_timeout_seconds
        async with runtime.upstream.stream(
            "POST", self.path, self.body, idle_timeout=idle
        ) as upstream:
            note_upstream(state, upstream)
            if not (200 <= upstream.status < 300 and upstream.is_sse):
                reply = await upstream.read()
                chat = runtime.replies.read(reply, state)
                await record_reply(turn, chat)
                visible = self.view.reply(chat, responses=self.fmt == "responses")
                await _json(visible, reply.status)(scope, receive, send)
                return
            relay = SseRelay(
                upstream.chunks(),
                fmt=self.fmt,
                transform=EventFilter(self.view, self.fmt, state.request_id),
                max_event_bytes=runtime.settings.vapi.max_response_bytes,
                request_id=state.request_id,
                on_id=self._on_id,
                finish=self._finish,
                on_output=self._on_output,
            )
            await relay.run(send)

    def _on_output(self) -> None:
        # Vapi produced output for this turn: from here on it counts.
        self.turn.output_seen = True

    async def _on_id(self, watcher: IdWatcher) -> None:
        if watcher.chat_id is not None:
            await self.turn.record(watcher.chat_id, watcher.session_id)

    async def _finish(self, watcher: IdWatcher, completed: bool) -> None:
        await asyncio.shield(self.turn.close(watcher.session_id))


_STREAM_FAILED = "Vapi could not finish the reply. Try again later."


class EventFilter:
    """Each JSON event through the profile's allowlist. An error Vapi reports mid-stream may
    name the operator's model, provider or custom LLM URL: the client gets a plain error event
    in its own format, the operator the original in the log."""

    def __init__(self, view: ChatView, fmt: SseFormat, request_id: str) -> None:
        self.view = view
        self.responses = fmt == "responses"
        self.request_id = request_id

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        responses = self.responses
        failed = payload.get("type") == "error" if responses else payload.get("error") is not None
        if failed:
            logger.warning(
                "Vapi reported an error mid-stream",
                extra={
                    "fields": {"request_id": self.request_id, "vapi_event": str(payload)[:1000]}
                },
            )
            if not responses:
                return {"error": envelope(502, _STREAM_FAILED, self.request_id)}
            sequence = payload.get("sequence_number")
            return {
                "type": "error",
                "code": "upstream_error",
                "message": _STREAM_FAILED,
                "param": None,
                "sequence_number": sequence if isinstance(sequence, int) else 0,
            }
        return self.view.event(payload, responses=responses)


async def record_reply(turn: Turn, chat: dict[str, Any]) -> None:
    """Record a turn from Vapi's 2xx reply. One without a chat id still counts and is
    recorded (under a provisional id), then answered as maybe-sent."""
    chat_id = chat.get("id")
    if not isinstance(chat_id, str) or not chat_id:
        await turn.record(f"{PARTIAL_PREFIX}{uuid.uuid4().hex}", None)
        raise UpstreamError("Vapi's reply had no chat id.", maybe_sent=True)
    session = chat.get("sessionId")
    await turn.record(chat_id, session if isinstance(session, str) else None)


class ChatRoutes:
    """The chat routes over one `Runtime`: four paths, one handler (`serve`)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self._ignored = frozenset(settings.intake.ignored_fields)
        self._max_bytes = settings.server.max_body_bytes
        self._max_depth = settings.server.max_json_depth
        # What clients see of each profile's replies and events: an allowlist plus its `expose`.
        self._views = {name: ChatView(name, p.expose) for name, p in settings.profiles.items()}

    def routes(self) -> list[Route]:
        return [
            Route(e.path, e.handle, methods=["POST"])
            for e in (
                ChatEndpoint(self, "/chat", web=False, responses=False),
                ChatEndpoint(self, "/chat/responses", web=False, responses=True),
                ChatEndpoint(self, "/chat/web", web=True, responses=False),
                ChatEndpoint(self, "/chat/web/responses", web=True, responses=True),
            )
        ]

    async def _continuation(self, identity: Identity, intake: ChatIntake) -> Continuation | None:
        """The continued chat or session, if this identity started it; 404 otherwise (the
        same answer as for an id that never existed, and no request reaches Vapi)."""
        ledger = self.runtime.ledger
        if intake.previous_chat_id is not None:
            record = await ledger.get_call(intake.previous_chat_id)
            if record is None or record.kind != "chat" or record.identity_key != identity.key:
                raise NotFoundError("Chat not found.")
            return Continuation(record.profile)
        if intake.session_id is not None:
            record = await ledger.session_owner(intake.session_id)
            if record is None or record.identity_key != identity.key:
                raise NotFoundError("Session not found.")
            return Continuation(record.profile)
        return None

    async def serve(
        self, request: Request, path: str, *, web: bool, responses: bool
    ) -> Response | _ChatStream:
        runtime = self.runtime
        read_query(request, NO_QUERY)
        state = request_state(request.scope)
        identity = await authenticate(runtime, request)
        state.identity = identity.hashed
        body = await read_json(request, max_bytes=self._max_bytes, max_depth=self._max_depth)
        with runtime.span("policy"):
            intake = read_chat(body, self._ignored, web=web, responses=responses)
            if intake.profile is not None and intake.profile in runtime.profiles:
                state.profile = intake.profile
            found = await self._continuation(identity, intake)
            planned: PlannedChat = plan_chat(
                runtime.profiles,
                intake,
                CallContext(identity, state.request_id, runtime.webhook_server),
                found,
            )
        name = planned.profile.name
        state.profile = name
        admission = await runtime.admissions.admit(
            AdmissionRequest(identity=identity, profile=name, kind="chat"),
            record_kind="chat",
            request_id=state.request_id,
        )
        turn = Turn(admission, state)
        payload = orjson.dumps(planned.body)
        fmt: SseFormat = "responses" if responses else "chat"
        if planned.stream:
            return _ChatStream(runtime, turn, path, payload, fmt, self._views[name])

        async def create() -> tuple[int, dict[str, Any]]:
            reply = await runtime.upstream.request("POST", path, payload)
            note_upstream(state, reply)
            chat_reply = runtime.replies.read(reply, state)
            await record_reply(turn, chat_reply)
            return reply.status, chat_reply

        try:
            status, chat_reply = await admission.send(create)
        finally:
            await asyncio.shield(turn.close())
        return _json(self._views[name].reply(chat_reply, responses=responses), status)


@dataclass(frozen=True, slots=True)
class ChatEndpoint:
    """One chat path: which body it reads (web, responses) and where it goes at Vapi."""

    chat: ChatRoutes
    path: str
    web: bool
    responses: bool

    async def handle(self, request: Request) -> Response | _ChatStream:
        return await self.chat.serve(request, self.path, web=self.web, responses=self.responses)


def routes(runtime: Runtime) -> list[Route]:
    return ChatRoutes(runtime).routes()
