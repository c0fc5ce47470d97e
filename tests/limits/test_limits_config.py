"""The limits settings: the documented YAML parses, every field is documented, mistakes fail."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from vapi_proxy.limits.config import (
    BudgetLimit,
    LimitRule,
    LimitsSettings,
    QuotaLimit,
    RateLimit,
    RuleMatch,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "limits.md"
MODELS: list[type[BaseModel]] = [
    LimitsSettings,
    LimitRule,
    RuleMatch,
    RateLimit,
    QuotaLimit,
    BudgetLimit,
]


def test_documented_example_is_valid() -> None:
    block = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None
    settings = LimitsSettings.model_validate(yaml.safe_load(block.group(1))["limits"])
    assert settings.time_zone == "Europe/Paris"
    assert [r.name for r in settings.rules][:2] == ["pro-users", "free-users"]
    assert settings.rules[0].match.claims == {"plan": ["pro", "team"]}


def test_documented_ledger_section_is_valid() -> None:
    from vapi_proxy.settings import LedgerSettings  # the real `ledger:` section

    block = re.findall(r"```yaml\n(ledger:.*?)```", DOC.read_text(), re.S)
    ledger = LedgerSettings.model_validate(yaml.safe_load(block[0])["ledger"])
    assert ledger.url.startswith("sqlite:///")
    doc = DOC.read_text()
    for name in LedgerSettings.model_fields:
        assert f"`ledger.{name}`" in doc, f"ledger.{name} is not in docs/limits.md"


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_field_is_described_and_in_the_docs(model: type[BaseModel]) -> None:
    doc = DOC.read_text()
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no description"
        # `name`, `parent.name` or `name.child` in the reference tables
        assert re.search(rf"`(?:[a-z_]+\.)?{name}[.`]", doc), (
            f"{model.__name__}.{name} is not in docs/limits.md"
        )


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"rules": [{"name": "a"}]}, "sets no rate, quota, concurrency or budget"),
        ({"rules": [{"name": "a", "quota": {"per_dya": 1}}]}, "per_dya"),
        (
            {"rules": [{"name": "a", "concurrency": 1}, {"name": "a", "concurrency": 2}]},
            "two limit rules are named 'a'",
        ),
        ({"time_zone": "Mars/Olympus"}, "unknown IANA time zone"),
        ({"backend": "mysql://x"}, "limits backend"),
        ({"rules": [{"name": "a b", "concurrency": 1}]}, "pattern"),
        ({"rules": [{"name": "a", "concurrency": 1, "kinds": ["sms"]}]}, "kinds"),
        ({"rules": [{"name": "a", "rate": {"per_minute": 0}}]}, "per_minute"),
        ({"failure_mode": "maybe"}, "failure_mode"),
    ],
)
def test_mistakes_are_errors(data: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(error)):
        LimitsSettings.model_validate(data)
