"""Prometheus metrics: one registry per app, labels bounded (routes, profiles, kinds — no users).

Counters the request path owns are incremented where things happen (the edge, the upstream
boundary, refusals). Components that keep their own counters (auth, webhooks) are listened to
(`listen()`, tally.py), so their events are recorded when they happen too. Under `serve`,
every worker writes its values to files in `PROMETHEUS_MULTIPROC_DIR` (set by the supervisor,
kept across reloads) and a scrape sums all of them, including those of replaced workers: every
event counts once, on every scrape, whichever worker answers it.
"""

from __future__ import annotations

import os
import re
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client import values as _values

from vapi_proxy.tally import Tallies

_WEBHOOK_OUTCOMES = frozenset(
    {
        "duplicates",
        "unknown_calls",
        "adopted_calls",
        "settled",
        "errors",
        "forwarded",
        "forward_failures",
        "forward_parked",
    }
)
MAX_MESSAGE_TYPES = 64
_MESSAGE_TYPE = re.compile(r"[a-z][a-z0-9.\-]{0,63}")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _ProcessId:
    """This process's id, renewed in a forked child: what prometheus_client's file-backed
    values compare on every write to notice a fork (it calls `os.getpid()`, a system call,
    each time: measured here, most of the cost of an increment)."""

    def __init__(self) -> None:
        self.value = os.getpid()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self.value = os.getpid()

    def __call__(self) -> int:
        return self.value


def _cheaper_multiprocess_values() -> None:
    """Under `serve` (PROMETHEUS_MULTIPROC_DIR set before the worker imported prometheus_client)
    every value is kept in this process's file; make the same values with the pid remembered.
    Done at import, before any value exists, so every value shares one set of files."""
    if _values.ValueClass is not _values.MutexValue:
        _values.ValueClass = _values.MultiProcessValue(_ProcessId())  # type: ignore[no-untyped-call]


_cheaper_multiprocess_values()


