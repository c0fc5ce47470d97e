"""What every endpoint handler receives, and the checks several of them share.

A handler takes a `Context` and returns `(status, payload)` for a JSON reply, or `None` when it
has streamed its own reply (SSE).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .asgi import Request, Send
from .auth import Caller
from .errors import VapiError
from .settings import FaultSpec
from .state import SandboxState

Reply = tuple[int, Any] | None


@dataclass(slots=True)
class Context:
    state: SandboxState
    request: Request
    body: Any
    caller: Caller | None
    send: Send
    params: dict[str, str] = field(default_factory=dict)
    fault: FaultSpec | None = None

    @property
    def json(self) -> dict[str, Any]:
        """The body as an object (validation has already refused anything else)."""
        return self.body if isinstance(self.body, dict) else {}


Handler = Callable[[Context], Awaitable[Reply]]


def validate(ctx: Context, dto: str) -> dict[str, Any]:
    """Whitelist-validate the body against Vapi DTO `dto`; 400 with every message if not."""
    errors = ctx.state.validator.check(dto, ctx.body)
    if errors:
        raise VapiError(400, errors)
    return ctx.json


def query_limit(ctx: Context) -> int:
    """`limit` query parameter: 0-1000, default 100 (Vapi facts §2.4)."""
    raw = ctx.request.query.get("limit")
    if raw is None:
        return 100
    try:
        limit = int(float(raw))
    except (ValueError, OverflowError):  # `abc`, `nan`; `inf`, `1e400`
        raise VapiError(
            400, ["limit must be a number conforming to the specified constraints"]
        ) from None
    if limit < 0:
        raise VapiError(400, ["limit must not be less than 0"])
    if limit > 1000:
        raise VapiError(400, ["limit must not be greater than 1000"])
    return limit
