"""Operator endpoints: `GET /admin/usage` (calls, minutes and cost from the ledger).

Protected by admin keys configured as hashes; with none configured the routes do not exist.
The report is the same as `vapi-proxy usage`.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vapi_proxy.errors import BadRequestError, UnauthorizedError
from vapi_proxy.ledger.cli import usage_report

if TYPE_CHECKING:
    from vapi_proxy.app import Runtime


def _date(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequestError(
            f"'{name}' must be a date (YYYY-MM-DD) or an ISO timestamp."
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def routes(runtime: Runtime) -> list[Route]:
    hashes = [h.split(":", 1)[1].encode() for h in runtime.settings.admin.key_hashes]
    if not hashes:
        return []

    def authorised(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("An admin key is required.", error="invalid_request")
        digest = hashlib.sha256(token.strip().encode()).hexdigest().encode()
        # Compare against every configured hash so timing does not tell which one matched.
        matched = False
        for expected in hashes:
            matched |= hmac.compare_digest(digest, expected)
        if not matched:
            raise UnauthorizedError("The admin key is not valid.")

    async def usage(request: Request) -> Response:
        authorised(request)
        query = request.query_params
        rows = await runtime.ledger.usage(
            identity_key=query.get("identity"),
            tenant=query.get("tenant"),
            since=_date("since", query.get("since")),
            until=_date("until", query.get("until")),
        )
        return Response(
            orjson.dumps(usage_report(rows)),
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    return [Route("/admin/usage", usage, methods=["GET"])]
