"""Answer `assistant-request` for inbound phone calls, well inside Vapi's 7.5 s.

Route by the rules (webhooks/routing.py), then build the answer with the same compiled profiles
and body builder as web calls, admit the caller (an `Identity` with method `phone`, keyed by
their number) through the limiter, and record the call (kind `inbound`). Anything that fails or
runs past `deadline_seconds` is answered with the spoken `error_message`: Vapi hangs up on a
late or failed answer with a worse message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from vapi_proxy.admission import Admissions, Created
from vapi_proxy.auth.identity import Identity
from vapi_proxy.errors import ProxyError, TooManyRequestsError
from vapi_proxy.ledger.store import Ledger
from vapi_proxy.limits.base import AdmissionRequest, Limiter
from vapi_proxy.metrics import Metrics
from vapi_proxy.policy.access import check_access
from vapi_proxy.policy.compiled import CallContext, CompiledProfile, build_call_body
from vapi_proxy.webhooks.config import InboundAction, InboundSettings
from vapi_proxy.webhooks.forward import DeliveryError, Forwarder
from vapi_proxy.webhooks.routing import InboundCall, choose
from vapi_proxy.webhooks.stats import WebhookStats

logger = logging.getLogger("vapi_proxy.webhooks.inbound")

_TARGETS = ("assistantId", "assistant", "squadId", "squad", "workflowId", "workflow")


def phone_identity(call: InboundCall, tenant: str | None) -> Identity:
    """The caller as limits and the ledger see them: their number, or `unknown` if withheld."""
    return Identity(
        subject=call.caller_number or "unknown",
        method="phone",
        tenant=tenant,
        claims={
            "phone": {
                "caller": call.caller_number,
                "called": call.called_number,
                "phoneNumberId": call.phone_number_id,
            }
        },
    )


class InboundResponder:
    def __init__(
        self,
        settings: InboundSettings,
        *,
        profiles: Mapping[str, CompiledProfile],
        limiter: Limiter,
        ledger: Ledger,
        webhook_server: Mapping[str, Any] | None,
        forwarder: Forwarder,
        stats: WebhookStats,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self._profiles = profiles
        self._admissions = Admissions(limiter, ledger, metrics)
        self._server = webhook_server
        self._forwarder = forwarder
        self._stats = stats
        self._clock = clock

    async def answer(
        self, message: Mapping[str, Any], body: bytes, event_id: str, request_id: str
    ) -> dict[str, Any]:
        """The reply for Vapi; never raises, never later than the deadline."""
        try:
            return await asyncio.wait_for(
                self._answer(message, body, event_id, request_id), self.settings.deadline_seconds
            )
        except TimeoutError:
            self._stats.assistant_requests["late"] += 1
            logger.warning(
                "assistant-request answer missed the deadline; answered the error message",
                extra={"fields": {"request_id": request_id}},
            )
        except Exception:
            self._stats.assistant_requests["failed"] += 1
            logger.exception(
                "assistant-request failed; answered the error message",
                extra={"fields": {"request_id": request_id}},
            )
        return {"error": self.settings.error_message}

    async def _answer(
        self, message: Mapping[str, Any], body: bytes, event_id: str, request_id: str
    ) -> dict[str, Any]:
        call = InboundCall.from_message(message)
        route = choose(self.settings, call, self._clock())
        action = route.action
        if action is None:
            self._stats.assistant_requests[route.rule] += 1
            return {"error": route.message or self.settings.error_message}
        if action.error is not None:
            self._stats.assistant_requests["error"] += 1
            return {"error": action.error}
        if action.destination is not None:
            self._stats.assistant_requests["destination"] += 1
            return {"destination": dict(action.destination)}
        if action.forward:
            return await self._forward(body, event_id)
        return await self._start(call, route.rule, action, request_id)

    async def _forward(self, body: bytes, event_id: str) -> dict[str, Any]:
        try:
            reply = await self._forwarder.relay(
                event_id, "assistant-request", body, self.settings.deadline_seconds
            )
        except DeliveryError as exc:
            self._stats.assistant_requests["forward_failed"] += 1
            logger.warning("assistant-request relay failed", extra={"fields": {"error": str(exc)}})
            return {"error": self.settings.error_message}
        if not isinstance(reply, dict) or not (
            any(k in reply for k in _TARGETS) or "destination" in reply or "error" in reply
        ):
            self._stats.assistant_requests["forward_invalid"] += 1
            return {"error": self.settings.error_message}
        self._stats.assistant_requests["forwarded"] += 1
        return reply

    async def _start(
        self, call: InboundCall, rule: str, action: InboundAction, request_id: str
    ) -> dict[str, Any]:
        compiled = self._profiles[str(action.profile)]
        identity = phone_identity(call, action.tenant)
        try:
            check_access(compiled.profile.access, identity, compiled.name)
        except ProxyError:
            self._stats.assistant_requests["forbidden"] += 1
            return {"error": self.settings.error_message}
        variables = {
            **({"callerNumber": call.caller_number} if call.caller_number else {}),
            **({"calledNumber": call.called_number} if call.called_number else {}),
            **action.variables,
        }
        ctx = CallContext(identity, request_id, self._server)
        reply = build_call_body(compiled, variables, ctx)
        try:
            admission = await self._admissions.admit(
                AdmissionRequest(
                    identity=identity,
                    profile=compiled.name,
                    kind="call",
                    worst_case_seconds=float(compiled.max_duration_seconds),
                ),
                record_kind="inbound",
                request_id=request_id,
            )
        except TooManyRequestsError:
            self._stats.assistant_requests["limited"] += 1
            return {"error": self.settings.limit_message}
        if call.call_id is None:
            # Vapi named no call: nothing to commit to, and the caller hears the profile's
            # assistant; the reservation is kept until it expires (the call may run).
            admission.maybe_sent()
        else:
            try:
                # The call exists at Vapi already (it is ringing us): it is created the moment
                # the proxy answers with an assistant.
                await admission.created(Created(call.call_id, "ringing"))
            except BaseException:
                await asyncio.shield(admission.not_sent())
                raise
        self._stats.assistant_requests["profile"] += 1
        logger.info(
            "inbound call routed",
            extra={
                "fields": {
                    "rule": rule,
                    "profile": compiled.name,
                    "identity": identity.hashed,
                    "call_id": call.call_id,
                }
            },
        )
        return reply
