"""The Grafana dashboard and the Prometheus alert rules in deploy/ query only metrics the proxy
really exposes: the app runs in-process, gets real traffic, and its /metrics is scraped."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
import yaml

from tests.support.dockerfile import ROOT
from tests.support.http import post
from tests.support.proxy import ProxyFactory

DASHBOARD = ROOT / "deploy" / "grafana" / "vapi-proxy.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
# Series Prometheus itself makes for every scrape target, not the proxy's.
PROMETHEUS_OWN = {"up"}
# Labels Prometheus adds at scrape time, and the histogram bucket label.
TARGET_LABELS = {"job", "instance", "le"}
_NOT_METRICS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
}
_IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


def _blank_strings(expr: str) -> str:
    return re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels left out)."""
    text = _blank_strings(expr)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables ($job, $__rate_interval)
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    names = set()
    # A name not preceded by a word character, digit or dot (1e3, 0.95) nor followed by `(`.
    for match in re.finditer(rf"(?<![\w:.])({_IDENT})\b(?!\s*\()", text):
        if match[1].lower() not in _NOT_METRICS:
            names.add(match[1])
    return names


def label_names(expr: str) -> set[str]:
    """Label names an expression matches on or groups by."""
    text = _blank_strings(expr)
    found = set()
    for inner in re.findall(r"\{([^{}]*)\}", text):
        found.update(re.findall(rf"({_IDENT})\s*(?:=~|!~|!=|=)", inner))
    for inner in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^()]*)\)", text):
        found.update(part.strip() for part in inner.split(",") if part.strip())
    return found


@pytest.mark.parametrize(
    ("expr", "metrics", "labels"),
    [
        ('up{job="x"} == 0', {"up"}, {"job"}),
        (
            'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{route!="x"}[5m])))',
            {"a_bucket"},
            {"le", "route"},
        ),
        (
            "sum(rate(a_total[$__rate_interval])) / sum(rate(b_total[5m] offset 1h)) > 1e3",
            {"a_total", "b_total"},
            set(),
        ),
        (
            'increase(a_total{kind="rate(x)"}[5m]) > 0 and on (job) b',
            {"a_total", "b"},
            {"kind", "job"},
        ),
        ("sum without (instance) (c:recorded:rate5m) * 2", {"c:recorded:rate5m"}, {"instance"}),
        ('max(a{job=~"$job"}) or vector(0)', {"a"}, {"job"}),
    ],
)
def test_promql_names_are_parsed(expr: str, metrics: set[str], labels: set[str]) -> None:
    assert metric_names(expr) == metrics
    assert label_names(expr) == labels


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = []
    for panel in dashboard["panels"]:
        queries.extend(target["expr"] for target in panel["targets"])
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str):
            # label_values(metric, label): the metric is the first argument.
            match = re.match(rf"label_values\(\s*({_IDENT})", query)
            if match:
                queries.append(match[1])
    return queries


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"] == "vapi-proxy"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}, panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "job"]


def test_alert_rules_are_well_formed() -> None:
    rules = alert_rules()
    assert len(rules) >= 5
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        # Balanced brackets: a cheap guard against a truncated expression.
        expr = _blank_strings(rule["expr"])
        for left, right in ("()", "{}", "[]"):
            assert expr.count(left) == expr.count(right), rule["alert"]


def parse_exposition(text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """Families by name with their type, and every sample name with the label names it has."""
    families: dict[str, str] = {}
    samples: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            families[name] = kind
        elif line and not line.startswith("#"):
            name = re.match(_IDENT, line)
            assert name is not None, line
            labels = set(re.findall(r'(\w+)="', line.split("}")[0])) if "{" in line else set()
            samples.setdefault(name[0], set()).update(labels)
    return families, samples


def exposed(name: str, families: dict[str, str]) -> bool:
    """Whether `name` is a series the exposition defines, with or without samples yet."""
    if name in families:
        return True
    for suffix in ("_bucket", "_count", "_sum"):
        base = name.removesuffix(suffix)
        if base != name and families.get(base) == "histogram":
            return True
    return False


@pytest.fixture
def metrics_text(make_proxy: ProxyFactory, user_key: str) -> str:
    """/metrics of an in-process proxy after calls, a quota refusal and a bad credential."""

    def limited(config: dict[str, Any]) -> None:
        config["limits"] = {
            "backend": "memory://",
            "rules": [{"name": "d", "quota": {"per_day": 1}}],
        }

    server = make_proxy(limited)
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 201
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 429
    post(server, {"assistantId": "sales-coach"}, "wrong-token-abcdefghijklmnop")
    return httpx.get(server.url + "/metrics").text


def test_every_queried_metric_and_label_exists(metrics_text: str) -> None:
    families, samples = parse_exposition(metrics_text)
    # The traffic above makes these labelled series exist, so their labels can be checked.
    for name in (
        "vapi_proxy_requests_total",
        "vapi_proxy_request_duration_seconds_bucket",
        "vapi_proxy_upstream_duration_seconds_bucket",
        "vapi_proxy_limit_refusals_total",
        "vapi_proxy_auth_total",
        "vapi_proxy_live_calls",
    ):
        assert name in samples, f"no {name} series after traffic"

    expressions = [("dashboard", q) for q in dashboard_queries()]
    expressions += [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    checked: set[str] = set()
    for where, expr in expressions:
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        for name in names - PROMETHEUS_OWN:
            assert exposed(name, families), f"{where}: {name} is not in the proxy's /metrics"
            checked.add(name)
        # Every label used must be on a series the expression selects (when series exist).
        present = set().union(*(samples.get(n, set()) for n in names))
        if present:
            missing = label_names(expr) - TARGET_LABELS - present
            assert not missing, f"{where}: labels {sorted(missing)} are not on {sorted(names)}"
    # Both files together cover every metric family the proxy exports (bar *_created).
    exported = {n for n, kind in families.items() if not n.endswith("_created")}
    covered = {n.removesuffix("_bucket") for n in checked}
    assert exported <= covered, f"not on the dashboard or in an alert: {sorted(exported - covered)}"


def test_checker_notices_a_metric_the_proxy_lacks(metrics_text: str) -> None:
    # Guards the test above against a parser that finds nothing to check.
    families, _ = parse_exposition(metrics_text)
    names = metric_names('sum(rate(vapi_proxy_no_such_thing_total{route="x"}[5m]))')
    assert names == {"vapi_proxy_no_such_thing_total"}
    assert not exposed("vapi_proxy_no_such_thing_total", families)
    assert exposed("vapi_proxy_request_duration_seconds_count", families)
