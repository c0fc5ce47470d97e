"""One admission unit for every creation: reserve → Vapi → commit or release → ledger → idempotency.

Web calls, phone calls (and each callee of a batch), chat turns and inbound `assistant-request`
answers all go through `Admissions`, so the limits, the ledger and an `Idempotency-Key` claim
always agree on what happened. Each admission ends in one explicit `Outcome`:

    refused     the limits said no (429) or could not be checked (503): nothing taken or sent
    created     Vapi created it: reservation committed to its id, ledger row written
    not_sent    Vapi provably did nothing (refused it, or it never left): reservation released
    maybe_sent  it may exist at Vapi (timeout, broken connection, unreadable 2xx): kept
    cancelled   the task was cancelled once the request may have left: kept, like maybe_sent

A kept reservation holds its slot and counts until it expires or a webhook settles it; an
`Idempotency-Key` whose request may have created something is never given back, so a retry
replays the answer instead of creating again. Metrics (outcomes, degraded admissions, storage
errors) are recorded here, where the outcome is known.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from vapi_proxy.auth.identity import Identity
from vapi_proxy.errors import (
    ProxyError,
    ServiceUnavailableError,
    TooManyRequestsError,
    UpstreamError,
    render,
)
from vapi_proxy.limits.base import AdmissionRequest, Limiter, Reservation

if TYPE_CHECKING:
    from vapi_proxy.ledger.records import IdempotencyResult
    from vapi_proxy.ledger.store import Ledger
    from vapi_proxy.metrics import Metrics

logger = logging.getLogger("vapi_proxy.admission")

T = TypeVar("T")

MAYBE_CREATED = (
    "The request may have reached Vapi before it was interrupted; it may have been created. "
    "Check before trying again with a new Idempotency-Key."
)


class Outcome(enum.StrEnum):
    REFUSED = "refused"
    CREATED = "created"
    NOT_SENT = "not_sent"
    MAYBE_SENT = "maybe_sent"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class Attempt:
    """One client request, which may hold several admissions (a batch): what the idempotency
    claim must know about them."""

    admissions: list[Admission] = field(default_factory=list)

    @property
    def maybe_created(self) -> bool:
        """True once any admission of this request may have created something at Vapi."""
        return any(a.sent and a.outcome is not Outcome.NOT_SENT for a in self.admissions)


@dataclass(frozen=True, slots=True)
class Created:
    """What the ledger learns about a created call or chat."""

    id: str
    status: str = "queued"
    session_id: str | None = None
    control_url: str | None = None
    """Vapi's `monitor.controlUrl`, kept server-side (the console ends calls with it)."""


