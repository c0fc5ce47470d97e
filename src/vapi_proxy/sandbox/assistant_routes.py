"""Assistant endpoints: `POST /assistant` (201), `GET /assistant`, `GET /assistant/{id}`."""

from __future__ import annotations

from .auth import require_private
from .errors import not_found
from .handlers import Context, Reply, query_limit, validate


async def create_assistant(ctx: Context) -> Reply:
    if ctx.caller is not None:
        require_private(ctx.caller)
    body = validate(ctx, "CreateAssistantDTO")
    return 201, ctx.state.add_assistant(body)


async def get_assistant(ctx: Context) -> Reply:
    if ctx.caller is not None:
        require_private(ctx.caller)
    found = ctx.state.assistants.get(ctx.params["id"])
    if found is None:
        raise not_found("Assistant")
    return 200, found


async def list_assistants(ctx: Context) -> Reply:
    """A plain array, newest first, `limit` 0-1000 default 100 (Vapi facts §2.8)."""
    if ctx.caller is not None:
        require_private(ctx.caller)
    limit = query_limit(ctx)
    return 200, list(reversed(ctx.state.assistants.values()))[:limit]
