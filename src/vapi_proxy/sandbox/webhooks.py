"""Vapi → your server: choosing the URL, authenticating, delivering, and driving a call's events.

Precedence (Vapi facts §4.2): the assistant's `server` (overrides first), then the phone number's,
then the org's. Authentication (§4.4): bearer or HMAC credential by `credentialId`, legacy
`secret` as `X-Vapi-Secret`, then `server.headers` (which may override `Authorization`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from collections import deque
from typing import Any

import aiohttp
import orjson

from . import messages
from .calls import CallRecord
from .clock import Clock
from .settings import BearerCredential, HmacCredential, SandboxSettings, ServerConfig

DEFAULT_TIMEOUT = 20.0  # Server.timeoutSeconds default (Vapi facts §4.3)


def server_dict(server: ServerConfig | None) -> dict[str, Any] | None:
    if server is None:
        return None
    out = server.model_dump(exclude_none=True)
    if server.secret is not None:
        out["secret"] = server.secret.get_secret_value()
    return out


def pick_server(*candidates: Any) -> dict[str, Any] | None:
    """The first candidate that is a `Server` object with a `url`, in precedence order."""
    for candidate in candidates:
        if isinstance(candidate, dict) and isinstance(candidate.get("url"), str):
            return candidate
    return None


class WebhookSender:
    """Delivers server messages over one aiohttp session and remembers what happened."""

    def __init__(self, settings: SandboxSettings, clock: Clock) -> None:
        self._credentials: dict[str, BearerCredential | HmacCredential] = {
            c.id: c for c in settings.credentials
        }
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self.log: deque[dict[str, Any]] = deque(maxlen=settings.webhook_log_size)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        """Background tasks alive (call drivers); zero when no call has a server URL."""
        return len(self._tasks)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def sign(self, server: dict[str, Any], body: bytes) -> dict[str, str]:
        """Headers authenticating `body` for `server` (public so tests can compare)."""
        headers = {"Content-Type": "application/json"}
        secret = server.get("secret")
        if isinstance(secret, str):
            headers["X-Vapi-Secret"] = secret
        credential = self._credentials.get(str(server.get("credentialId")))
        if isinstance(credential, BearerCredential):
            token = credential.token.get_secret_value()
            prefix = "Bearer " if credential.bearerPrefixEnabled else ""
            headers[credential.headerName] = prefix + token
        elif isinstance(credential, HmacCredential):
            headers.update(self._hmac(credential, str(server["url"]), body))
        extra = server.get("headers")
        if isinstance(extra, dict):
            headers.update({str(k): str(v) for k, v in extra.items()})
        return headers

    def _hmac(self, cred: HmacCredential, url: str, body: bytes) -> dict[str, str]:
        now = self._clock.now()
        # Vapi does not document the unit (Vapi facts §8): seconds unless the credential says ms.
        stamp = str(int(now * 1000) if cred.timestampUnit == "ms" else int(now))
        message_id = f"msg_{uuid.uuid4().hex}"
        payload = (
            cred.payloadFormat.replace("{timestamp}", stamp)
            .replace("{method}", "POST")
            .replace("{url}", url)
            .replace("{svix-id}", message_id)
        )
        head, _, tail = payload.partition("{body}")
        signed = head.encode() + body + tail.encode() if "{body}" in payload else payload.encode()
        secret = cred.secretKey.get_secret_value()
        key = base64.b64decode(secret) if cred.secretIsBase64 else secret.encode()
        digest = hmac.new(key, signed, getattr(hashlib, cred.algorithm)).digest()
        if cred.signatureEncoding == "hex":
            signature = digest.hex()
        else:
            signature = base64.b64encode(digest).decode()
        headers = {cred.signatureHeader: cred.signaturePrefix + signature}
        if cred.includeTimestamp:
            headers[cred.timestampHeader] = stamp
        if cred.messageIdHeader:
            headers[cred.messageIdHeader] = message_id
        return headers

    async def deliver(
        self, server: dict[str, Any], payload: dict[str, Any], *, deadline: float | None = None
    ) -> tuple[int | None, Any]:
        """POST one message; returns (status or None on failure, parsed reply or None)."""
        body = orjson.dumps(payload)
        url = str(server["url"])
        limit = (
            deadline
            if deadline is not None
            else float(server.get("timeoutSeconds") or DEFAULT_TIMEOUT)
        )
        message = payload.get("message", {})
        entry: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "url": url,
            "type": message.get("type"),
            "callId": (message.get("call") or {}).get("id"),
            "status": message.get("status"),
            "sentAt": self._clock.now(),
            "responseStatus": None,
            "response": None,
            "error": None,
        }
        self.log.append(entry)
        started = time.monotonic()
        try:
            async with self._client().post(
                url,
                data=body,
                headers=self.sign(server, body),
                timeout=aiohttp.ClientTimeout(total=limit),
            ) as resp:
                raw = await resp.read()
                entry["responseStatus"] = resp.status
                try:
                    entry["response"] = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    entry["response"] = raw.decode("utf-8", "replace")[:2000]
        except TimeoutError:
            entry["error"] = f"timeout after {limit}s"
        except aiohttp.ClientError as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["elapsedSeconds"] = round(time.monotonic() - started, 4)
        return entry["responseStatus"], entry["response"]

    def drive(self, call: CallRecord) -> None:
        """Start sending this call's status-updates and end-of-call-report on the clock."""
        if call.server is None:
            return
        call.driver_wakeup = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._drive(call, call.server))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drive(self, call: CallRecord, server: dict[str, Any]) -> None:
        sent: set[str] = set()
        wakeup: asyncio.Event = call.driver_wakeup
        while True:
            pending = [s for s in call.transitions() if s[1] not in sent]
            if not pending:
                break
            at, status, reason = pending[0]
            if self._clock.now() < at:
                await _first(self._clock.sleep_until(at), wakeup)
                wakeup.clear()
                continue  # an early end may have changed the timeline; look again
            sent.add(status)
            await self.deliver(server, messages.status_update(call, status, reason, at))
        await self.deliver(server, messages.end_of_call_report(call, self._clock.now()))


async def _first(sleep: Any, event: asyncio.Event) -> None:
    """Wait for the sleep or the event, whichever comes first."""
    tasks = {asyncio.ensure_future(sleep), asyncio.ensure_future(event.wait())}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
