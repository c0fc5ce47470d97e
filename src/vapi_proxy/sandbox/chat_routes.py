"""Chat endpoints: `/chat`, `/chat/responses` and their public `/chat/web*` twins, JSON or SSE.

Replies are deterministic (`chat.reply_prefix` + the last user input). Stream formats follow
Vapi facts §2.7: `/chat` sends `data: {id, path, delta}` lines ending in `data: [DONE]`;
`/chat/responses` sends OpenAI Responses events (`event: <type>` + `data: {...}`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from .asgi import drop_connection, start_sse
from .auth import check_restrictions, require_private
from .calls import iso
from .errors import VapiError, not_found
from .handlers import Context, Reply, query_limit, validate
from .state import SandboxState

# Not recorded anywhere (Vapi facts §2.7 only lists the requirement); the simulator's wording.
NO_TARGET = (
    "Need Either `assistantId`, `assistant`, `squadId`, `squad`, `sessionId`, Or `previousChatId`."
)


def _input_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for item in reversed(value):
            if isinstance(item, dict) and item.get("role", "user") == "user":
                text = item.get("content", item.get("message", ""))
                return text if isinstance(text, str) else orjson.dumps(text).decode()
    return ""


def _input_messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return [m for m in value if isinstance(m, dict)]
    return []


def _create_chat(ctx: Context, body: dict[str, Any], *, web: bool) -> dict[str, Any]:
    """Check the target, continue the history, store the chat and return it."""
    state: SandboxState = ctx.state
    if body.get("sessionId") is not None and body.get("previousChatId") is not None:
        raise VapiError(400, "Only one of `sessionId` or `previousChatId` can be provided.")
    if body.get("sessionId") is not None and body.get("transport") is not None:
        raise VapiError(400, "Only one of `sessionId` or `transport` can be provided.")
    targets = ("assistant", "assistantId", "squad", "squadId", "sessionId", "previousChatId")
    if not any(body.get(k) is not None for k in targets):
        raise VapiError(400, NO_TARGET)
    assistant_id = body.get("assistantId")
    if assistant_id is not None and state.find_assistant(str(assistant_id)) is None:
        raise VapiError(400, f"Couldn't Get Assistant. `assistantId` {assistant_id} Not Found.")
    history: list[dict[str, Any]] = []
    previous_id = body.get("previousChatId")
    session_id = body.get("sessionId")
    if previous_id is None and session_id is not None:
        previous_id = state.sessions.get(str(session_id))
        if previous_id is None and not web:
            raise VapiError(400, f"Couldn't Get Session. `sessionId` {session_id} Not Found.")
    previous = state.chats.get(str(previous_id)) if previous_id is not None else None
    if body.get("previousChatId") is not None and previous is None:
        raise VapiError(400, f"Couldn't Get Chat. `previousChatId` {previous_id} Not Found.")
    if previous is not None:
        history = [*previous["messages"], *previous["output"]]
        assistant_id = assistant_id or previous.get("assistantId")
    if web and session_id is None:
        session_id = str(uuid.uuid4())  # web chats always live in a session
    text = state.settings.chat.reply_prefix + _input_text(body.get("input"))
    now = iso(state.clock.now())
    chat: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "orgId": state.settings.org_id,
        "createdAt": now,
        "updatedAt": now,
        "input": body.get("input"),
        "messages": [*history, *_input_messages(body.get("input"))],
        "output": [{"role": "assistant", "content": text}],
        "costs": [],
        "cost": 0,
    }
    for key in ("assistant", "assistantOverrides", "squadId", "squad", "name", "previousChatId"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if assistant_id is not None:
        chat["assistantId"] = assistant_id
    if session_id is not None:
        chat["sessionId"] = str(session_id)
    state.add_chat(chat)
    return chat


def _chunks(ctx: Context, text: str) -> list[str]:
    size = ctx.state.settings.chat.chunk_chars
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


async def _stream(ctx: Context, events: AsyncIterator[bytes]) -> None:
    """Send SSE events, spaced by `chat.stream_delay_seconds`, honouring stream faults."""
    await start_sse(ctx.send)
    delay = ctx.state.settings.chat.stream_delay_seconds
    fault = ctx.fault
    sent = 0
    async for event in events:
        if fault is not None and sent == fault.after_events:
            if fault.action == "truncate-stream" and await drop_connection(ctx.request.receive):
                return
            if fault.action == "stall-stream":
                await _stall(ctx, fault.stall_seconds)
                return
        if sent and delay:
            clock = ctx.state.clock
            await clock.sleep_until(clock.now() + delay)
        await ctx.send({"type": "http.response.body", "body": event, "more_body": True})
        sent += 1
    await ctx.send({"type": "http.response.body", "body": b""})


async def _stall(ctx: Context, seconds: float) -> None:
    """Hang until `seconds` pass or the client goes away; then close without finishing."""

    async def disconnected() -> None:
        while (await ctx.request.receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnected(), timeout=seconds)
    except TimeoutError:
        await drop_connection(ctx.request.receive)


def _data(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _chat_events(ctx: Context, chat: dict[str, Any]) -> AsyncIterator[bytes]:
    for delta in _chunks(ctx, chat["output"][0]["content"]):
        event: dict[str, Any] = {"id": chat["id"], "path": "chat.output[0].content", "delta": delta}
        if "sessionId" in chat:
            event["sessionId"] = chat["sessionId"]
        yield _data(event)
    yield b"data: [DONE]\n\n"


def _item_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def _response_object(chat: dict[str, Any], created: int, item: str) -> dict[str, Any]:
    text = chat["output"][0]["content"]
    return {
        "id": chat["id"],
        "object": "response",
        "created_at": created,
        "status": "completed",
        "error": None,
        "output": [
            {
                "id": item,
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
    }


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\n".encode() + _data({"type": kind, **payload})


async def _response_events(ctx: Context, chat: dict[str, Any]) -> AsyncIterator[bytes]:
    """Spec `ResponseTextDeltaEvent`s, one `ResponseTextDoneEvent`, then
    `ResponseCompletedEvent`: nothing before the first delta (no `response.created`), and the
    chat id only in the last event's `response.id`. The item id is the output message's own id,
    not the chat's, so a client cannot learn the chat id before the stream completes."""
    item = _item_id()
    for delta in _chunks(ctx, chat["output"][0]["content"]):
        yield _event(
            "response.output_text.delta",
            {"item_id": item, "output_index": 0, "content_index": 0, "delta": delta},
        )
    text = chat["output"][0]["content"]
    yield _event(
        "response.output_text.done",
        {"item_id": item, "output_index": 0, "content_index": 0, "text": text},
    )
    created = int(ctx.state.clock.now())
    yield _event("response.completed", {"response": _response_object(chat, created, item)})


