"""Reading a request body: the declared length is checked strictly before anything is read."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from vapi_proxy.edge.body import read_body
from vapi_proxy.errors import BadRequestError, PayloadTooLargeError


def request(content_length: str, body: bytes = b"{}") -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/call/web",
        "headers": [(b"content-length", content_length.encode("latin-1"))],
    }
    sent = False

    async def receive() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def test_a_plain_length_is_read() -> None:
    assert asyncio.run(read_body(request("2"), 100)) == b"{}"


@pytest.mark.parametrize("value", ["+2", " 2", "2 ", "0_2", "\u00b2", "2, 2", "-1", "0x2", ""])
def test_a_length_that_is_not_plain_digits_is_a_400(value: str) -> None:
    with pytest.raises(BadRequestError, match="Content-Length"):
        asyncio.run(read_body(request(value), 100))


@pytest.mark.parametrize("value", ["101", "9" * 19, "9" * 5000])
def test_a_length_over_the_limit_is_a_413_whatever_its_size(value: str) -> None:
    with pytest.raises(PayloadTooLargeError):
        asyncio.run(read_body(request(value), 100))
