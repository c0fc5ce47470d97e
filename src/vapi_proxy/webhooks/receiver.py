"""One delivery from Vapi, start to finish: verify the raw bytes, parse, deduplicate, settle the
ledger and the limits, answer request types, queue forwards.

    verify (401) → parse (400) → by message.type:
      assistant-request          → InboundResponder (routing, policy, limits, ledger)
      respond.types (tool-calls…) → relayed to the app within the deadline, or an error answer
      anything else               → ledger event (dedupe) → settle on end → outbox → {}
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from vapi_proxy.errors import BadRequestError, UnauthorizedError
from vapi_proxy.ledger.batch import GroupCommit
from vapi_proxy.ledger.records import EventOutcome, LedgerEvent
from vapi_proxy.ledger.store import Ledger
from vapi_proxy.limits.base import Limiter
from vapi_proxy.policy.compiled import METADATA_KEY
from vapi_proxy.webhooks.config import WebhookSettings
from vapi_proxy.webhooks.forward import DeliveryError, Forwarder
from vapi_proxy.webhooks.inbound import InboundResponder
from vapi_proxy.webhooks.privacy import ledger_payload
from vapi_proxy.webhooks.stats import WebhookStats
from vapi_proxy.webhooks.verify import VerificationError, WebhookVerifier

logger = logging.getLogger("vapi_proxy.webhooks")

SETTLING_STATUS = "ended"
REPORT = "end-of-call-report"
_KINDS = {"webCall": "web", "inboundPhoneCall": "inbound", "outboundPhoneCall": "phone"}


def attribution(message: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """This proxy's `vapiProxy` metadata on the message's call, if there is any."""
    call = message.get("call")
    if not isinstance(call, Mapping):
        return None
    for holder in (call.get("assistantOverrides"), call):
        if isinstance(holder, Mapping):
            meta = holder.get("metadata")
            if isinstance(meta, Mapping) and isinstance(meta.get(METADATA_KEY), Mapping):
                found: Mapping[str, Any] = meta[METADATA_KEY]
                return found
    return None


class WebhookReceiver:
    def __init__(
        self,
        settings: WebhookSettings,
        *,
        verifier: WebhookVerifier,
        ledger: Ledger,
        limiter: Limiter,
        inbound: InboundResponder,
        forwarder: Forwarder,
        stats: WebhookStats,
    ) -> None:
        self.settings = settings
        self._verifier = verifier
        self._ledger = ledger
        self._limiter = limiter
        self._inbound = inbound
        self._forwarder = forwarder
        self._stats = stats
        self._respond_types = frozenset(settings.respond.types)
        # Deliveries arriving while the ledger writes are applied together in the next
        # transaction; the write goes ahead even if Vapi hangs up meanwhile.
        self._writer = GroupCommit(ledger.apply_events, max_batch=128, shield=True, turns=3)

    async def read_verified(
        self, headers: Mapping[str, str], body: bytes, client: str | None, request_id: str
    ) -> tuple[dict[str, Any], str | None]:
        """The parsed `message` and the credential's message id; 401/400 otherwise."""
        self._stats.received += 1
        try:
            verified = self._verifier.verify(headers, body)
        except VerificationError as exc:
            self._stats.rejected[exc.reason] += 1
            logger.warning(
                "webhook refused",
                extra={
                    "fields": {"reason": exc.reason, "client": client, "request_id": request_id}
                },
            )
            raise UnauthorizedError(
                "The webhook credential is missing or wrong.", scheme="Vapi"
            ) from None
        self._stats.verified += 1
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequestError("The webhook body is not valid JSON.") from None
        message = payload.get("message") if isinstance(payload, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise BadRequestError('The webhook body must be {"message": {"type": ...}}.')
        return message, verified.message_id

    async def handle(
        self, message: dict[str, Any], body: bytes, message_id: str | None, request_id: str
    ) -> dict[str, Any]:
        """The JSON to answer Vapi with; a failure (ledger or limits down) is counted and
        raised, so Vapi sees a 5xx and may retry."""
        try:
            return await self._dispatch(message, body, message_id, request_id)
        except Exception:
            self._stats.errors += 1
            raise

    async def _dispatch(
        self, message: dict[str, Any], body: bytes, message_id: str | None, request_id: str
    ) -> dict[str, Any]:
        mtype: str = message["type"]
        self._stats.by_type[mtype] += 1
        if mtype == "assistant-request":
            event_id = message_id or f"req:{request_id}"
            reply = await self._inbound.answer(message, body, event_id, request_id)
            await self._queue(event_id, mtype, body)
            return reply
        if mtype in self._respond_types:
            event_id = message_id or f"req:{request_id}"
            reply = await self._relay(message, body, event_id)
            await self._queue(event_id, mtype, body)
            return reply
        await self.record(message, body, message_id)
        return {}

    async def _queue(self, event_id: str, mtype: str, body: bytes) -> None:
        """Forward copies of a request type; a failure here must not cost Vapi its answer."""
        if not self._forwarder.enabled:
            return
        items = self._forwarder.outbox_items(event_id, mtype, body)
        if not items:
            return
        try:
            await self._ledger.outbox_add(items)
        except Exception:
            self._stats.errors += 1
            logger.exception("could not queue a forward", extra={"fields": {"type": mtype}})
            return
        self._forwarder.notify()

    async def _relay(
        self, message: Mapping[str, Any], body: bytes, event_id: str
    ) -> dict[str, Any]:
        mtype = str(message["type"])
        respond = self.settings.respond
        try:
            reply = await self._forwarder.relay(event_id, mtype, body, respond.deadline_seconds)
            if not isinstance(reply, dict):
                raise DeliveryError("the app's answer is not a JSON object")
        except DeliveryError as exc:
            self._stats.relayed["failed"] += 1
            logger.warning(
                "request relay failed; answered the error",
                extra={"fields": {"type": mtype, "error": str(exc)}},
            )
            return tool_errors(message, respond.error_message)
        self._stats.relayed["ok"] += 1
        return reply

    async def record(
        self, message: dict[str, Any], body: bytes, message_id: str | None
    ) -> EventOutcome:
        """Apply an event to the ledger (once), settle the limits when the call ended, queue
        forwards in the same transaction."""
        event = LedgerEvent.from_vapi(
            message,
            dedupe_key=f"msgid:{message_id}" if message_id else None,
            payload=ledger_payload(
                message,
                transcripts=self.settings.store_transcripts,
                recording_urls=self.settings.store_recording_urls,
            ),
        )
        # Forwarding off (the default): no event id to hash, no rows to build.
        outbox = (
            self._forwarder.outbox_items(event_id(event.dedupe_key), event.type, body)
            if self._forwarder.enabled
            else []
        )
        outcome = await self._writer.add((event, outbox))
        if outbox and not outcome.duplicate:
            self._forwarder.notify()
        if outcome.duplicate:
            self._stats.duplicates += 1
            return outcome
        if not outcome.known and event.call_id is not None:
            self._stats.unknown_calls += 1
            outcome = await self._adopt(message, event, outcome)
        if event.call_id is not None and (
            outcome.ended_now or event.type == REPORT or event.status == SETTLING_STATUS
        ):
            call = outcome.call
            await self._limiter.settle(
                event.call_id,
                duration_seconds=call.duration_seconds if call else event.duration_seconds,
                cost_usd=call.cost_usd if call else event.cost_usd,
                ended_at=(call.ended_at if call else event.ended_at) or event.ended_at,
            )
            self._stats.settled += 1
        return outcome

    async def _adopt(
        self, message: Mapping[str, Any], event: LedgerEvent, outcome: EventOutcome
    ) -> EventOutcome:
        meta = attribution(message) if self.settings.adopt_attributed_calls else None
        if meta is None or event.call_id is None:
            return outcome
        call = message.get("call")
        call_map: Mapping[str, Any] = call if isinstance(call, Mapping) else {}
        created = call_map.get("createdAt")
        record = await self._ledger.adopt_call(
            call_id=event.call_id,
            identity_hash=str(meta.get("identity") or "unknown"),
            profile=str(meta.get("profile") or "unknown")[:256],
            kind=_KINDS.get(str(call_map.get("type")), "call"),
            request_id=str(meta["requestId"])[:128] if meta.get("requestId") else None,
            created_at=_iso(created),
        )
        if record is None:
            return outcome
        self._stats.adopted_calls += 1
        logger.info(
            "adopted a call this proxy created but had not recorded",
            extra={"fields": {"call_id": event.call_id, "profile": record.profile}},
        )
        return EventOutcome(True, False, record, record.status == SETTLING_STATUS)


def event_id(dedupe_key: str) -> str:
    """A short id for the app, the same for every delivery of one event (across replicas)."""
    return hashlib.sha256(dedupe_key.encode()).hexdigest()[:32]


def tool_errors(message: Mapping[str, Any], text: str) -> dict[str, Any]:
    """The failure answer for a request type: per-call errors for tool-calls, else `{error}`."""
    if message.get("type") != "tool-calls":
        return {"error": text}
    results = []
    calls = message.get("toolCallList") or []
    if not calls:
        calls = [
            item.get("toolCall")
            for item in message.get("toolWithToolCallList") or []
            if isinstance(item, Mapping)
        ]
    for item in calls:
        if not isinstance(item, Mapping):
            continue
        function = item.get("function")
        name = function.get("name") if isinstance(function, Mapping) else item.get("name")
        results.append({"toolCallId": item.get("id"), "name": name or "", "error": text})
    return {"results": results}


def _iso(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else None
