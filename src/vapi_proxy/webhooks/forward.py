"""The proxy → app leg: signed copies of verified events through a durable outbox, and relayed
answers for request types (tool-calls, …) within a deadline.

Every delivery to the app carries the raw Vapi body and three headers:

    X-Vapi-Proxy-Event-Id: <id, stable across retries: dedupe on it>
    X-Vapi-Proxy-Event-Type: <message.type>
    X-Vapi-Proxy-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

Events wait in the ledger's `webhook_outbox` table until the app answers 2xx; a background
task drains it with exponential backoff (full jitter) and parks an event after `max_attempts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson

from vapi_proxy import __version__
from vapi_proxy.ledger.records import OutboxEntry, OutboxItem
from vapi_proxy.ledger.store import Ledger
from vapi_proxy.webhooks.config import ForwardSettings, RespondSettings
from vapi_proxy.webhooks.stats import WebhookStats

logger = logging.getLogger("vapi_proxy.webhooks.forward")

SIGNATURE_HEADER = "X-Vapi-Proxy-Signature"
EVENT_ID_HEADER = "X-Vapi-Proxy-Event-Id"
EVENT_TYPE_HEADER = "X-Vapi-Proxy-Event-Type"


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The `X-Vapi-Proxy-Signature` value for `body` at `timestamp` (unix seconds)."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(
    secrets: Sequence[bytes], header: str, body: bytes, *, now: float, tolerance: float = 300
) -> bool:
    """How an app checks a delivery (also used by the tests): any secret, within tolerance."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    # Plain digits only, as `sign` writes them: int() also reads "+1", "1_0" and other scripts'
    # digits, so one signature would have many spellings.
    text = parts.get("t", "")
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        return False
    stamp = int(text)
    if abs(now - stamp) > tolerance:
        return False
    ok = False
    for secret in secrets:
        ok |= hmac.compare_digest(sign(secret, body, stamp), f"t={stamp},v1={parts.get('v1', '')}")
    return ok


class DeliveryError(Exception):
    """The app did not take the delivery (connection failure, timeout, non-2xx)."""


class Forwarder:
    """Signs and sends to the app; owns the outbox drain and the request relay."""

    def __init__(
        self,
        forward: ForwardSettings,
        respond: RespondSettings,
        ledger: Ledger,
        stats: WebhookStats,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = forward
        self.respond = respond
        self._ledger = ledger
        self._stats = stats
        self._clock = clock
        self._rng = rng
        secrets = forward.secrets
        self._secret = secrets[0].get_secret_value().encode() if secrets else None
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return bool(self.settings.targets)

    def outbox_items(self, event_id: str, mtype: str, body: bytes) -> list[OutboxItem]:
        """Rows for every target that takes this type."""
        return [
            OutboxItem(event_id, t.url, mtype, body)
            for t in self.settings.targets
            if not t.types or mtype in t.types
        ]

    def notify(self) -> None:
        """New rows were written: drain now instead of at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(limit=50),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, event_id: str, mtype: str, body: bytes) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"vapi-proxy/{__version__}",
            EVENT_ID_HEADER: event_id,
            EVENT_TYPE_HEADER: mtype,
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body, int(self._clock()))
        return headers

    async def _post(self, url: str, event_id: str, mtype: str, body: bytes, limit: float) -> bytes:
        if self._session is None:
            raise DeliveryError("forwarder not started")
        try:
            async with self._session.post(
                url,
                data=body,
                headers=self._headers(event_id, mtype, body),
                timeout=aiohttp.ClientTimeout(total=limit),
                allow_redirects=False,
            ) as resp:
                raw = await resp.content.read(4 * 1024 * 1024)
                if not 200 <= resp.status < 300:
                    raise DeliveryError(f"HTTP {resp.status}")
                return raw
        except TimeoutError:
            raise DeliveryError(f"timeout after {limit:g}s") from None
        except aiohttp.ClientError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}"[:300]) from None

    # --- request relay ----------------------------------------------------------------------

    async def relay(self, event_id: str, mtype: str, body: bytes, deadline: float) -> Any:
        """The app's JSON answer to a request-type message; raises DeliveryError if it fails,
        is late or is not JSON."""
        url = self.respond.url
        if url is None:
            raise DeliveryError("no respond.url configured")
        raw = await self._post(url, event_id, mtype, body, deadline)
        try:
            return orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            raise DeliveryError("the app's answer is not JSON") from None

    # --- outbox -----------------------------------------------------------------------------

    def _backoff(self, attempts: int) -> float:
        ceiling: float = min(
            self.settings.retry_max_seconds,
            self.settings.retry_base_seconds * 2.0 ** (attempts - 1),
        )
        # Full jitter over the upper half: spreads retries yet never retries immediately.
        return ceiling * (0.5 + 0.5 * self._rng())

    async def _deliver(self, entry: OutboxEntry, now: datetime) -> None:
        try:
            await self._post(
                entry.target, entry.event_id, entry.type, entry.body, self.settings.timeout_seconds
            )
        except DeliveryError as exc:
            self._stats.forward_failures += 1
            if entry.attempts >= self.settings.max_attempts:
                self._stats.forward_parked += 1
                logger.error(
                    "forwarding gave up; event parked in the outbox",
                    extra={"fields": _fields(entry, str(exc))},
                )
                await self._ledger.outbox_failed(entry.id, error=str(exc), retry_at=None)
            else:
                retry = now + timedelta(seconds=self._backoff(entry.attempts))
                logger.warning("forwarding failed", extra={"fields": _fields(entry, str(exc))})
                await self._ledger.outbox_failed(entry.id, error=str(exc), retry_at=retry)
            return
        self._stats.forwarded += 1
        await self._ledger.outbox_delivered(entry.id)

    async def drain_once(self, now: float | None = None) -> int:
        """Deliver every due row once (in batches); returns how many were attempted."""
        moment = datetime.fromtimestamp(self._clock() if now is None else now, UTC)
        lease = self.settings.timeout_seconds * 2 + 5
        total = 0
        for _ in range(100):  # bounded: at most 100 batches per round
            entries = await self._ledger.outbox_claim(
                limit=self.settings.batch_size, lease_seconds=lease, now=moment
            )
            if not entries:
                break
            total += len(entries)
            await asyncio.gather(*(self._deliver(e, moment) for e in entries))
        return total

    async def run(self) -> None:
        """Background drain: on notification or every `poll_seconds`; failures are logged."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.poll_seconds)
            self._wake.clear()
            try:
                await self.drain_once()
            except Exception:
                logger.exception("outbox drain failed; retrying at the next poll")


def _fields(entry: OutboxEntry, error: str) -> dict[str, Any]:
    return {
        "event_id": entry.event_id,
        "type": entry.type,
        "target": entry.target,
        "attempt": entry.attempts,
        "error": error,
    }
