"""Log redaction: tokens, keys, secrets and phone numbers never reach a log line."""

from __future__ import annotations

import io
import json
import logging

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from vapi_proxy.logs import ConsoleFormatter, JsonFormatter, RedactingFilter, log_trace_ids

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


# -- phone numbers against ids, timestamps and request ids (property tests) -----------------------

PROPERTY = hsettings(max_examples=300, deadline=None)
SCRUB = RedactingFilter().scrub
# Text around a value: no digits, so whatever digits survive came from the value itself.
_glue = st.sampled_from([" ", ", ", ": ", "=", "'", '"', " (", ") ", "[", "] ", "\n", "\t", "/"])
# Without the words that rightly mark what follows as a secret (`bearer x`, `token=x`...).
_words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ", max_size=12).filter(
    lambda w: not any(k in w for k in ("bearer", "basic", "secret", "token", "password", "api"))
)


@st.composite
def in_text(draw: st.DrawFn, value: st.SearchStrategy[str]) -> tuple[str, str]:
    item = draw(value)
    return item, draw(_words) + draw(_glue) + item + draw(_glue) + draw(_words)


def _uuid_text(case: str) -> st.SearchStrategy[str]:
    # Any version, and the shape the old scrubber broke: middle groups that are all digits.
    hexes = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
    digits = st.text(alphabet="0123456789", min_size=32, max_size=32)
    mixed = st.tuples(hexes, digits).map(lambda p: p[0][:12] + p[1][12:20] + p[0][20:])

    def shape(raw: str) -> str:
        text = f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
        return text.upper() if case == "upper" else text

    return st.one_of(st.uuids().map(str), hexes, digits, mixed).map(shape)


uuids = st.one_of(_uuid_text("lower"), _uuid_text("upper"))
request_ids = st.one_of(
    # The proxy's own (edge/middleware.py `_RequestIds`): 16 hex + 16 hex counter digits.
    st.tuples(
        st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
        st.integers(min_value=1, max_value=2**63),
    ).map(lambda p: f"{p[0]}{p[1]:016x}"),
    st.uuids().map(lambda u: u.hex),
)
other_ids = st.one_of(
    # Vapi-, Stripe- and Svix-style prefixed ids, dotted versions, addresses, digit groups
    # joined to letters: every shape whose digits belong to something else.
    st.tuples(
        st.sampled_from(["call_", "chat_", "msg_", "req-", "cus_", "org-", "id:", "v"]),
        st.text(alphabet="0123456789", min_size=1, max_size=24),
    ).map("".join),
    st.lists(st.text(alphabet="0123456789", min_size=1, max_size=12), min_size=2, max_size=6)
    .filter(lambda groups: [len(g) for g in groups][-3:] != [3, 3, 4])
    .map("-".join),
    st.ip_addresses().map(str),
    st.text(alphabet="0123456789abcdefABCDEF_-", min_size=8, max_size=64).filter(
        lambda t: any(c.isalpha() or c == "_" for c in t)
    ),
)
timestamps = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat(sep=" ")),
    st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
    st.integers(min_value=0, max_value=2**41).map(str),  # epoch seconds and milliseconds
    st.floats(min_value=0, max_value=4e9, allow_nan=False).map(str),
)


@PROPERTY
@given(in_text(st.one_of(uuids, request_ids, other_ids, timestamps)))
def test_ids_and_timestamps_are_never_rewritten(case: tuple[str, str]) -> None:
    value, text = case
    assert SCRUB(text) == text, value


@st.composite
def phone_numbers(draw: st.DrawFn) -> str:
    """E.164 numbers (8-15 digits), written plain or grouped with spaces, dashes, dots and a
    parenthesised area code, as people and Vapi's error texts write them."""
    country = str(draw(st.integers(min_value=1, max_value=999)))
    rest = draw(
        st.text(
            alphabet="0123456789",
            min_size=max(1, 8 - len(country)),
            max_size=15 - len(country),
        )
    )
    style = draw(st.sampled_from(["plain", "spaced", "dashed", "dotted", "area"]))
    if style == "plain" or len(rest) < 4:
        return f"+{country}{rest}"
    groups = [rest[i : i + 3] for i in range(0, len(rest), 3)]
    if style == "area":
        return f"+{country} ({groups[0]}) " + "-".join(groups[1:])
    sep = {"spaced": " ", "dashed": "-", "dotted": "."}[style]
    return f"+{country}{sep}" + sep.join(groups)


