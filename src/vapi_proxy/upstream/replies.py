"""Turn Vapi's reply into what the caller may see, and tell the operator what the caller may not.

A body the proxy built from a profile is the operator's (docs/api.md "When Vapi refuses"): a
400/404/422 for it is a 502 naming only the request id, with a warning log line and a metric for
the operator; Vapi's 401/403 (the operator's key) a 502 with an error line; Vapi's 429 and 5xx a
503 with a checked `Retry-After`. Only a refusal whose every message names a body path the caller
chose (an allowed client variable, the callee) shows Vapi's own reason. The key is never echoed:
the client (`UpstreamClient.redact`) cut it out of the reply before it gets here.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

from vapi_proxy.errors import ProxyError, UpstreamError
from vapi_proxy.upstream.client import UpstreamResponse

if TYPE_CHECKING:
    from vapi_proxy.policy.compiled import CompiledProfile

logger = logging.getLogger("vapi_proxy.upstream")

Cause = Literal["caller", "config", "key", "busy"]
"""Whose a refusal is: the caller's input, the operator's profile or setup, the operator's key,
or Vapi's own load or failure."""

MAX_RETRY_AFTER = 3600
"""Longest wait passed on from Vapi's `Retry-After` (seconds); longer ones are cut to this."""
_CALLER_STATUSES = frozenset({400, 404, 422})
# Statuses kept as they are in the metric's label; any other is folded to `4xx`/`5xx`/`3xx`.
_LABELLED_STATUSES = frozenset({400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504})
_MAX_MESSAGES = 20
_MAX_MESSAGE_CHARS = 500
_MAX_LOGGED_CHARS = 2000

# class-validator's value complaints start with the property path: "customer.number must be ...",
# "input.0.content should not be empty". "property x should not exist" (whitelisting) does not
# match on purpose: that a field is sent at all is the profile's decision, never the caller's.
_CONSTRAINT = re.compile(
    r"(?P<path>[A-Za-z_$][\w$]*(?:\.[\w$]+|\[\d+\])*) (?:must|should not be empty|each value)\b"
)
# Vapi's own handlers quote the field: "Couldn't Get Chat. `previousChatId` ... Not Found."
_QUOTED = re.compile(r"`([^`\s]{1,200})`")
_INDEX = re.compile(r"\[(\d+)\]")


class RequestFacts(Protocol):
    """What the route knows about the request (the edge's `RequestState` has it)."""

    @property
    def request_id(self) -> str: ...

    @property
    def profile(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """A refusal judged: whose it is, what the caller gets, what the operator is told."""

    cause: Cause
    error: ProxyError
    detail: str | list[str] | None
    """Vapi's message, redacted and bounded: for the operator's log, never a label."""


def vapi_message(body: bytes) -> str | list[str] | None:
    """The `message` of Vapi's NestJS error body, bounded in size; None when there is none."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    message = parsed.get("message")
    if isinstance(message, str):
        return message[:_MAX_LOGGED_CHARS]
    if isinstance(message, list) and message and all(isinstance(m, str) for m in message):
        return [m[:_MAX_MESSAGE_CHARS] for m in message[:_MAX_MESSAGES]]
    return None


def retry_after_seconds(value: str | None, now: datetime) -> int | None:
    """Vapi's `Retry-After` as whole seconds from `now` (RFC 9110 §10.2.3: delay-seconds or an
    HTTP-date), clamped to 1..`MAX_RETRY_AFTER`; None when absent or not one of those forms."""
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > 64:
        return None
    if text.isascii() and text.isdigit():
        seconds = int(text)
    else:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:  # "-0000": UTC by RFC 5322's reading
            moment = moment.replace(tzinfo=UTC)
        seconds = math.ceil((moment - now).total_seconds())
    return min(max(seconds, 1), MAX_RETRY_AFTER)


def named_paths(message: str) -> set[str]:
    """The body paths one of Vapi's messages names (`input[0]` written as `input.0`)."""
    names = set(_QUOTED.findall(message))
    found = _CONSTRAINT.match(message)
    if found is not None:
        names.add(found.group("path"))
    return {_INDEX.sub(r".\1", name) for name in names}


def _is_client_path(path: str, client_paths: Collection[str]) -> bool:
    return any(path == c or path.startswith(c + ".") for c in client_paths)


def callers_own(message: str | list[str] | None, client_paths: Collection[str]) -> bool:
    """True only when every message names a path and every path named is one the caller set.

    Anything else (no message, a message naming no path or a path the profile filled in) is
    the operator's: when in doubt, the caller is shown nothing of Vapi's text.
    """
    if not message or not client_paths:
        return False
    for text in [message] if isinstance(message, str) else message:
        names = named_paths(text)
        if not names or not all(_is_client_path(name, client_paths) for name in names):
            return False
    return True


def client_paths(compiled: CompiledProfile | None, endpoint: str) -> frozenset[str]:
    """The paths in Vapi's body whose values the caller chose, for this profile and endpoint.

    Client variables count unless a server variable of the same name wins or the profile gives
    a default (the proxy may have filled it in). Everything else in the body is the profile's.
    """
    if compiled is None or not endpoint.startswith(("/call", "/chat")) or "{" in endpoint:
        return frozenset()
    profile = compiled.profile
    chat = endpoint.startswith("/chat")
    paths: set[str] = set()
    key = compiled.overrides_key
    if not chat or key == "assistantOverrides":
        paths.update(
            f"{key}.variableValues.{name}"
            for name, spec in profile.client_variables.items()
            if name not in profile.variables and spec.default is None
        )
    if chat:
        paths.update(("input", "previousChatId", "sessionId"))
    elif endpoint == "/call":
        paths.add("customer.number")
        paths.update(f"customer.{name}" for name in profile.phone.customer_fields)
    elif profile.allow_reconnect:
        paths.add("roomDeleteOnUserLeaveEnabled")
    return frozenset(paths)


