"""The assistant-request answer with fakes for the limiter and ledger: the body comes from the
shared policy code, and a failure or a slow dependency becomes the spoken error in time."""

from __future__ import annotations

import asyncio
from typing import Any

from vapi_proxy.errors import TooManyRequestsError
from vapi_proxy.limits.base import AdmissionRequest, Reservation
from vapi_proxy.metrics import Metrics
from vapi_proxy.policy.compiled import compile_profiles
from vapi_proxy.policy.profiles import Profile
from vapi_proxy.webhooks.config import ForwardSettings, InboundSettings, RespondSettings
from vapi_proxy.webhooks.forward import Forwarder
from vapi_proxy.webhooks.inbound import InboundResponder
from vapi_proxy.webhooks.stats import WebhookStats

MESSAGE = {
    "type": "assistant-request",
    "call": {"id": "call-9"},
    "phoneNumber": {"id": "pn-1", "number": "+15550100"},
    "customer": {"number": "+15551234"},
}


# Bounds a test that would otherwise hang on a regression; never a speed claim.
HANG_GUARD = 30.0


class FakeLimiter:
    def __init__(self, *, stuck: bool = False, fail: Exception | None = None) -> None:
        # A stuck store: commit waits on an event nobody sets.
        self.stuck, self.fail = asyncio.Event() if stuck else None, fail
        self.reserved: list[AdmissionRequest] = []
        self.released: list[str] = []
        self.committed: list[str] = []

    async def reserve(self, req: AdmissionRequest) -> Reservation:
        self.reserved.append(req)
        if self.fail is not None:
            raise self.fail
        return Reservation(id="r1")

    async def commit(self, reservation: Reservation, call_id: str) -> None:
        if self.stuck is not None:
            await self.stuck.wait()  # a store that no longer answers
        self.committed.append(call_id)

    async def release(self, reservation: Reservation) -> None:
        self.released.append(reservation.id)


class FakeLedger:
    def __init__(self) -> None:
        self.recorded: list[dict[str, Any]] = []

    async def record_call(self, **kw: Any) -> bool:
        self.recorded.append(kw)
        return True


def responder(
    limiter: FakeLimiter, ledger: FakeLedger, metrics: Metrics | None = None, **settings: Any
) -> InboundResponder:
    profiles = compile_profiles(
        {
            "line": Profile.model_validate(
                {
                    "assistant_id": "asst-1",
                    "variables": {"who": "{{identity.sub}}"},
                    "max_duration_seconds": 300,
                }
            )
        }
    )
    stats = WebhookStats()
    return InboundResponder(
        InboundSettings.model_validate({"default": {"profile": "line"}, **settings}),
        profiles=profiles,
        limiter=limiter,  # type: ignore[arg-type]
        ledger=ledger,  # type: ignore[arg-type]
        webhook_server={"url": "https://proxy.example.com/webhook", "credentialId": "c1"},
        forwarder=Forwarder(ForwardSettings(), RespondSettings(), ledger, stats),  # type: ignore[arg-type]
        stats=stats,
        metrics=metrics,
    )


async def test_the_answer_is_the_shared_call_body_with_the_caller() -> None:
    limiter, ledger = FakeLimiter(), FakeLedger()
    answer = await responder(limiter, ledger).answer(MESSAGE, b"{}", "ev", "rq-1")
    overrides = answer.pop("assistantOverrides")
    assert answer == {"assistantId": "asst-1"}
    assert overrides["variableValues"] == {
        "callerNumber": "+15551234",
        "calledNumber": "+15550100",
        "who": "+15551234",
    }
    assert overrides["maxDurationSeconds"] == 300
    assert overrides["server"] == {"url": "https://proxy.example.com/webhook", "credentialId": "c1"}
    assert overrides["metadata"]["vapiProxy"]["requestId"] == "rq-1"
    request = limiter.reserved[0]
    assert (request.identity.key, request.profile, request.worst_case_seconds) == (
        "phone:+15551234",
        "line",
        300.0,
    )
    assert limiter.committed == ["call-9"]
    assert ledger.recorded[0]["kind"] == "inbound"


async def test_a_slow_store_gets_the_spoken_error_by_the_deadline_and_gives_back_the_slot() -> None:
    limiter, ledger = FakeLimiter(stuck=True), FakeLedger()
    answering = responder(limiter, ledger, deadline_seconds=0.2, error_message="Call back later.")
    # The store never answers: only the answer's own deadline can end the wait.
    async with asyncio.timeout(HANG_GUARD):
        answer = await answering.answer(MESSAGE, b"{}", "ev", "rq")
    assert answer == {"error": "Call back later."}
    assert limiter.committed == []
    assert limiter.released == ["r1"]
    assert ledger.recorded == []


async def test_a_failure_inside_is_the_spoken_error_and_limits_speak_their_own() -> None:
    broken = responder(FakeLimiter(fail=RuntimeError("store exploded")), FakeLedger())
    assert await broken.answer(MESSAGE, b"{}", "ev", "rq") == {
        "error": broken.settings.error_message
    }
    limited = responder(
        FakeLimiter(fail=TooManyRequestsError("no", retry_after=5)),
        FakeLedger(),
        limit_message="Too many calls from your number.",
    )
    assert await limited.answer(MESSAGE, b"{}", "ev", "rq") == {
        "error": "Too many calls from your number."
    }


async def test_inbound_answers_go_through_the_admission_unit_and_its_metrics() -> None:
    metrics = Metrics()
    admissions = metrics.admissions
    limiter, ledger = FakeLimiter(), FakeLedger()
    await responder(limiter, ledger, metrics).answer(MESSAGE, b"{}", "ev", "rq-1")
    assert admissions.labels("call", "created")._value.get() == 1
    assert ledger.recorded[0]["kind"] == "inbound" and limiter.committed == ["call-9"]
    limited = FakeLimiter(fail=TooManyRequestsError("no", retry_after=5))
    await responder(limited, FakeLedger(), metrics).answer(MESSAGE, b"{}", "ev", "rq-2")
    assert admissions.labels("call", "refused")._value.get() == 1
    slow = FakeLimiter(stuck=True)
    late = responder(slow, FakeLedger(), metrics, deadline_seconds=0.05)
    async with asyncio.timeout(HANG_GUARD):
        await late.answer(MESSAGE, b"{}", "ev", "rq-3")
    # The caller heard the error: nothing was started for them, the slot is given back.
    assert slow.released == ["r1"]
    assert admissions.labels("call", "not_sent")._value.get() == 1