national = st.tuples(
    st.text(alphabet="0123456789", min_size=3, max_size=3),
    st.text(alphabet="0123456789", min_size=3, max_size=3),
    st.text(alphabet="0123456789", min_size=4, max_size=4),
    st.sampled_from(["({0}) {1}-{2}", "{0}-{1}-{2}", "{0}.{1}.{2}", "1 {0} {1} {2}"]),
).map(lambda p: p[3].format(*p[:3]))


@PROPERTY
@given(in_text(st.one_of(phone_numbers(), national)))
def test_phone_numbers_are_masked_to_their_last_two_digits(case: tuple[str, str]) -> None:
    number, text = case
    out = SCRUB(text)
    digits = "".join(c for c in number if c.isdigit())
    assert "".join(c for c in out if c.isdigit()) == digits[-2:], out
    assert f"[phone …{digits[-2:]}]" in out


@PROPERTY
@given(phone_numbers(), uuids, timestamps)
def test_a_number_next_to_ids_and_times_is_masked_alone(
    number: str, call_id: str, moment: str
) -> None:
    text = f"call {call_id} from {number} {call_id} at {moment}"
    out = SCRUB(text)
    assert number not in out
    assert out.startswith(f"call {call_id} from [phone …")
    assert out.endswith(f"] {call_id} at {moment}")


def test_the_reported_call_id_survives() -> None:
    # Issue 13 §10: this id came out as `…-4fcd-[phone …21]-…`.
    text = "call 1a2b3c4d-4fcd-1234-5678-123456789021 ended; caller +1 (415) 555-0123"
    assert SCRUB(text) == "call 1a2b3c4d-4fcd-1234-5678-123456789021 ended; caller [phone …23]"


def test_hostile_input_is_scrubbed_in_linear_time() -> None:
    # The scrubber sees request paths and upstream error text: no catastrophic backtracking.
    for text in ("+1" + " 1" * 20_000 + "x", "+" + "1" * 50_000 + "x", "(415) " * 10_000):
        assert SCRUB(text).endswith(text[-1])


def test_console_lines_cannot_be_forged_by_a_field() -> None:
    # A percent-decoded path (`/call%0Alevel=error ...`) is one field of one line.
    record = logging.LogRecord(
        "vapi_proxy.access", logging.INFO, __file__, 1, "request", None, None
    )
    record.fields = {"path": "/call\nERROR   vapi_proxy.app: forged\x1b[2J", "status": 404}
    line = ConsoleFormatter().format(record)
    assert "\n" not in line
    assert "\x1b" not in line
    assert "path=/call\\nERROR   vapi_proxy.app: forged\\x1b[2J status=404" in line


def test_a_plain_alphanumeric_secret_is_still_redacted() -> None:
    # Plain letters-and-digits values skip the patterns, never the configured secrets.
    assert RedactingFilter(["s3cr3tValue42"]).scrub("s3cr3tValue42") == "[redacted]"
    assert SCRUB("3f2a9c1e0b7d4a5f0000000000000001") == "3f2a9c1e0b7d4a5f0000000000000001"


# -- trace ids (set by vapi_proxy.tracing when tracing is on) ---------------------------------


def test_trace_ids_are_added_only_while_a_source_gives_them() -> None:
    ids: list[tuple[str, str] | None] = [("a" * 32, "b" * 16)]
    console = logging.makeLogRecord({"msg": "hello", "levelname": "INFO", "name": "t"})
    try:
        log_trace_ids(lambda: ids[0])
        line = emit(RedactingFilter(), "inside", request_id="r1")
        assert (line["trace_id"], line["span_id"]) == ("a" * 32, "b" * 16)
        assert (
            ConsoleFormatter().format(console).endswith(f"trace_id={'a' * 32} span_id={'b' * 16}")
        )
        ids[0] = None  # outside any trace
        assert "trace_id" not in emit(RedactingFilter(), "outside")
        assert "trace_id" not in ConsoleFormatter().format(console)
    finally:
        log_trace_ids(None)
    assert "trace_id" not in emit(RedactingFilter(), "off")