def misconfigured(request_id: str) -> UpstreamError:
    return UpstreamError(
        "The service is misconfigured; this is not your fault. "
        f"Quote request id {request_id} to the site operator."
    )


def judge(
    response: UpstreamResponse,
    *,
    request_id: str,
    client_paths: Collection[str] = (),
    now: datetime | None = None,
) -> Verdict:
    """Decide what a non-2xx reply from Vapi becomes (pure: no logging, no metrics)."""
    status = response.status
    message = vapi_message(response.body)
    detail = message
    if status in (401, 403):
        return Verdict("key", misconfigured(request_id), detail)
    if status in (408, 429) or status >= 500:
        seconds = retry_after_seconds(response.retry_after, now or datetime.now(UTC))
        headers = {"Retry-After": str(seconds)} if seconds is not None else {}
        text = "Vapi is busy or unavailable right now; try again"
        if seconds is None:
            text += " shortly."
        else:
            text += f" in {seconds} second{'' if seconds == 1 else 's'}."
        return Verdict("busy", UpstreamError(text, status_code=503, headers=headers), detail)
    if status in _CALLER_STATUSES and detail is not None and callers_own(detail, client_paths):
        return Verdict("caller", ProxyError(detail, status_code=status), detail)
    # Every other status (a redirect, 409, 413...) also says the proxy's setup is wrong.
    return Verdict("config", misconfigured(request_id), detail)


def _success(response: UpstreamResponse) -> dict[str, Any]:
    try:
        parsed = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        # A 2xx means Vapi did the work (a call may exist): never treat it as safe to retry.
        raise UpstreamError("Vapi's reply could not be read.", maybe_sent=True)
    return parsed


def parse_success(response: UpstreamResponse) -> dict[str, Any]:
    """The JSON object of a 2xx reply, for the operator's own tools (the console) only.

    The reader is the operator, so a refusal is a 502 that carries Vapi's reason (the key
    redacted by the client); Vapi busy or failing is the usual 503. Routes serving callers use
    `ReplyReader.read`, which keeps Vapi's text from them.
    """
    if 200 <= response.status < 300:
        return _success(response)
    verdict = judge(response, request_id="")
    if verdict.cause == "busy":
        raise verdict.error
    reason = verdict.detail if isinstance(verdict.detail, str) else "; ".join(verdict.detail or [])
    text = f"Vapi refused the request ({response.status})"
    raise UpstreamError(f"{text}: {reason}" if reason else f"{text}.")


def status_label(status: int) -> str:
    """Vapi's status as a metric label: known codes as they are, the rest by class."""
    return str(status) if status in _LABELLED_STATUSES else f"{status // 100}xx"


_LOG_LINES: dict[Cause, tuple[int, str]] = {
    "config": (
        logging.WARNING,
        "Vapi refused a request the proxy built from a profile: check the profile",
    ),
    "key": (logging.ERROR, "Vapi rejected the proxy's private key (VAPI_API_KEY)"),
    "busy": (logging.WARNING, "Vapi is rate-limiting or failing: the caller was told to retry"),
    "caller": (logging.INFO, "Vapi refused the caller's own input; the caller saw Vapi's reason"),
}


class ReplyReader:
    """Reads Vapi's replies for the routes: a 2xx's JSON object, or the refusal to raise, each
    reported once (a log line, and `observe(route, profile, status, cause)` for the metric)."""

    def __init__(
        self,
        profiles: Mapping[str, CompiledProfile],
        observe: Callable[[str, str, str, str], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._profiles = profiles
        self.observe = observe
        self._clock = clock

    def read(self, response: UpstreamResponse, facts: RequestFacts) -> dict[str, Any]:
        """Return the JSON object of a 2xx reply; raise what the caller should see otherwise."""
        if 200 <= response.status < 300:
            return _success(response)
        raise self.refusal(response, facts)

    def refusal(self, response: UpstreamResponse, facts: RequestFacts) -> ProxyError:
        """Judge a non-2xx reply, tell the operator, and return the error for the caller."""
        profile = facts.profile if facts.profile in self._profiles else None
        compiled = self._profiles[profile] if profile is not None else None
        verdict = judge(
            response,
            request_id=facts.request_id,
            client_paths=client_paths(compiled, response.endpoint),
            now=self._clock(),
        )
        level, text = _LOG_LINES[verdict.cause]
        if logger.isEnabledFor(level):
            fields: dict[str, Any] = {
                "request_id": facts.request_id,
                "profile": profile,
                "route": response.endpoint,
                "upstream_status": response.status,
                "vapi_message": verdict.detail,
            }
            if verdict.cause == "busy":
                fields["retry_after"] = verdict.error.headers.get("Retry-After")
            logger.log(level, text, extra={"fields": fields})
        if self.observe is not None:
            self.observe(
                response.endpoint, profile or "", status_label(response.status), verdict.cause
            )
        return verdict.error
