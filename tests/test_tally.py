"""Counters that report each increase: what the metrics layer listens to."""

from __future__ import annotations

from dataclasses import dataclass, field

from vapi_proxy.auth.base import AuthStats
from vapi_proxy.metrics import Metrics
from vapi_proxy.tally import Tallies, Tally
from vapi_proxy.webhooks.stats import WebhookStats


@dataclass
class Sample(Tallies):
    plain: int = 0
    by_kind: Tally = field(default_factory=Tally)


def test_every_increase_is_reported_once_and_nothing_else() -> None:
    heard: list[tuple[str, str, int]] = []
    stats = Sample()
    stats.plain += 1  # before listening: not reported
    stats.listen(lambda name, key, n: heard.append((name, key, n)))
    stats.plain += 1
    stats.plain += 3
    stats.by_kind["a"] += 1
    stats.by_kind["a"] += 1
    stats.by_kind.update(["b", "b"])
    stats.by_kind["a"] = 0  # a reset is not an event
    assert heard == [
        ("plain", "", 1),
        ("plain", "", 3),
        ("by_kind", "a", 1),
        ("by_kind", "a", 1),
        ("by_kind", "b", 1),
        ("by_kind", "b", 1),
    ]
    assert stats.plain == 5
    assert dict(stats.by_kind) == {"a": 0, "b": 2}


def _sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_metrics_record_component_events_as_they_happen() -> None:
    metrics = Metrics()
    auth, hooks = AuthStats(), WebhookStats()
    metrics.listen(auth, hooks)
    auth.failures["bad_api_key"] += 1
    auth.successes["jwt"] += 2
    auth.jwks_refreshes += 1
    hooks.rejected["hmac_expired"] += 1
    hooks.by_type["status-update"] += 1
    hooks.duplicates += 1
    hooks.assistant_requests["profile"] += 1
    hooks.relayed["ok"] += 1
    hooks.received += 1  # not a metric of its own
    auth_total = "vapi_proxy_auth_total"
    assert _sample(metrics, auth_total, {"result": "failure", "reason": "bad_api_key"}) == 1
    assert _sample(metrics, auth_total, {"result": "success", "reason": "jwt"}) == 2
    assert _sample(metrics, "vapi_proxy_jwks_fetches_total", {"outcome": "refreshed"}) == 1
    assert _sample(metrics, "vapi_proxy_webhook_rejections_total", {"reason": "hmac_expired"}) == 1
    assert _sample(metrics, "vapi_proxy_webhook_events_total", {"type": "status-update"}) == 1
    outcomes = "vapi_proxy_webhook_outcomes_total"
    assert _sample(metrics, outcomes, {"outcome": "duplicates"}) == 1
    assert _sample(metrics, outcomes, {"outcome": "assistant_request_profile"}) == 1
    assert _sample(metrics, outcomes, {"outcome": "relayed_ok"}) == 1


def test_webhook_message_types_stay_a_bounded_label_set() -> None:
    # With `allow_unverified`, whoever posts chooses `message.type`.
    metrics = Metrics()
    hooks = WebhookStats()
    metrics.listen(webhook_stats=hooks)
    hooks.by_type["status-update"] += 1
    for n in range(500):
        hooks.by_type[f"made-up-{n}"] += 1
    hooks.by_type["Robert'); DROP TABLE"] += 1
    family = next(f for f in metrics.registry.collect() if f.name == "vapi_proxy_webhook_events")
    types = {s.labels["type"] for s in family.samples if s.name.endswith("_total")}
    assert len(types) <= 65
    assert "status-update" in types
    assert "other" in types
    total = sum(s.value for s in family.samples if s.name.endswith("_total"))
    assert total == 502