def _gate(ctx: Context, body: dict[str, Any], *, web: bool) -> None:
    if ctx.caller is None:
        return
    if web:
        check_restrictions(ctx.caller, ctx.request.header(b"origin"), body)
    else:
        require_private(ctx.caller)


async def create_chat(ctx: Context) -> Reply:
    """`POST /chat` (stream default false)."""
    body = validate(ctx, "CreateChatDTO")
    _gate(ctx, body, web=False)
    chat = _create_chat(ctx, body, web=False)
    if body.get("stream") is True:
        await _stream(ctx, _chat_events(ctx, chat))
        return None
    return 201, chat


async def create_web_chat(ctx: Context) -> Reply:
    """`POST /chat/web` (public key allowed; stream default false)."""
    body = validate(ctx, "CreateWebChatDTO")
    _gate(ctx, body, web=True)
    chat = _create_chat(ctx, body, web=True)
    if body.get("stream") is True:
        await _stream(ctx, _chat_events(ctx, chat))
        return None
    return 201, {"id": chat["id"], "sessionId": chat["sessionId"], "output": chat["output"]}


async def create_response(ctx: Context) -> Reply:
    """`POST /chat/responses` (stream default **true**)."""
    body = validate(ctx, "OpenAIResponsesRequest")
    _gate(ctx, body, web=False)
    return await _respond(ctx, body, web=False)


async def create_web_response(ctx: Context) -> Reply:
    """`POST /chat/web/responses` (public key allowed; stream default true)."""
    body = validate(ctx, "OpenAIWebChatRequest")
    _gate(ctx, body, web=True)
    return await _respond(ctx, body, web=True)


async def _respond(ctx: Context, body: dict[str, Any], *, web: bool) -> Reply:
    chat = _create_chat(ctx, body, web=web)
    if body.get("stream", True) is not False:
        await _stream(ctx, _response_events(ctx, chat))
        return None
    return 201, _response_object(chat, int(ctx.state.clock.now()), _item_id())


async def get_chat(ctx: Context) -> Reply:
    if ctx.caller is not None:
        require_private(ctx.caller)
    chat = ctx.state.chats.get(ctx.params["id"])
    if chat is None:
        raise not_found("Chat")
    return 200, chat


async def list_chats(ctx: Context) -> Reply:
    """`GET /chat`: paginated (Vapi facts §2.7), newest first by default."""
    if ctx.caller is not None:
        require_private(ctx.caller)
    limit = query_limit(ctx)
    query = ctx.request.query
    raw_page = query.get("page", "1")
    # NestJS's class-validator refuses what is not a whole number >= 1 (`²`, `1e3`, 5,000 digits).
    if not raw_page.isascii() or not raw_page.isdigit() or len(raw_page) > 9 or int(raw_page) < 1:
        raise VapiError(400, ["page must not be less than 1", "page must be a number"])
    page = int(raw_page)
    chats = [
        c
        for c in ctx.state.chats.values()
        if all(c.get(k) == query[k] for k in ("id", "assistantId", "sessionId") if k in query)
    ]
    if query.get("sortOrder", "DESC").upper() != "ASC":
        chats.reverse()
    start = (page - 1) * limit
    results = chats[start : start + limit]
    total_pages = (len(chats) + limit - 1) // limit if limit else 0
    return 200, {
        "results": results,
        "metadata": {
            "itemsPerPage": limit,
            "totalItems": len(chats),
            "currentPage": page,
            "totalPages": total_pages,
            "hasNextPage": page < total_pages,
            "sortOrder": query.get("sortOrder", "DESC").upper(),
        },
    }
