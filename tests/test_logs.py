"""Log redaction: tokens, keys, secrets and phone numbers never reach a log line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from vapi_proxy.logs import JsonFormatter, RedactingFilter

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"


def emit(filter_: RedactingFilter, msg: str, *args: object, **fields: object) -> dict[str, object]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(filter_)
    logger = logging.getLogger(f"test.redact.{id(stream)}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.info(msg, *args, extra={"fields": fields} if fields else None)
    finally:
        logger.removeHandler(handler)
    parsed: dict[str, object] = json.loads(stream.getvalue())
    return parsed


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Authorization: Bearer sk-live-0123456789", "sk-live-0123456789"),
        (f"token was {JWT}", JWT),
        ("key vpk_ABCDEFGHijklmnop0123 refused", "vpk_ABCDEFGHijklmnop0123"),
        ("url?api_key=abc123def&x=1", "abc123def"),
        ("caller +14155550123 called", "4155550123"),
        ("caller +44 20 7946 0958 called", "7946 0958"),
        ("the private key is VAPI-PRIVATE-KEY-XYZ", "VAPI-PRIVATE-KEY-XYZ"),
    ],
)
def test_messages_are_scrubbed(text: str, leak: str) -> None:
    line = emit(RedactingFilter(["VAPI-PRIVATE-KEY-XYZ"]), text)
    assert leak not in str(line)


def test_fields_and_arguments_are_scrubbed() -> None:
    line = emit(
        RedactingFilter(["s3cr3t-value"]),
        "failed for %s",
        "s3cr3t-value",
        number="+14155550123",
        nested={"auth": f"Bearer {JWT}"},
    )
    text = json.dumps(line, ensure_ascii=False)
    assert "s3cr3t-value" not in text
    assert "4155550123" not in text
    assert JWT not in text
    assert "…23" in text


def test_exceptions_are_scrubbed() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter(["topsecretkey"]))
    logger = logging.getLogger("test.redact.exc")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise ValueError("bad key topsecretkey")
    except ValueError:
        logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "topsecretkey" not in out
    assert "ValueError" in out


def test_ordinary_numbers_survive() -> None:
    line = emit(RedactingFilter(), "took 1234 ms, status 201, id 42")
    assert line["msg"] == "took 1234 ms, status 201, id 42"
