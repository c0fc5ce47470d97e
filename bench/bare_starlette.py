"""Baseline: a bare pass-through on the proxy's own stack (Starlette + uvicorn + aiohttp) doing
what the guide's Worker does (bench/worker/worker.js) and nothing more: read the JSON, map it to
an assistant config, POST it with the key, return the body with CORS. No auth, no limits, no
ledger. `python -m bench.bare_starlette PORT` (key and upstream from the environment)."""

from __future__ import annotations

import json
import os
import sys

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization",
}
UPSTREAM = os.environ["VAPI_BASE_URL"]
AUTH = {"Authorization": "Bearer " + os.environ["VAPI_API_KEY"]}
ASSISTANT_ID = os.environ["BENCH_ASSISTANT_ID"]
session: aiohttp.ClientSession | None = None


def assistant_config(body: dict) -> dict:  # type: ignore[type-arg]
    ctx = body["assistant"] if isinstance(body.get("assistant"), dict) else body
    variables = {"userId": ctx.get("userId"), "assistantType": ctx.get("assistantType", "default")}
    return {"assistantId": ASSISTANT_ID, "assistantOverrides": {"variableValues": variables}}


async def call(request: Request) -> Response:
    if request.method == "OPTIONS":
        return Response(status_code=204, headers=CORS)
    global session
    if session is None:
        session = aiohttp.ClientSession()
    try:
        body = await request.json()
        url = UPSTREAM + request.url.path
        async with session.post(url, json=assistant_config(body), headers=AUTH) as upstream:
            data = await upstream.read()
            return Response(data, upstream.status, CORS, "application/json")
    except Exception as exc:
        details = json.dumps({"error": "Proxy error", "details": str(exc)})
        return Response(details, 500, CORS, "application/json")


app = Starlette(routes=[Route("/call/web", call, methods=["POST", "OPTIONS"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False, log_level="warning")