class Metrics:
    """The proxy's metrics; `render()` gives the Prometheus text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "vapi_proxy_requests_total",
            "HTTP requests answered, by route template, method, status and profile.",
            ["route", "method", "status", "profile"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "vapi_proxy_request_duration_seconds",
            "Time to answer a request, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "vapi_proxy_upstream_duration_seconds",
            "Time Vapi took to answer, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "vapi_proxy_upstream_errors_total",
            "Vapi requests that failed, by kind (connect, timeout, disconnect, status_4xx, "
            "status_5xx, status_429, key_rejected, bad_reply).",
            ["kind"],
            registry=r,
        )
        self.upstream_refusals = Counter(
            "vapi_proxy_upstream_refusals_total",
            "Vapi's non-2xx answers, by Vapi endpoint, profile, Vapi's status and cause "
            "(config: the profile or setup is wrong; key: Vapi rejected the private key; "
            "caller: the caller's own input; busy: Vapi's 429/5xx).",
            ["route", "profile", "status", "cause"],
            registry=r,
        )
        self.limit_refusals = Counter(
            "vapi_proxy_limit_refusals_total",
            "Requests refused by a limit, by limit kind (rate, quota, concurrency, minutes, usd) "
            "and request kind (call, chat).",
            ["limit", "kind"],
            registry=r,
        )
        self.admissions = Counter(
            "vapi_proxy_admissions_total",
            "Creations (calls, chat turns) by request kind and outcome (refused, created, "
            "not_sent, maybe_sent, cancelled).",
            ["kind", "outcome"],
            registry=r,
        )
        self.degraded_admissions = Counter(
            "vapi_proxy_degraded_admissions_total",
            "Creations admitted uncounted because the limits store was down and the rules fail "
            "open, by request kind.",
            ["kind"],
            registry=r,
        )
        self.storage_errors = Counter(
            "vapi_proxy_storage_errors_total",
            "Failures of the ledger or the limits store, by store.",
            ["store"],
            registry=r,
        )
        self.live_calls = Gauge(
            "vapi_proxy_live_calls",
            "Calls the ledger holds as not yet ended (shared by every worker and replica).",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.auth_results = Counter(
            "vapi_proxy_auth_total",
            "Authentication outcomes, by method for successes and by reason for failures.",
            ["result", "reason"],
            registry=r,
        )
        self.jwks_fetches = Counter(
            "vapi_proxy_jwks_fetches_total",
            "JWKS fetches, by outcome (refreshed, failed).",
            ["outcome"],
            registry=r,
        )
        self.webhook_events = Counter(
            "vapi_proxy_webhook_events_total",
            "Verified webhook deliveries, by message type.",
            ["type"],
            registry=r,
        )
        self.webhook_rejections = Counter(
            "vapi_proxy_webhook_rejections_total",
            "Webhook deliveries refused by verification, by reason.",
            ["reason"],
            registry=r,
        )
        self.webhook_outcomes = Counter(
            "vapi_proxy_webhook_outcomes_total",
            "What verified deliveries led to (duplicate, unknown_call, settled, forwarded, "
            "forward_failed, error, ...).",
            ["outcome"],
            registry=r,
        )
        self._event_children: dict[tuple[str, ...], Any] = {}
        self._message_types: set[str] = set()
        # Label children resolved once per label set: `labels()` on every request was a
        # measurable share of the request path.
        self._request_children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self._upstream_children: dict[str, Any] = {}

    # -- the request path ------------------------------------------------------------------------

    def count_request(self, route: str, method: str, status: int, profile: str) -> Any:
        """Count an answered request; the edge calls it as the response starts, so a scrape
        made after the client has its reply sees it. Returns the duration histogram's child,
        which the edge observes when the response ends."""
        key = (route, method, str(status), profile)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.request_seconds.labels(route))
            self._request_children[key] = children
        children[0].inc()
        return children[1]

    def observe_upstream(self, endpoint: str, seconds: float | None, error: str | None) -> None:
        """One request to Vapi (timed), or a failure after it was timed (`seconds` None: a
        stream that broke off is counted as an error, not as a second request)."""
        if seconds is not None:
            child = self._upstream_children.get(endpoint)
            if child is None:
                child = self._upstream_children[endpoint] = self.upstream_seconds.labels(endpoint)
            child.observe(seconds)
        if error is not None:
            self.upstream_errors.labels(error).inc()

    def count_admission(self, kind: str, outcome: str) -> None:
        """One admission's outcome (every call or chat turn has one)."""
        self._child(self.admissions, kind, outcome).inc()

    def observe_refusal(self, route: str, profile: str, status: str, cause: str) -> None:
        self.upstream_refusals.labels(route, profile, status, cause).inc()

    # -- components' own counters --------------------------------------------------------------

    def listen(
        self, auth_stats: Tallies | None = None, webhook_stats: Tallies | None = None
    ) -> None:
        """Record every increase of the components' counters as it happens (see tally.py)."""
        if auth_stats is not None:
            auth_stats.listen(self._auth_event)
        if webhook_stats is not None:
            webhook_stats.listen(self._webhook_event)

    def _child(self, counter: Counter, *labels: str) -> Any:
        key = (counter._name, *labels)
        child = self._event_children.get(key)
        if child is None:
            child = self._event_children[key] = counter.labels(*labels)
        return child

    def _message_type(self, name: str) -> str:
        """A webhook message type as a label: Vapi has a few dozen; anything past
        `MAX_MESSAGE_TYPES` distinct names, or not shaped like one, is `other` (with
        `allow_unverified`, whoever posts chooses the type, and labels must stay bounded)."""
        if name in self._message_types:
            return name
        if len(self._message_types) >= MAX_MESSAGE_TYPES or not _MESSAGE_TYPE.fullmatch(name):
            return "other"
        self._message_types.add(name)
        return name

    def _auth_event(self, field: str, key: str, increase: int) -> None:
        if field == "successes":
            self._child(self.auth_results, "success", key).inc(increase)
        elif field == "failures":
            self._child(self.auth_results, "failure", key).inc(increase)
        elif field == "jwks_refreshes":
            self._child(self.jwks_fetches, "refreshed").inc(increase)
        elif field == "jwks_fetch_failures":
            self._child(self.jwks_fetches, "failed").inc(increase)

    def _webhook_event(self, field: str, key: str, increase: int) -> None:
        if field == "by_type":
            self._child(self.webhook_events, self._message_type(key)).inc(increase)
        elif field == "rejected":
            self._child(self.webhook_rejections, key).inc(increase)
        elif field == "assistant_requests":
            self._child(self.webhook_outcomes, f"assistant_request_{key}").inc(increase)
        elif field == "relayed":
            self._child(self.webhook_outcomes, f"relayed_{key}").inc(increase)
        elif field in _WEBHOOK_OUTCOMES:
            self._child(self.webhook_outcomes, field).inc(increase)

    # -- exposition ----------------------------------------------------------------------------

    def render(self) -> bytes:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            # Several workers: every process writes its values to files there; sum them.
            registry = CollectorRegistry()
            _multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