class Admission:
    """One creation in flight: its reservation and, once it ends, its `outcome`."""

    def __init__(
        self,
        unit: Admissions,
        request: AdmissionRequest,
        reservation: Reservation,
        *,
        record_kind: str,
        request_id: str,
        attempt: Attempt,
    ) -> None:
        self._unit = unit
        self.request = request
        self.reservation = reservation
        self.record_kind = record_kind
        self.request_id = request_id
        self.attempt = attempt
        self.outcome: Outcome | None = None
        self.created_id: str | None = None
        self.sent = False
        """True once the request to Vapi may have left."""

    @property
    def identity(self) -> Identity:
        return self.request.identity

    async def send(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run the upstream request (and the reading of its reply) and classify a failure: a
        provably unsent request gives the reservation back; a maybe-sent or cancelled one
        keeps it. On success the caller ends the admission with `created`."""
        self.sent = True
        try:
            return await call()
        except UpstreamError as exc:
            if exc.maybe_sent:
                self._end(Outcome.MAYBE_SENT)
            else:
                await self.not_sent()
            raise
        except ProxyError:
            # A refusal the proxy raised from Vapi's non-2xx answer (or before sending).
            await self.not_sent()
            raise
        except asyncio.CancelledError:
            # The request may be at Vapi: keep the reservation (it expires or is settled).
            self._end(Outcome.CANCELLED)
            raise
        except Exception:
            # Anything else (a bug) may have struck after Vapi created it: not provably unsent.
            self._end(Outcome.MAYBE_SENT)
            raise

    async def created(self, created: Created, *, settle: bool = False) -> None:
        """Commit the reservation to Vapi's id and write the ledger row (a ledger failure is
        counted and logged, not raised: the thing exists and the limits already count it).
        `settle`: it holds nothing past now (a chat turn)."""
        if self.outcome is not None or self.created_id is not None:
            return
        self.created_id = created.id
        unit = self._unit
        try:
            await unit.limiter.commit(self.reservation, created.id)
        except Exception:
            unit.storage_error("limits", "committing a reservation failed", self, created.id)
        try:
            await unit.ledger.record_call(
                call_id=created.id,
                identity=self.identity,
                profile=self.request.profile,
                kind=self.record_kind,
                request_id=self.request_id,
                status=created.status,
                max_duration_seconds=(
                    self.request.worst_case_seconds if self.request.kind == "call" else None
                ),
                reservation_id=self.reservation.id,
                session_id=created.session_id,
                control_url=created.control_url,
            )
        except Exception:
            unit.storage_error("ledger", "ledger write failed for a created item", self, created.id)
        # Counted once written: an inbound answer cancelled before this point is withdrawn.
        self._end(Outcome.CREATED)
        if settle:
            await self.settle()

    async def settle(self) -> None:
        """Give back what a created item holds past its end (a chat turn's slot)."""
        if self.created_id is None:
            return
        try:
            await self._unit.limiter.settle(self.created_id, duration_seconds=0, cost_usd=None)
        except Exception:
            self._unit.storage_error("limits", "settling failed", self, self.created_id)

    async def not_sent(self) -> None:
        """Vapi provably did nothing: give the reservation back."""
        if self.outcome is not None:
            return
        self._end(Outcome.NOT_SENT)
        try:
            await self._unit.limiter.release(self.reservation)
        except Exception:
            self._unit.storage_error("limits", "releasing a reservation failed", self, None)

    def maybe_sent(self) -> None:
        """It may exist at Vapi but the proxy will never learn its id: keep the reservation."""
        self._end(Outcome.MAYBE_SENT)

    def _end(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self._unit.count(self.request.kind, outcome)


class Admissions:
    """The admission unit shared by every entry point (one per app)."""

    def __init__(self, limiter: Limiter, ledger: Ledger, metrics: Metrics | None = None) -> None:
        self.limiter = limiter
        self.ledger = ledger
        self.metrics = metrics
        self._background: set[asyncio.Future[None]] = set()

    async def admit(
        self,
        request: AdmissionRequest,
        *,
        record_kind: str,
        request_id: str,
        attempt: Attempt | None = None,
    ) -> Admission:
        """Reserve every applicable limit, or raise the refusal (429, or 503 when the store
        is down and the rule fails closed)."""
        try:
            reservation = await self.limiter.reserve(request)
        except TooManyRequestsError:
            self.count(request.kind, Outcome.REFUSED)
            raise
        except ServiceUnavailableError:
            self.count(request.kind, Outcome.REFUSED)
            if self.metrics is not None:
                self.metrics.storage_errors.labels("limits").inc()
            raise
        if reservation.degraded and self.metrics is not None:
            self.metrics.degraded_admissions.labels(request.kind).inc()
        attempt = attempt if attempt is not None else Attempt()
        admission = Admission(
            self,
            request,
            reservation,
            record_kind=record_kind,
            request_id=request_id,
            attempt=attempt,
        )
        attempt.admissions.append(admission)
        return admission

    def count(self, kind: str, outcome: Outcome) -> None:
        if self.metrics is not None:
            self.metrics.count_admission(kind, outcome.value)

    def storage_error(
        self, store: str, message: str, admission: Admission, item_id: str | None
    ) -> None:
        if self.metrics is not None:
            self.metrics.storage_errors.labels(store).inc()
        logger.exception(
            message,
            extra={"fields": {"request_id": admission.request_id, "id": item_id}},
        )

    # --- idempotency ----------------------------------------------------------------------

    async def idempotent(
        self,
        key: str,
        identity_key: str,
        *,
        request_hash: str,
        ttl_seconds: float,
        request_id: str,
        create: Callable[[Attempt], Awaitable[tuple[int, bytes]]],
    ) -> tuple[int, bytes, bool]:
        """Run `create` under an `Idempotency-Key`: (status, body, replayed).

        The first request claims the key; its result (the created item, or a failure after
        which something may exist) is stored and replayed to every later request with the key.
        The claim is given back only when nothing can have been created, so the retry that
        then creates is the only one. A request cancelled while its creation may be at Vapi
        stores a 502 "may have been created" for the key (or, if even that write fails, leaves
        it in progress until it expires): never a second creation.
        """
        ledger = self.ledger
        claiming = asyncio.ensure_future(
            ledger.idempotency_claim(
                key, identity_key, ttl_seconds=ttl_seconds, request_hash=request_hash
            )
        )
        try:
            claim = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            # Nothing was sent: once the claim has landed, give it back, or every retry would
            # be told "in progress" until the key expires.
            claiming.add_done_callback(lambda done: self._abandon_late(done, key, identity_key))
            raise
        if claim.state == "completed" and claim.response_body is not None:
            return claim.response_status or 201, claim.response_body, True
        if claim.state == "mismatch":
            raise ProxyError(
                "This Idempotency-Key was already used with a different request.",
                status_code=422,
            )
        if claim.state != "claimed":
            raise ProxyError(
                "A request with this Idempotency-Key is still in progress; retry shortly.",
                status_code=409,
                headers={"Retry-After": "1"},
            )
        attempt = Attempt()
        try:
            status, payload = await create(attempt)
        except BaseException as exc:
            await asyncio.shield(self._after_failure(key, identity_key, attempt, exc, request_id))
            raise
        try:
            await asyncio.shield(
                ledger.idempotency_complete(key, identity_key, status=status, body=payload)
            )
        except Exception:
            # The item exists: hand it over. The key stays "in progress" until it expires, so
            # a retry is told 409, never sent to Vapi again.
            if self.metrics is not None:
                self.metrics.storage_errors.labels("ledger").inc()
            logger.exception(
                "recording an Idempotency-Key's result failed",
                extra={"fields": {"request_id": request_id}},
            )
        return status, payload, False

    def _abandon_late(
        self, claiming: asyncio.Future[IdempotencyResult], key: str, identity_key: str
    ) -> None:
        if claiming.cancelled() or claiming.exception() is not None:
            return
        if claiming.result().state == "claimed":
            task = asyncio.ensure_future(self.ledger.idempotency_abandon(key, identity_key))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _after_failure(
        self,
        key: str,
        identity_key: str,
        attempt: Attempt,
        exc: BaseException,
        request_id: str,
    ) -> None:
        try:
            if not attempt.maybe_created:
                await self.ledger.idempotency_abandon(key, identity_key)
                return
            error = (
                exc
                if isinstance(exc, ProxyError)
                else UpstreamError(MAYBE_CREATED, maybe_sent=True)
            )
            await self.ledger.idempotency_complete(
                key, identity_key, status=error.status_code, body=render(error, request_id)
            )
        except Exception:
            # The claim stays in progress until it expires: a retry is answered 409, never
            # sent to Vapi a second time.
            if self.metrics is not None:
                self.metrics.storage_errors.labels("ledger").inc()
            logger.exception(
                "recording an Idempotency-Key's outcome failed",
                extra={"fields": {"request_id": request_id}},
            )
