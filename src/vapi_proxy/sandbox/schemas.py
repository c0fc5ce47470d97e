"""Vapi's request validation (NestJS class-validator, whitelist mode) from the extracted spec.

`data/vapi-schemas.json` (made by `scripts/extract-vapi-schemas`) is compiled once into plain
objects with precomputed key sets; validating a request is a walk over the body, not a generic
JSON-schema run, because the simulator is the upstream in benchmarks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

_TYPE_MESSAGES = {
    "string": "must be a string",
    "number": "must be a number conforming to the specified constraints",
    "integer": "must be an integer number",
    "boolean": "must be a boolean value",
    "object": "must be an object",
    "array": "must be an array",
}


@dataclass(slots=True)
class _Rule:
    type: str | None = None
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    min_len: int | None = None
    max_len: int | None = None
    enum: frozenset[Any] | None = None
    enum_text: str = ""
    ref: ObjectSchema | None = None
    union: UnionSchema | None = None
    alt_types: tuple[str, ...] = ()
    items: _Rule | None = None


@dataclass(slots=True, eq=False)
class ObjectSchema:
    """One DTO: its allowed keys and a rule per key."""

    name: str
    rules: dict[str, _Rule] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    open: bool = False


@dataclass(slots=True, eq=False)
class UnionSchema:
    """A `oneOf` of DTOs (providers, tools...): picked by discriminator, else key union."""

    variants: tuple[ObjectSchema, ...]
    keys: frozenset[str]
    # discriminator field -> value -> variant; fields are `provider` and `type` in Vapi's spec.
    by_tag: dict[str, dict[Any, ObjectSchema]]


def _is_type(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    return True


class Validator:
    """Compiled DTOs; `check(name, body)` returns class-validator style messages."""

    def __init__(self, raw: dict[str, Any]) -> None:
        specs: dict[str, Any] = raw["schemas"]
        self.schemas: dict[str, ObjectSchema] = {name: ObjectSchema(name) for name in specs}
        self._unions: dict[tuple[str, ...], UnionSchema] = {}
        for name, spec in specs.items():
            schema = self.schemas[name]
            schema.required = tuple(spec.get("required", ()))
            schema.open = bool(spec.get("open", False))
            schema.rules = {k: self._compile(v) for k, v in spec["properties"].items()}

    def _compile(self, spec: dict[str, Any]) -> _Rule:
        rule = _Rule(
            type=spec.get("type"),
            nullable=bool(spec.get("nullable", False)),
            minimum=spec.get("min"),
            maximum=spec.get("max"),
            min_len=spec.get("minLen"),
            max_len=spec.get("maxLen"),
            alt_types=tuple(spec.get("alt", ())),
        )
        if "enum" in spec:
            rule.enum = frozenset(v for v in spec["enum"] if v is not None)
            rule.enum_text = ", ".join(str(v) for v in spec["enum"])
        if "ref" in spec and spec["ref"] in self.schemas:
            rule.ref = self.schemas[spec["ref"]]
        if "oneOf" in spec:
            rule.union = self._union(tuple(spec["oneOf"]))
        if "items" in spec:
            rule.items = self._compile(spec["items"])
        return rule

    def _union(self, names: tuple[str, ...]) -> UnionSchema:
        found = self._unions.get(names)
        if found is None:
            variants = tuple(self.schemas[n] for n in names if n in self.schemas)
            found = UnionSchema(variants, frozenset(), {})
            self._unions[names] = found
        return found

    def finish_unions(self, specs: dict[str, Any]) -> None:
        """Fill union key sets and discriminator maps (needs every schema compiled first)."""
        for union in self._unions.values():
            keys: set[str] = set()
            for variant in union.variants:
                keys.update(specs[variant.name]["properties"])
                for tag in ("provider", "type"):
                    values = specs[variant.name]["properties"].get(tag, {}).get("enum", ())
                    for value in values:
                        union.by_tag.setdefault(tag, {}).setdefault(value, variant)
            union.keys = frozenset(keys)

    def check(self, name: str, body: Any) -> list[str]:
        """All messages for `body` against DTO `name` (empty when valid)."""
        errors: list[str] = []
        if not isinstance(body, dict):
            return ["request body must be a JSON object"]
        self._object(self.schemas[name], body, "", errors)
        return errors

    def _object(
        self, schema: ObjectSchema, body: dict[str, Any], prefix: str, errors: list[str]
    ) -> None:
        if schema.open:
            return
        rules = schema.rules
        for key, value in body.items():
            rule = rules.get(key)
            if rule is None:
                errors.append(f"{prefix}property {key} should not exist")
            else:
                self._value(rule, value, prefix, key, errors)
        for key in schema.required:
            if key not in body:
                errors.append(f"{prefix}{key} should not be empty")

    def _value(self, rule: _Rule, value: Any, prefix: str, key: str, errors: list[str]) -> None:
        if value is None:
            # class-validator's @IsOptional lets null through, as the Web SDK relies on.
            return
        kind = rule.type
        if rule.ref is not None or rule.union is not None:
            kind = kind or "object"
        if rule.alt_types and any(_is_type(value, t) for t in rule.alt_types):
            self._scalar(rule, value, prefix, key, errors)
            return
        if kind is not None and not _is_type(value, kind):
            if kind == "object" and (rule.ref is not None or rule.union is not None):
                errors.append(f"{prefix}nested property {key} must be either object or array")
            else:
                errors.append(f"{prefix}{key} {_TYPE_MESSAGES.get(kind, 'is invalid')}")
            return
        if isinstance(value, dict):
            if rule.ref is not None:
                self._object(rule.ref, value, f"{prefix}{key}.", errors)
            elif rule.union is not None:
                self._union_value(rule.union, value, f"{prefix}{key}.", errors)
            return
        if isinstance(value, list):
            item = rule.items
            if item is not None:
                for i, element in enumerate(value):
                    self._value(item, element, f"{prefix}{key}.", str(i), errors)
            return
        self._scalar(rule, value, prefix, key, errors)

    def _union_value(
        self, union: UnionSchema, value: dict[str, Any], prefix: str, errors: list[str]
    ) -> None:
        for tag, variants in union.by_tag.items():
            chosen = variants.get(value.get(tag))
            if chosen is not None:
                self._object(chosen, value, prefix, errors)
                return
        if not union.keys:
            return
        errors.extend(
            f"{prefix}property {k} should not exist" for k in value if k not in union.keys
        )

    def _scalar(self, rule: _Rule, value: Any, prefix: str, key: str, errors: list[str]) -> None:
        if rule.enum is not None and value not in rule.enum:
            errors.append(f"{prefix}{key} must be one of the following values: {rule.enum_text}")
        if isinstance(value, str):
            if rule.max_len is not None and len(value) > rule.max_len:
                errors.append(
                    f"{prefix}{key} must be shorter than or equal to {rule.max_len} characters"
                )
            if rule.min_len is not None and len(value) < rule.min_len:
                errors.append(
                    f"{prefix}{key} must be longer than or equal to {rule.min_len} characters"
                )
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if rule.minimum is not None and value < rule.minimum:
                errors.append(f"{prefix}{key} must not be less than {_num(rule.minimum)}")
            if rule.maximum is not None and value > rule.maximum:
                errors.append(f"{prefix}{key} must not be greater than {_num(rule.maximum)}")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def load_validator() -> Validator:
    """Compile the packaged schemas, unions included."""
    text = resources.files("vapi_proxy.sandbox").joinpath("data/vapi-schemas.json")
    raw = json.loads(text.read_text(encoding="utf-8"))
    validator = Validator(raw)
    validator.finish_unions(raw["schemas"])
    return validator
