"""Saved squads and workflows, read back: `GET /squad`, `GET /squad/{id}`, `GET /workflow/{id}`.

`GET /squad/{id}` is in Vapi's public spec (`SquadController_findOne` → `Squad`); the public spec
has the `Workflow` schema but not its path, which is assumed to mirror the assistant's and the
squad's (Vapi facts §1: the client-facing endpoints live in the extended spec). An unknown id is
404 `{"message": "Squad not found", …}` like an unknown assistant (Vapi facts §8: assumed shape).
"""

from __future__ import annotations

from .auth import require_private
from .errors import not_found
from .handlers import Context, Reply, query_limit


async def get_squad(ctx: Context) -> Reply:
    if ctx.caller is not None:
        require_private(ctx.caller)
    found = ctx.state.squads.get(ctx.params["id"])
    if found is None:
        raise not_found("Squad")
    return 200, found


async def list_squads(ctx: Context) -> Reply:
    """A plain array, newest first, `limit` 0-1000 default 100, like `GET /assistant`."""
    if ctx.caller is not None:
        require_private(ctx.caller)
    limit = query_limit(ctx)
    return 200, list(reversed(ctx.state.squads.values()))[:limit]


async def get_workflow(ctx: Context) -> Reply:
    if ctx.caller is not None:
        require_private(ctx.caller)
    found = ctx.state.workflows.get(ctx.params["id"])
    if found is None:
        raise not_found("Workflow")
    return 200, found
