"""Reading a request body: the declared length is checked strictly before anything is read."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from vapi_proxy.edge.body import read_body
from vapi_proxy.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError


def request(content_length: str, body: bytes = b"{}", *, coding: str | None = None) -> Request:
    headers = [(b"content-length", content_length.encode("latin-1"))]
    if coding is not None:
        headers.append((b"content-encoding", coding.encode("latin-1")))
    scope = {"type": "http", "method": "POST", "path": "/call/web", "headers": headers}
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


@pytest.mark.parametrize("coding", ["identity", "IDENTITY", " identity ", ""])
def test_an_identity_coding_is_read(coding: str) -> None:
    assert asyncio.run(read_body(request("2", coding=coding), 100)) == b"{}"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "identity, gzip", "x-" + "z" * 500])
def test_a_coded_body_is_a_415_naming_the_coding(coding: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as refused:
        asyncio.run(read_body(request("2", coding=coding), 100))
    assert refused.value.headers == {"Accept-Encoding": "identity"}
    assert "Content-Encoding: " in str(refused.value.message)
    assert len(str(refused.value.message)) < 120
