"""Baseline: the same pass-through as bench/bare_starlette.py on aiohttp.web alone (server and
client in one library). `python -m bench.bare_aiohttp PORT`."""

from __future__ import annotations

import json
import os
import sys

import aiohttp
from aiohttp import web

from bench.bare_starlette import CORS, assistant_config

UPSTREAM = os.environ["VAPI_BASE_URL"]
AUTH = {"Authorization": "Bearer " + os.environ["VAPI_API_KEY"]}


async def call(request: web.Request) -> web.Response:
    if request.method == "OPTIONS":
        return web.Response(status=204, headers=CORS)
    session: aiohttp.ClientSession = request.app["session"]
    try:
        body = await request.json()
        url = UPSTREAM + request.path
        async with session.post(url, json=assistant_config(body), headers=AUTH) as upstream:
            data = await upstream.read()
            return web.Response(
                body=data, status=upstream.status, headers=CORS, content_type="application/json"
            )
    except Exception as exc:
        details = json.dumps({"error": "Proxy error", "details": str(exc)})
        return web.Response(text=details, status=500, headers=CORS, content_type="application/json")


async def _session(app: web.Application):  # type: ignore[no-untyped-def]
    app["session"] = aiohttp.ClientSession()
    yield
    await app["session"].close()


def make_app() -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(_session)
    app.router.add_route("*", "/call/web", call)
    return app


if __name__ == "__main__":
    import uvloop  # as under uvicorn[standard]: the same event loop for both Python baselines

    web.run_app(
        make_app(),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )
