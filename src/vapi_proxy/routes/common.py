"""What the route modules share (no route module imports another): the caller's identity, the
JSON reply, what is noted of Vapi's reply for the access log, who counts as an internal client."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from vapi_proxy.auth.identity import Identity
from vapi_proxy.edge.client_address import ClientAddressResolver
from vapi_proxy.edge.middleware import RequestState, plain_headers

if TYPE_CHECKING:
    from vapi_proxy.runtime import Runtime
    from vapi_proxy.upstream.client import UpstreamResponse
    from vapi_proxy.upstream.stream import UpstreamStream

_JSON_HEADERS = ((b"cache-control", b"no-store"),)
_JSON_TYPE = (b"content-type", b"application/json")


class JsonReply(Response):
    """An encoded JSON body that no cache keeps: Starlette's `Response` with its headers built
    directly (its `init_headers` re-encodes a header mapping and scans it on every request)."""

    media_type = "application/json"

    def __init__(
        self, body: bytes, status: int = 200, extra: Mapping[str, str] | None = None
    ) -> None:
        self.status_code = status
        self.background = None
        self.body = body
        headers = list(_JSON_HEADERS)
        if extra:
            headers.extend(
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()
            )
        if status >= 200 and status not in (204, 304):
            headers.append((b"content-length", str(len(body)).encode()))
        headers.append(_JSON_TYPE)
        self.raw_headers = headers


async def identify(runtime: Runtime, request: Request) -> Identity:
    """The caller, from its verified credential (401 otherwise)."""
    client = request.client
    headers = plain_headers(request.scope)
    return await runtime.auth.authenticate(
        headers.get("authorization"), client.host if client else "", headers
    )


async def authenticate(runtime: Runtime, request: Request) -> Identity:
    """The caller, refused with a readable 403 when the console blocked it."""
    identity = await identify(runtime, request)
    await runtime.blocks.refuse_blocked(identity)
    return identity


def json_response(
    body: bytes, status: int = 200, extra: Mapping[str, str] | None = None
) -> Response:
    """An encoded JSON body that no cache keeps."""
    return JsonReply(body, status, extra)


def note_upstream(state: RequestState, reply: UpstreamResponse | UpstreamStream) -> None:
    """Vapi's status and latency, for the access log."""
    state.upstream_status = reply.status
    state.upstream_ms = round(reply.elapsed_ms, 3)


def internal_client_check(
    allowed_networks: list[str], client_address: ClientAddressResolver
) -> Callable[[Request], bool]:
    """Whether a request's client (the TCP peer, or the client a trusted balancer relayed) is on
    one of the networks allowed to see operator data (metrics, readiness details). A public
    client relayed by a balancer on a private network is public."""
    networks = [ipaddress.ip_network(n) for n in allowed_networks]

    def internal(request: Request) -> bool:
        if request.client is None:
            return False
        return client_address.is_in(request.client.host, request.headers, networks)

    return internal
