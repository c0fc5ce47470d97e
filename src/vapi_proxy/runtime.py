"""The proxy's runtime: everything a request needs, built once from `Settings` and passed to the
routes (which import this module, never `app.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from vapi_proxy.admission import Admissions
from vapi_proxy.auth.chain import AuthChain
from vapi_proxy.console.blocks import BlockList
from vapi_proxy.console.store import ConsoleStore
from vapi_proxy.ledger.store import Ledger
from vapi_proxy.limits.base import Limiter
from vapi_proxy.limits.registry import create_limiter
from vapi_proxy.metrics import Metrics
from vapi_proxy.policy.compiled import CompiledProfile, compile_profiles
from vapi_proxy.settings import ConfigError, Secrets, Settings
from vapi_proxy.upstream.client import UpstreamClient
from vapi_proxy.upstream.replies import ReplyReader
from vapi_proxy.webhooks import setup as webhook_setup
from vapi_proxy.webhooks.forward import Forwarder
from vapi_proxy.webhooks.receiver import WebhookReceiver
from vapi_proxy.webhooks.stats import WebhookStats, WebhookTallies

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    # Imported at run time only when tracing is on: without it nothing imports OpenTelemetry.
    from vapi_proxy.tracing import Tracing

logger = logging.getLogger("vapi_proxy.runtime")
OUTBOX_KEEP_DAYS = 7
_NO_SPAN = contextlib.nullcontext()


@dataclass
class Runtime:
    """Everything a request needs, built once from `Settings` and passed to the routes."""

    settings: Settings
    secrets: Secrets
    auth: AuthChain
    upstream: UpstreamClient
    limiter: Limiter
    ledger: Ledger
    replies: ReplyReader
    profiles: dict[str, CompiledProfile] = field(default_factory=dict)
    webhook_server: dict[str, Any] | None = None
    webhooks: WebhookReceiver | None = None
    forwarder: Forwarder | None = None
    webhook_stats: WebhookStats = field(default_factory=WebhookStats)
    metrics: Metrics = field(default_factory=Metrics)
    tracing: Tracing | None = None
    """Set when `tracing.enabled`: the components above are then traced in place."""
    blocks: BlockList = field(init=False)
    admissions: Admissions = field(init=False)
    webhook_tallies: WebhookTallies = field(init=False)
    """The console's webhook intake counters, kept in the ledger for every worker and replica."""

    def __post_init__(self) -> None:
        self.admissions = Admissions(self.limiter, self.ledger, self.counting)
        # The console's identity blocks, checked wherever a call or chat's identity is known.
        self.blocks = BlockList(
            ConsoleStore(self.ledger.database),
            refresh_seconds=self.settings.admin.block_refresh_seconds,
        )
        # Listens beside the metrics (which `build` set first): counts in memory, written to
        # the ledger every few seconds.
        self.webhook_tallies = WebhookTallies(self.ledger.database)
        self.webhook_stats.also_listen(self.webhook_tallies.record)

    @property
    def counting(self) -> Metrics | None:
        """The metrics to record into, or None when `metrics.enabled` is off: then nothing on
        the request path touches a metric (no per-request work for a disabled feature)."""
        return self.metrics if self.settings.metrics.enabled else None

    @classmethod
    def build(cls, settings: Settings, secrets: Secrets) -> Runtime:
        if secrets.vapi_api_key is None:
            raise ConfigError(["VAPI_API_KEY: not set (or set VAPI_API_KEY_FILE)"])
        key = secrets.vapi_api_key
        upstream = UpstreamClient(
            settings.vapi.base_url,
            key.get_secret_value,
            connect_timeout=settings.vapi.connect_timeout_seconds,
            timeout=settings.vapi.timeout_seconds,
            pool_size=settings.vapi.pool_size,
            max_response_bytes=settings.vapi.max_response_bytes,
        )
        metrics = Metrics()
        counting = metrics if settings.metrics.enabled else None
        if counting is not None:
            upstream.observer = counting.observe_upstream
        url = webhook_setup.webhook_url(settings.public_url, settings.webhook_path)
        webhook_server = webhook_setup.webhook_server(settings.webhooks, url)
        try:
            ledger = Ledger.from_url(settings.ledger.url, timeout=settings.ledger.timeout_seconds)
            # Limits in the ledger's own database share its engine and writer: two engines on
            # one SQLite file would meet in SQLite's busy handler, which sleeps.
            backend = settings.limits.backend
            same_database = backend.startswith("ledger:") or backend == settings.ledger.url
            limiter = create_limiter(
                settings.limits, database=ledger.database if same_database else None
            )
        except ValueError as exc:
            raise ConfigError([f"limits.backend or ledger.url: {exc}"]) from None
        profiles = compile_profiles(settings.profiles)
        hooks = webhook_setup.build(
            settings.webhooks,
            url=url or settings.webhook_path,
            profiles=profiles,
            limiter=limiter,
            ledger=ledger,
            server=webhook_server,
            metrics=counting,
        )
        auth = AuthChain.from_settings(settings.auth)
        # Auth and webhook events reach the metrics as they happen, in this worker.
        if counting is not None:
            counting.listen(auth.stats, hooks.stats)
        tracing = None
        if settings.tracing.enabled:
            from vapi_proxy import tracing as otel  # here: only when tracing is on

            tracing = otel.install(
                settings.tracing, auth=auth, limiter=limiter, ledger=ledger, upstream=upstream
            )
        return cls(
            settings=settings,
            secrets=secrets,
            auth=auth,
            upstream=upstream,
            limiter=limiter,
            ledger=ledger,
            replies=ReplyReader(profiles, counting.observe_refusal if counting else None),
            profiles=profiles,
            webhook_server=webhook_server,
            webhooks=hooks.receiver,
            forwarder=hooks.forwarder,
            webhook_stats=hooks.stats,
            metrics=metrics,
            tracing=tracing,
        )

    def instrument(self, app: ASGIApp) -> ASGIApp:
        """`app` with one server span per request when tracing is on; `app` itself otherwise
        (the untraced path gains nothing per request)."""
        if self.tracing is None:
            return app
        traced = self.tracing.wrap_app(app)
        traced.runtime = self  # type: ignore[attr-defined]
        return traced

    def span(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """A span named `name` under the request's for a step that is a function rather than a
        component (the policy): a shared no-op when tracing is off."""
        return _NO_SPAN if self.tracing is None else self.tracing.span(name)

    async def start(self) -> None:
        await self.ledger.start(
            auto_migrate=self.settings.ledger.auto_migrate,
            jwt_issuers=self.settings.auth.jwt_issuers,
        )
        await self.upstream.start()
        await self.auth.start()
        if self.forwarder is not None:
            await self.forwarder.start()
        self.webhook_tallies.start()

    async def aclose(self) -> None:
        await self.webhook_tallies.aclose()  # what this worker counted since its last write
        if self.forwarder is not None:
            await self.forwarder.aclose()
        await self.auth.aclose()
        await self.upstream.aclose()
        await self.limiter.aclose()
        await self.ledger.aclose()
        if self.tracing is not None:
            await self.tracing.aclose()

    async def maintain(self, interval: float = 30.0) -> None:
        """Background upkeep: free slots of calls that never reported their end, drop expired
        idempotency keys and week-old delivered webhook forwards. Failures are logged and retried
        on the next round."""
        while True:
            await asyncio.sleep(interval)
            try:
                freed = await self.limiter.expire()
                if freed:
                    logger.info("expired call slots", extra={"fields": {"freed": freed}})
                await self.ledger.idempotency_purge()
                if self.forwarder is not None and self.forwarder.enabled:
                    # Delivered forwards are kept a week for audit, then dropped.
                    await self.ledger.outbox_purge(
                        before=datetime.now(UTC) - timedelta(days=OUTBOX_KEEP_DAYS)
                    )
            except Exception:
                logger.exception("maintenance round failed")
