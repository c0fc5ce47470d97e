"""Everything one simulator instance knows, reachable as `app.state.sandbox`.

Built once from `SandboxSettings` and passed to every handler; nothing lives in module globals.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from .auth import Authenticator
from .calls import CallStore, iso
from .clock import Clock, SystemClock
from .faults import FaultBook
from .recorder import RequestRecorder
from .schemas import Validator, load_validator
from .settings import SandboxSettings
from .webhooks import WebhookSender


def uuid7() -> str:
    """A time-ordered UUIDv7, like Vapi's recent call ids (Vapi facts §2.1)."""
    ms = int(time.time() * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class SandboxState:
    """The simulated org: keys, assistants, squads, workflows, numbers, calls, chats, logs and
    faults."""

    def __init__(
        self,
        settings: SandboxSettings,
        clock: Clock | None = None,
        validator: Validator | None = None,
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.validator = validator or load_validator()
        self.auth = Authenticator(settings)
        self.calls = CallStore(settings.max_calls)
        self.chats: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, str] = {}  # sessionId -> id of its latest chat
        self.assistants: dict[str, dict[str, Any]] = {}
        for seeded in settings.assistants:
            self.assistants[seeded.id] = self._assistant_object(
                seeded.model_dump(exclude_none=True), seeded.id
            )
        # Squads and workflows are only read back (`GET /squad/{id}`, `GET /workflow/{id}`).
        self.squads: dict[str, dict[str, Any]] = {
            seeded.id: self._assistant_object(seeded.model_dump(exclude_none=True), seeded.id)
            for seeded in settings.squads
        }
        self.workflows: dict[str, dict[str, Any]] = {
            seeded.id: self._assistant_object(seeded.model_dump(exclude_none=True), seeded.id)
            for seeded in settings.workflows
        }
        self.phone_numbers: dict[str, dict[str, Any]] = {}
        for number in settings.phone_numbers:
            entry = number.model_dump(exclude_none=True, mode="json")
            if number.server is not None and number.server.secret is not None:
                entry["server"]["secret"] = number.server.secret.get_secret_value()
            entry["orgId"] = settings.org_id
            self.phone_numbers[number.id] = entry
        self.webhooks = WebhookSender(settings, self.clock)
        self.faults = FaultBook(list(settings.faults))
        self.requests = RequestRecorder(
            enabled=settings.request_log_enabled, size=settings.request_log_size
        )

    def _assistant_object(self, config: dict[str, Any], object_id: str) -> dict[str, Any]:
        """A saved object as Vapi returns it: the config plus id, org and timestamps."""
        now = iso(self.clock.now())
        return {
            **config,
            "id": object_id,
            "orgId": self.settings.org_id,
            "createdAt": now,
            "updatedAt": now,
        }

    def add_assistant(self, config: dict[str, Any]) -> dict[str, Any]:
        assistant = self._assistant_object(config, str(uuid.uuid4()))
        self.assistants[assistant["id"]] = assistant
        return assistant

    def find_assistant(self, assistant_id: str) -> dict[str, Any] | None:
        """A saved assistant; with `accept_any_assistant_id`, unknown ids become blank ones."""
        found = self.assistants.get(assistant_id)
        if found is None and self.settings.accept_any_assistant_id:
            found = self._assistant_object({}, assistant_id)
        return found

    def add_chat(self, chat: dict[str, Any]) -> None:
        self.chats[chat["id"]] = chat
        if len(self.chats) > self.settings.max_chats:
            del self.chats[next(iter(self.chats))]
        session = chat.get("sessionId")
        if session is not None:
            self.sessions.pop(session, None)  # re-insert: the dict stays oldest-first
            self.sessions[session] = chat["id"]
            if len(self.sessions) > self.settings.max_chats:
                del self.sessions[next(iter(self.sessions))]

    async def close(self) -> None:
        await self.webhooks.close()
