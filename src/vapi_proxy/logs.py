"""Logging set-up: JSON lines (or console text) and the per-request access log.

Log records carry structured fields in `extra={"fields": {...}}`. Nothing here ever formats a
header, a token or a key: callers pass only the fields they mean to log.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

ACCESS_LOGGER = "vapi_proxy.access"

TraceIds = Callable[[], tuple[str, str] | None]
"""The current (trace id, span id) in hex, or None outside a trace."""
_trace_ids: TraceIds | None = None


def log_trace_ids(source: TraceIds | None) -> None:
    """Add `trace_id` and `span_id` from `source` to every line written while a trace is
    current (`vapi_proxy.tracing` installs it when tracing is on; None: no trace ids, and no
    work per line beyond one check)."""
    global _trace_ids  # one hook for every formatter in the process
    _trace_ids = source


def _with_trace_ids(entry: dict[str, Any]) -> None:
    if _trace_ids is not None:
        ids = _trace_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids


_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]+"), r"\1 [redacted]"),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*"), "[jwt]"),
    (re.compile(r"\bvpk_[A-Za-z0-9_\-]{8,}"), "[api-key]"),
    (re.compile(r"(?i)\b(secret|token|password|api[_-]?key)=([^\s&,;]+)"), r"\1=[redacted]"),
)
# Phone numbers in the shapes people and Vapi write them, and nothing else: a number must stand
# alone (never inside an id, a path segment or a timestamp), so a UUID whose middle groups are
# all digits, an ISO or epoch timestamp and a request id are left as they are. Bare digit runs
# are not masked: `14155550123` cannot be told from an epoch-milliseconds timestamp or a count.
# Every repetition is separated by a mandatory non-digit, so matching stays linear on hostile
# input (the scrubber sees request paths and upstream error text).
_PHONE = re.compile(
    r"""
    (?P<e164>(?<![\w+])\+\d+(?:(?:[ .\-]?\(\d{1,4}\)[ .\-]?|[ .\-])\d+)*)(?!\w)
    # E.164, written plain or grouped: +14155550123, +1 (415) 555-0123, +44 (0)20 7946 0958
    | (?<![\w)])\(\d{3}\)[ .\-]?\d{3}[ .\-]\d{4}(?![\w]|[.\-]\d)
    # North American national: (415) 555-0123
    | (?<![\w.\-+])(?:1[ .\-])?\d{3}(?P<sep>[ .\-])\d{3}(?P=sep)\d{4}(?![\w]|[.\-]\w)
    # North American national: 415-555-0123, 415.555.0123, 1 415 555 0123
    """,
    re.VERBOSE,
)
_PHONE_HINT = re.compile(r"[+(]\d|\d[ .\-]\d")
"""What every phone shape above contains; searched first because it is far cheaper."""
_E164_WORD = re.compile(r" ?[^ ]+")
_E164_GROUP = re.compile(r"\D*\d+")
E164_MAX_DIGITS = 15
PHONE_MIN_DIGITS = 8


class RedactingFilter(logging.Filter):
    """Scrubs credentials, known secrets and (optionally) phone numbers from every record.

    Callers never mean to log a secret; this is the net under that rule, so a token pasted into
    an exception message or a phone number in a Vapi error does not reach the logs.
    """

    def __init__(self, secrets: Iterable[str] = (), *, phone_numbers: bool = True) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)
        self.phone_numbers = phone_numbers

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        if text.isalnum():
            # Letters and digits only (request ids, methods, names): every pattern below needs
            # a space, `.`, `_`, `=`, `+`, `(` or `-`. Most access-log fields end here.
            return text
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        if self.phone_numbers and _PHONE_HINT.search(text):
            text = _PHONE.sub(_mask_phone, text)
        return text

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self._value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._value(v) for v in value]
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        if isinstance(record.msg, str):
            record.msg = self.scrub(record.msg)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = self._value(fields)
        if record.exc_info and record.exc_info[1] is not None:
            # Formatted later by the handler: render it now so it can be scrubbed too.
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def _mask_phone(match: re.Match[str]) -> str:
    text = match.group(0)
    rest = ""
    if match.group("e164") is not None:
        # Grouped digits run on into whatever follows with a space (`+1 415 555 0123 2026-12-06`):
        # the number is the longest run of whole words, else of whole groups, that E.164 allows;
        # the rest stays as it was.
        cut = _e164_end(text, _E164_WORD) or _e164_end(text, _E164_GROUP)
        text, rest = text[:cut], text[cut:]
    digits = re.sub(r"\D", "", text)
    if len(digits) < PHONE_MIN_DIGITS:
        return match.group(0)
    return "[phone …" + digits[-2:] + "]" + rest


def _e164_end(text: str, unit: re.Pattern[str]) -> int:
    """Where the longest prefix of whole `unit`s with at most 15 digits ends (0: none fits)."""
    count = end = 0
    for part in unit.finditer(text):
        count += sum(c.isdigit() for c in part.group(0))
        if count > E164_MAX_DIGITS:
            break
        end = part.end()
    return end


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # Read as the line is written: handlers here are synchronous, in the logging task.
        _with_trace_ids(entry)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


_ONE_LINE = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {9: "\\t", 10: "\\n", 13: "\\r"}
"""Control characters as escapes: a request path is percent-decoded (`/call%0A...`), and a raw
newline or terminal escape in a console line would forge another line."""


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            base += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        ids: dict[str, Any] = {}
        _with_trace_ids(ids)
        if ids:
            base += f" trace_id={ids['trace_id']} span_id={ids['span_id']}"
        base = base.translate(_ONE_LINE)
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            base += "\n" + record.exc_text
        return base


def configure_logging(
    level: str = "info",
    fmt: str = "json",
    *,
    secrets: Iterable[str] = (),
    redact_phone_numbers: bool = True,
) -> None:
    """Route the proxy's and uvicorn's loggers to stderr in the chosen format, redacted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(RedactingFilter(secrets, phone_numbers=redact_phone_numbers))
    root = logging.getLogger("vapi_proxy")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    # The proxy writes its own access line with the fields that matter; uvicorn's would
    # duplicate it and include the raw query string.
    logging.getLogger("uvicorn.access").disabled = True
