"""Templates: the few names render, whitespace is tolerated, everything else is refused."""

from __future__ import annotations

from typing import Any

import pytest

from vapi_proxy.auth.identity import Identity
from vapi_proxy.policy.templates import (
    TemplateContext,
    TemplateError,
    render,
    render_value,
    validate_template,
    validate_value,
)

IDENTITY = Identity(
    subject="user-1",
    method="jwt",
    tenant="acme",
    claims={
        "email": "a@example.com",
        "org": {"id": 7, "name": "Acme"},
        "groups": ["a", "b"],
        "beta": True,
        "nothing": None,
    },
)
CONTEXT = TemplateContext(identity=IDENTITY, request_id="req-9", profile_name="sales-coach")

RENDERS = [
    ("{{identity.sub}}", "user-1"),
    ("{{ identity.subject }}", "user-1"),
    ("{{\tidentity.tenant\n}}", "acme"),
    ("{{identity.method}}", "jwt"),
    ("{{request.id}}", "req-9"),
    ("{{profile.name}}", "sales-coach"),
    ("Hi {{identity.claims.email}}!", "Hi a@example.com!"),
    ("{{identity.claims.org.id}}/{{identity.claims.org.name}}", "7/Acme"),
    ("{{identity.claims.groups}}", '["a","b"]'),
    ("{{identity.claims.org}}", '{"id":7,"name":"Acme"}'),
    ("{{identity.claims.beta}}", "true"),
    ("[{{identity.claims.missing}}]", "[]"),
    ("[{{identity.claims.nothing}}]", "[]"),
    ("no placeholders", "no placeholders"),
    ("", ""),
    ("{ single } braces", "{ single } braces"),
    ("{% if x %} is just text", "{% if x %} is just text"),
]


@pytest.mark.parametrize(("template", "expected"), RENDERS)
def test_render(template: str, expected: str) -> None:
    validate_template(template)
    assert render(template, CONTEXT) == expected


def test_missing_values_render_empty() -> None:
    context = TemplateContext(identity=Identity(subject="1.2.3.4", method="anonymous"))
    assert render("{{identity.tenant}}|{{request.id}}|{{profile.name}}", context) == "||"


REFUSED = [
    "{{identity}}",
    "{{identity.claims}}",
    "{{identity.claims.}}",
    "{{identity.claims.a b}}",
    "{{identity.hashed}}",
    "{{identity.__class__}}",
    "{{identity.sub.__class__}}",
    "{{request.headers}}",
    "{{env.VAPI_KEY}}",
    "{{ identity.sub | upper }}",
    "{{identity.sub()}}",
    "{{7*7}}",
    "{{}}",
    "{{identity.sub}",
    "{identity.sub}}",
    "{{ {{identity.sub}} }}",
    "a }} b",
]


@pytest.mark.parametrize("template", REFUSED)
def test_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        validate_template(template)
    with pytest.raises(TemplateError):
        render(template, CONTEXT)


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(TemplateError, match=r"unknown template name \{\{identity\.email\}\}"):
        validate_template("{{identity.email}}")


def test_render_value_walks_dicts_and_lists() -> None:
    value: dict[str, Any] = {
        "user": "{{identity.sub}}",
        "nested": {"list": ["{{identity.tenant}}", 3, None, True], "n": 1.5},
    }
    validate_value(value)
    assert render_value(value, CONTEXT) == {
        "user": "user-1",
        "nested": {"list": ["acme", 3, None, True], "n": 1.5},
    }
    with pytest.raises(TemplateError):
        validate_value({"a": ["ok", {"b": "{{nope}}"}]})


def test_claim_values_are_data_not_templates() -> None:
    context = TemplateContext(
        identity=Identity(subject="{{request.id}}", method="jwt", claims={"x": "{{profile.name}}"})
    )
    assert render("{{identity.sub}} {{identity.claims.x}}", context) == (
        "{{request.id}} {{profile.name}}"
    )
