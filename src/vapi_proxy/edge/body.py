"""Read a request body as JSON within the edge's limits: type or coding 415, size 413,
syntax/depth 400."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request

from vapi_proxy.edge.middleware import plain_headers
from vapi_proxy.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _depth_ok(value: Any, max_depth: int) -> bool:
    # Iterative so that hostile nesting cannot exhaust the interpreter's stack.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > max_depth:
                return False
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            if depth > max_depth:
                return False
            stack.extend((child, depth + 1) for child in node)
    return True


def _refuse_coded(coding: str | None) -> None:
    """A compressed body (`Content-Encoding: gzip`, …) would be read as its coded bytes, and
    refused as "not valid JSON", or as a bad signature on a webhook: say what is wrong instead.
    RFC 9110 §8.4.1 allows the 415, and §12.5.3 the `Accept-Encoding` that names what is
    accepted."""
    if coding is None:
        return
    codings = [c for c in (part.strip().lower() for part in coding.split(",")) if c != "identity"]
    named = ", ".join(c for c in codings if c)[:40]
    if not named:
        return
    raise UnsupportedMediaTypeError(
        f"The request body must not be compressed (Content-Encoding: {named}); send it as is.",
        headers={"Accept-Encoding": "identity"},
    )


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, at most `max_bytes`. A client that leaves before sending all of it raises
    Starlette's `ClientDisconnect`, which the edge logs as a 499 (nobody is left to answer).
    Routes read the body before admission, so such a request has reserved nothing."""
    headers = plain_headers(request.scope)
    _refuse_coded(headers.get("content-encoding"))
    declared = headers.get("content-length")
    if declared is not None:
        # RFC 9110 §8.6: 1*DIGIT. int() also read "+12", " 12", "1_2" and other scripts' digits,
        # and raised past 4,300 digits; uvicorn refuses those itself, other ASGI servers may not.
        if not (declared.isascii() and declared.isdigit()):
            raise BadRequestError("Content-Length is not a number.")
        if len(declared) > 18 or int(declared) > max_bytes:
            raise PayloadTooLargeError(f"The request body is larger than {max_bytes} bytes.")
    # ASGI's receive() directly (what `Request.stream()` does, without an async generator).
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk: bytes = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLargeError(
                        f"The request body is larger than {max_bytes} bytes."
                    )
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif kind == "http.disconnect":
            raise ClientDisconnect()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_json(request: Request, *, max_bytes: int, max_depth: int) -> Any:
    """The parsed JSON body, or a refusal that says what is wrong with it."""
    if not _is_json(plain_headers(request.scope).get("content-type", "")):
        raise UnsupportedMediaTypeError(
            "The request body must be JSON (Content-Type: application/json)."
        )
    raw = await read_body(request, max_bytes)
    if not raw.strip():
        raise BadRequestError("The request body is empty; send a JSON object.")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequestError("The request body is not valid JSON.") from None
    if not _depth_ok(value, max_depth):
        raise BadRequestError(f"The request body is nested deeper than {max_depth} levels.")
    return value
